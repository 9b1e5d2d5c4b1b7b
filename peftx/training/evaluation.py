"""Evaluation, shared among a launch's processes: every example's logits computed once and gathered
on every process, in length-sorted, token-budgeted batches."""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
from accelerate import Accelerator
from accelerate.utils import DistributedType, send_to_device

from peftx.training.batching import Split, draw_like_a_data_loader, eval_batches, eval_shard

if TYPE_CHECKING:
    from peftx.recipe import TrainSection


def infer_rows(
    model, split: Split, batch_size: int, accelerator: Accelerator, max_tokens: int | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Evaluation forwards, shared among the processes and gathered from all of them.

    Batches are cut from the length-sorted split (at most `batch_size` examples and `max_tokens` padded
    tokens each), dealt round robin to the processes; a process short of one runs a stand-in batch (one
    short example) whose output it drops, so that all run the same number of forwards.

    Returns:
        (index (m,), outputs (m, width)) on the CPU, on every process: row i holds example index[i]'s
        logits, one row per example computed (m = len(split)).
    """
    batches = eval_batches(split.lengths, batch_size, max_tokens)
    if not batches:
        return torch.empty(0, dtype=torch.long), torch.empty(0, 0)
    stand_in = batches[-1][-1:]  # the shortest example
    draw_like_a_data_loader()
    mine = eval_shard(batches, accelerator.num_processes, accelerator.process_index)
    # sharded models gather their weights into buffers that training reuses in place, which tensors
    # made under inference_mode forbid
    sharded = accelerator.distributed_type in (DistributedType.FSDP, DistributedType.DEEPSPEED)
    was_training = model.training
    model.eval()
    index, rows = [], []
    try:
        with torch.no_grad() if sharded else torch.inference_mode(), accelerator.autocast():
            for idx in mine:
                batch = send_to_device(split.collate(idx or stand_in), accelerator.device)
                batch.pop("labels", None)
                rows.append(model(**batch).float()[: len(idx)])  # (len(idx), classes)
                index.extend(idx)
            logits = torch.cat(rows)  # (examples of this process, classes)
            ids = torch.tensor(index, dtype=torch.long, device=logits.device)
            if accelerator.num_processes > 1:  # processes hold different numbers of rows: pad, gather, drop
                logits = accelerator.gather(accelerator.pad_across_processes(logits))
                ids = accelerator.gather(accelerator.pad_across_processes(ids, pad_index=-1))
                logits, ids = logits[ids >= 0], ids[ids >= 0]
    finally:
        model.train(was_training)
    return ids.cpu(), logits.cpu()


def infer(
    model, split: Split, batch_size: int, accelerator: Accelerator, max_tokens: int | None = None
) -> torch.Tensor:
    """Logits (n, classes) for every example of a split, in the split's order, on every process
    (inference mode; batches as `infer_rows` cuts them). The model's train/eval mode is restored.

    Raises:
        RuntimeError: the processes did not compute every example exactly once (a bug).
    """
    ids, rows = infer_rows(model, split, batch_size, accelerator, max_tokens)
    if len(split) == 0:
        return rows
    counts = torch.bincount(ids, minlength=len(split))
    if len(counts) != len(split) or not bool((counts == 1).all()):
        raise RuntimeError(f"evaluation computed {len(ids)} rows for {len(split)} examples, not each once")
    logits = torch.empty(len(split), rows.shape[-1])
    logits[ids] = rows
    return logits


def evaluate(model, split: Split, cfg: TrainSection, accelerator: Accelerator) -> dict[str, float]:
    """The split's objective's metrics (`Objective.metrics`: its primary metric, the others, the mean
    loss) on a labelled split."""
    outputs = infer(model, split, cfg.eval_batch_size, accelerator, cfg.eval_batch_tokens)
    return split.objective.metrics(outputs, split.labels)
