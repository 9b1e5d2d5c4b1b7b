"""How the processes of a launch share each global batch.

With N processes of `batch_size` B each, an optimizer step takes a global batch of N x B x grad_accum
examples: the same examples, in the same order, as one process at N x B (`LengthGroupedBatches`), with
the gradient of the same mean loss. `micro_batches` is one process's part of that stream, `loss_term`
its term of the mean.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING

import torch
from accelerate import Accelerator
from accelerate.utils import send_to_device

from peftx.spec.objective import Classification, Objective
from peftx.training.batching import LengthGroupedBatches, Split, draw_like_a_data_loader, shard

if TYPE_CHECKING:
    from peftx.recipe import TrainSection


def micro_batches(
    split: Split, cfg: TrainSection, seed: int, accelerator: Accelerator, start: int = 0
) -> Iterator[tuple[dict, int, int]]:
    """Endless training micro-batches of this process: (batch on the device, its examples, the examples of
    the global batch it is part of). A process whose part of an epoch's last global batch is empty gets
    one example of that batch to run at weight 0 (every process must take part in each backward).

    `start` micro-batches are passed over without collating (a resumed run: each epoch's order depends
    on the seed and the epoch alone, and the random states that followed are restored from the
    checkpoint)."""
    n, rank = accelerator.num_processes, accelerator.process_index
    sampler = LengthGroupedBatches(split.lengths, cfg.batch_size, seed, cfg.group_by_length, num_processes=n)
    sampler.epoch, offset = divmod(start, max(len(sampler), 1))
    while True:
        if not offset:  # an epoch begins (mid-epoch, its draw was made before the checkpoint)
            draw_like_a_data_loader()
        for batch in sampler.global_batches()[offset:]:
            idx = shard(batch, n, rank)
            yield send_to_device(split.collate(idx or batch[:1]), accelerator.device), len(idx), len(batch)
        offset = 0


def loss_term(
    outputs: torch.Tensor,
    labels: torch.Tensor,
    n: int,
    n_global: int,
    num_processes: int,
    objective: Objective | None = None,
) -> torch.Tensor:
    """This process's term of the global batch's mean loss (`objective.loss`; None: cross-entropy).
    Processes average their gradients (DDP, FSDP), so each contributes the sum over its first `n` rows
    x processes / global examples: the gradient of the mean over the whole global batch, however
    unevenly it was split."""
    objective = objective or Classification(())
    if num_processes == 1:
        return objective.loss(outputs, labels)
    return objective.loss(outputs[:n], labels[:n], reduction="sum") * (num_processes / n_global)
