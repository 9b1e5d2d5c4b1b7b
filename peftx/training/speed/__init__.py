"""Speed options of the training loop (the `train.*` speed fields of a recipe), set up by `prepare_model`.

Each option computes the same model as the plain path: exactly up to float rounding, or, for dropout,
with the same distribution from a different stream of random numbers. `tests/training/test_speed.py`
holds each one to the plain path's loss.

- `fused_lora`: each LoRA layer as one matrix product with the merged weight (`peftx.methods.lora_fused`).
- `recompute_activations`: a fused LoRA layer after an activation keeps the activation's input, not its
  output (`peftx.methods.recomputed_activation`).
- `fast_dropout`: dropout masks from cheap random bits, attention dropout on the same math (`dropout`).
- `skip_unpooled_rows`: the last layer computes only the pooled row (`peftx.model.pooled_rows`).
- `threads: auto`: one thread or one per core, whichever is faster right now (`threads.ThreadTuner`).
- `keep_freed_memory`: where glibc's allocator puts large tensors: their own mappings, returned when
  freed (lean, the default), or its heap, kept (`allocator`).
- `pad_to_multiple` (`peftx.training.batching.pad_multiple`), `compile`: see `peftx.recipe.TrainSection`.
"""

from __future__ import annotations

from collections.abc import Callable
from contextlib import AbstractContextManager, nullcontext
from typing import TYPE_CHECKING

import torch
from torch import nn

from peftx.methods.lora_fused import fuse_lora_layers, lora_linear
from peftx.methods.recomputed_activation import recompute_activations
from peftx.model.task_model import PeftxModel
from peftx.training.speed.allocator import keep_freed_memory, return_freed_memory, trim_heap
from peftx.training.speed.dropout import FastDropout, attention_with_dropout, fast_dropout
from peftx.training.speed.threads import ThreadTuner

if TYPE_CHECKING:
    from peftx.recipe import TrainSection

__all__ = [
    "FastDropout",
    "ThreadTuner",
    "attention_with_dropout",
    "fast_dropout",
    "fuse_lora_layers",
    "keep_freed_memory",
    "lora_linear",
    "prepare_model",
    "recompute_activations",
    "return_freed_memory",
    "trim_heap",
]


def prepare_model(model: nn.Module, cfg: TrainSection, device: torch.device) -> Callable[[], AbstractContextManager]:
    """Apply the speed options that change how `model` computes (in place), and set threads.

    Args:
        model: the model about to train.
        cfg: the recipe's `train` section.
        device: where it trains (CPU defaults differ from GPU ones).

    Returns:
        A context factory to wrap each training forward in (fast dropout, or nothing).
    """
    if isinstance(cfg.threads, int):
        torch.set_num_threads(cfg.threads)
    if cfg.keep_freed_memory:
        keep_freed_memory()
    elif cfg.keep_freed_memory is False or device.type == "cpu":
        return_freed_memory()
    # Checkpointing would replay the layer outside the forward that reads one row, computing every row;
    # a compiled graph would trace the switch between the two forwards.
    plain = not (cfg.gradient_checkpointing or cfg.compile)
    if cfg.skip_unpooled_rows and plain and isinstance(model, PeftxModel):
        model.compute_pooled_rows_only()
    fused = fuse_lora_layers(model) if cfg.fused_lora else 0
    # Only fused LoRA layers make use of it; checkpointing recomputes every activation already, and a
    # compiled graph chooses its own recomputation.
    if fused and cfg.recompute_activations and not cfg.gradient_checkpointing and not cfg.compile:
        recompute_activations(model)
    if cfg.compile:
        model.compile(dynamic=True)  # inductor fuses dropout and elementwise work itself
        return nullcontext
    fast = cfg.fast_dropout if cfg.fast_dropout is not None else device.type == "cpu"
    # Checkpointing recomputes the forward during backward, outside this context: torch's dropout
    # replays its masks from the saved random state there, the fast one would draw different masks.
    return FastDropout if fast and not cfg.gradient_checkpointing else nullcontext
