"""What the training loop reports as it goes: a `TrainPoint` at every log step, an `EvalPoint` at every
evaluation. Whoever listens (the run record, the display, trackers, benchmark scripts) reads their
fields; the run record stores them as they are (result.json's `train_log` and `history`).
"""

from __future__ import annotations

from collections.abc import Callable

from pydantic import BaseModel, ConfigDict


class Record(BaseModel):
    """Base of everything written to a run's result.json.

    Unknown keys are kept (a newer peftx may add fields; an older one still reads the file). A
    non-finite number (a diverged loss) is written as null: result.json stays strict JSON.
    """

    model_config = ConfigDict(extra="allow", ser_json_inf_nan="null")


class EvalPoint(Record):
    """One evaluation on the validation split during training: its objective's metrics by name
    (`val_metrics`), the mean loss, and for classification the accuracy again as `val_accuracy`."""

    step: int
    val_accuracy: float | None = None
    val_loss: float
    lr: float
    train_seconds: float = 0.0
    val_metrics: dict[str, float] = {}

    def metric(self, name: str) -> float | None:
        """A validation metric by name (records before `val_metrics` hold accuracy alone)."""
        return self.val_accuracy if name == "accuracy" and name not in self.val_metrics else self.val_metrics.get(name)


class TrainPoint(Record):
    """Training loss and learning rate, every `train.log_every` steps (loss: mean since the last point,
    over every process)."""

    step: int
    loss: float | None  # null: not finite (a diverged step), or every step of the window skipped
    lr: float
    grad_norm: float | None = None  # mean over the window's steps, before clipping
    examples_per_s: float | None = None
    tokens_per_s: float | None = None
    rss_bytes: int | None = None  # the main process's resident memory then: where a run's memory goes, step by step
    heap_free_bytes: int | None = None  # freed memory glibc keeps in its heap (`train.keep_freed_memory`)


Point = TrainPoint | EvalPoint
OnPoint = Callable[[Point], None]  # called with each point as the loop makes it (main process only)
