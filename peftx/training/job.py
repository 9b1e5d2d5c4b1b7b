"""What one training is given (`TrainJob`) and what it gives back (`TrainOutcome`, and `StepResult`
for a single optimizer step): the interface of the loop in `peftx.training.loop`."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import torch
from accelerate import Accelerator

from peftx.training.batching import Split
from peftx.training.checkpoints import Checkpoints
from peftx.training.points import EvalPoint, TrainPoint

if TYPE_CHECKING:
    from peftx.recipe import TrainSection


@dataclass(frozen=True)
class TrainJob:
    """One training, as every process of a launch describes it alike.

    Attributes:
        model: the built model; its trainable parameters train, and hold the selected weights at the end.
        train_split: what trains (each epoch in the order `seed` gives it).
        val_split: what the periodic evaluations score.
        config: the recipe's `train` section (`batch_size` is per process; `steps` counts optimizer
            steps, that is global batches).
        seed: the data order's seed.
        accelerator: from `peftx.training.session.make_accelerator`.
        checkpoints: where checkpoints go (`train.checkpoint_every` says when; a SIGINT or SIGTERM
            writes one at the end of the step, then raises `Interrupted`); None: no checkpoints.
        resume: a checkpoint of this very recipe to continue from (read through `checkpoints`).
    """

    model: torch.nn.Module
    train_split: Split
    val_split: Split
    config: TrainSection
    seed: int
    accelerator: Accelerator
    checkpoints: Checkpoints | None = None
    resume: Path | None = None

    def __post_init__(self) -> None:
        if self.resume is not None and self.checkpoints is None:
            raise ValueError("TrainJob: resume needs checkpoints to read the checkpoint with")


@dataclass
class TrainOutcome:
    """What a finished training reports: its points, the selected evaluation, counts and timings."""

    history: list[EvalPoint] = field(default_factory=list)  # one entry per evaluation
    train_log: list[TrainPoint] = field(default_factory=list)  # one entry per log step
    best: EvalPoint | None = None  # the evaluation whose weights were kept
    skipped_steps: int = 0  # updates skipped for a non-finite gradient norm (train.nonfinite: skip)
    resumed_from: int | None = None  # the checkpoint's step, for a resumed run
    steps: int = 0
    cap: int = 0  # the steps the run would take without train.early_stop
    stopped: str = "cap"  # flat: train.early_stop ended it; cap: it ran all its steps
    train_seconds: float = 0.0
    eval_seconds: float = 0.0
    train_examples: int = 0  # summed over processes
    train_tokens: int = 0  # summed over processes
    optimizer_state_bytes: int = 0
    world_size: int = 1  # processes
    per_process_batch: int = 0  # examples per process and micro-batch (train.batch_size)
    global_batch: int = 0  # examples per optimizer step: per_process_batch x world_size x grad_accum


@dataclass(frozen=True)
class StepResult:
    """What one optimizer step did (`Trainer.step`)."""

    step: int  # its number, from 1
    loss: torch.Tensor  # this process's loss terms summed over the micro-batches (on the device)
    grad_norm: torch.Tensor | None  # before clipping (None: no gradient was synchronised)
    skipped: bool  # the update was skipped: non-finite gradient norm under train.nonfinite: skip
    seconds: float
