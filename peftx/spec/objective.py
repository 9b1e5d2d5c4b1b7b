"""What a task asks the model to output and how it is scored: the `Objective`.

A task chooses its objective (a recipe may choose among those the task allows); everything downstream
asks it: the head's width, the loss, how a `label` column becomes a label tensor, the metrics, the
primary metric and whether higher or lower is better, and what a prediction looks like.

- `classification`: one label of `labels`; cross-entropy; accuracy.
- `multilabel`: any subset of `labels` (the column holds label indices); a sigmoid per label; micro and
  macro F1 at 0.5 and mean average precision.
- `regression`: one value per name in `labels` (the targets); squared error divided by the training
  targets' variance; RMSE, MAE, R².
- `forecasting`: the next `horizon` steps of `channels` series (labels: their names); the model sees the
  context normalised per instance and its outputs are put back in the series' units (RevIN); the loss
  is the squared error scaled by the series' in-sample seasonal-naive error before the forecast origin
  (the MASE denominator, stored as the label's last value), so series of very different scales weigh
  alike; MSE, MAE, sMAPE, MASE.

Model outputs are always in the targets' own units (regression's target standardisation and
forecasting's instance normalisation happen inside the model, `peftx.model.task_model`), so metrics,
predictions and exports need no statistics beside the weights.

Reading a recipe, a task's description or a run record asks an objective its kind, labels, primary
metric and direction, and nothing more: torch and numpy are imported by the methods that compute
(losses, metrics, label tensors), so that those paths import neither.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, ClassVar

if TYPE_CHECKING:
    import numpy as np
    import torch

OBJECTIVES = ("classification", "multilabel", "regression", "forecasting")


class LabelError(ValueError):
    """A label that does not fit the objective; the message says which example and why."""


@dataclass(frozen=True)
class Objective:
    """Base of the four objectives (`OBJECTIVES`).

    Attributes:
        labels: class names (classification, multilabel) or target / channel names (regression,
            forecasting).
    """

    kind: ClassVar[str]
    primary: ClassVar[str]  # the metric that selects checkpoints, learning rates and arms
    higher_is_better: ClassVar[bool]
    labels: tuple[str, ...]

    @property
    def width(self) -> int:
        """Outputs of the head per example."""
        return len(self.labels)

    @property
    def direction(self) -> str:
        return "higher" if self.higher_is_better else "lower"

    def label_tensor(self, column: Sequence) -> torch.Tensor:
        """A split's `label` column as the tensor `loss` and `metrics` take (row i: example i).

        Raises:
            LabelError: a label of the wrong kind or size (naming the example).
        """
        raise NotImplementedError

    def loss(self, outputs: torch.Tensor, labels: torch.Tensor, reduction: str = "mean") -> torch.Tensor:
        """The training loss: the mean over examples, or their sum (`reduction="sum"`)."""
        raise NotImplementedError

    def metrics(self, outputs: torch.Tensor, labels: torch.Tensor) -> dict[str, float]:
        """Every metric of the objective on a labelled split, the primary one first, and the mean loss
        under `loss`."""
        raise NotImplementedError

    def decode(self, outputs: torch.Tensor) -> list:
        """What `peftx predict` answers for each row of outputs."""
        raise NotImplementedError

    def score(self, metrics: dict[str, float]) -> float:
        """The primary metric turned so that higher is always better (what the loop maximises)."""
        value = metrics[self.primary]
        return value if self.higher_is_better else -value

    def to_dict(self) -> dict:
        """task.json's `objective`: enough to rebuild it (`objective_from_dict`)."""
        return {"kind": self.kind, "labels": list(self.labels), "primary": self.primary, "direction": self.direction}


@dataclass(frozen=True)
class Classification(Objective):
    kind: ClassVar[str] = "classification"
    primary: ClassVar[str] = "accuracy"
    higher_is_better: ClassVar[bool] = True

    def label_tensor(self, column: Sequence) -> torch.Tensor:
        import torch

        return torch.tensor(column, dtype=torch.long)

    def loss(self, outputs, labels, reduction="mean"):
        from torch.nn import functional

        return functional.cross_entropy(outputs, labels, reduction=reduction)

    def metrics(self, outputs, labels):
        return {
            "accuracy": (outputs.argmax(-1) == labels).float().mean().item(),
            "loss": self.loss(outputs, labels).item(),
        }

    def decode(self, outputs):
        return [self.labels[i] for i in outputs.argmax(-1).tolist()]


@dataclass(frozen=True)
class MultiLabel(Objective):
    kind: ClassVar[str] = "multilabel"
    primary: ClassVar[str] = "map"
    higher_is_better: ClassVar[bool] = True

    def label_tensor(self, column):
        import numpy as np
        import torch

        out = torch.zeros(len(column), self.width)
        for row, ids in enumerate(column):
            if not isinstance(ids, Sequence | np.ndarray) or isinstance(ids, str):
                raise LabelError(f"example {row}: a multi-label label is a list of label indices, got {ids!r}")
            for i in ids:
                if not 0 <= int(i) < self.width:
                    raise LabelError(f"example {row}: label {i} outside 0..{self.width - 1}")
                out[row, int(i)] = 1.0
        return out

    def loss(self, outputs, labels, reduction="mean"):
        from torch.nn import functional

        per_example = functional.binary_cross_entropy_with_logits(outputs, labels, reduction="none").mean(-1)
        return per_example.sum() if reduction == "sum" else per_example.mean()

    def metrics(self, outputs, labels):
        predicted = outputs > 0  # probability above 0.5
        truth = labels > 0.5
        tp = (predicted & truth).sum(0).double()
        fp = (predicted & ~truth).sum(0).double()
        fn = (~predicted & truth).sum(0).double()
        micro = (2 * tp.sum() / (2 * tp.sum() + fp.sum() + fn.sum()).clamp(min=1)).item()
        macro = (2 * tp / (2 * tp + fp + fn).clamp(min=1)).mean().item()
        return {
            "map": mean_average_precision(outputs, truth),
            "micro_f1": micro,
            "macro_f1": macro,
            "loss": self.loss(outputs, labels).item(),
        }

    def decode(self, outputs):
        return [[self.labels[i] for i in row.nonzero().flatten().tolist()] for row in outputs > 0]


def mean_average_precision(scores: torch.Tensor, truth: torch.Tensor) -> float:
    """Mean over labels with at least one positive of the average precision of ranking examples by
    score (scikit-learn's `average_precision_score`, macro; written here to keep scikit-learn optional).
    """
    import torch

    aps = []
    for label in range(scores.shape[1]):
        positives = truth[:, label]
        if not bool(positives.any()):
            continue
        order = torch.argsort(scores[:, label], descending=True, stable=True)
        hits = positives[order].double()
        precision_at_hit = hits.cumsum(0) / torch.arange(1, len(hits) + 1, dtype=torch.double)
        aps.append(float((precision_at_hit * hits).sum() / hits.sum()))
    return sum(aps) / len(aps) if aps else 0.0


@dataclass(frozen=True)
class Regression(Objective):
    """Attributes:
    scale: each target's training standard deviation (1.0 until the task's data sets it): the loss
        is the squared error in these units, so targets of different scales weigh alike.
    loc: each target's training mean (the model's output starts there).
    """

    kind: ClassVar[str] = "regression"
    primary: ClassVar[str] = "rmse"
    higher_is_better: ClassVar[bool] = False
    loc: tuple[float, ...] = ()
    scale: tuple[float, ...] = ()

    def label_tensor(self, column):
        import torch

        rows = [[v] if isinstance(v, int | float) else list(v) for v in column]
        for row, values in enumerate(rows):
            if len(values) != self.width:
                raise LabelError(f"example {row}: {len(values)} target value(s), expected {self.width}")
            if not all(isinstance(v, int | float) and math.isfinite(v) for v in values):
                raise LabelError(f"example {row}: targets must be finite numbers, got {values!r}")
        return torch.tensor(rows, dtype=torch.float32).reshape(len(rows), self.width)

    def fitted(self, train_labels: torch.Tensor) -> Regression:
        """This objective with `loc` and `scale` from the training targets (a constant target: scale 1)."""
        import torch

        loc = train_labels.double().mean(0)
        std = train_labels.double().std(0, unbiased=False) if len(train_labels) > 1 else torch.ones_like(loc)
        std = torch.where(std > 0, std, torch.ones_like(std))
        return Regression(self.labels, tuple(loc.tolist()), tuple(std.tolist()))

    def _scale(self, like: torch.Tensor) -> torch.Tensor:
        return like.new_tensor(self.scale or [1.0] * self.width)

    def loss(self, outputs, labels, reduction="mean"):
        per_example = (((outputs - labels) / self._scale(outputs)) ** 2).mean(-1)
        return per_example.sum() if reduction == "sum" else per_example.mean()

    def metrics(self, outputs, labels):
        err = (outputs - labels).double()
        total = ((labels - labels.mean(0)) ** 2).double().sum(0).clamp(min=1e-12)
        return {
            "rmse": err.pow(2).mean().sqrt().item(),
            "mae": err.abs().mean().item(),
            "r2": (1 - err.pow(2).sum(0) / total).mean().item(),
            "loss": self.loss(outputs, labels).item(),
        }

    def decode(self, outputs):
        return [row if len(row) > 1 else row[0] for row in outputs.tolist()]

    def to_dict(self):
        return super().to_dict() | {"loc": list(self.loc), "scale": list(self.scale)}


@dataclass(frozen=True)
class Forecasting(Objective):
    """Attributes:
    labels: the channels' names.
    horizon: steps forecast.
    season: the seasonal-naive forecast's period (1: the last value), for MASE.
    """

    kind: ClassVar[str] = "forecasting"
    primary: ClassVar[str] = "mase"
    higher_is_better: ClassVar[bool] = False
    horizon: int = 1
    season: int = 1
    loss_kind: str = "mse"

    @property
    def width(self) -> int:
        return self.horizon * len(self.labels)

    def label_tensor(self, column):
        import torch

        want = self.width + 1
        for row, values in enumerate(column):
            if len(values) != want:
                raise LabelError(f"example {row}: {len(values)} label values, expected {self.width} + 1 scale")
        labels = torch.tensor([list(v) for v in column], dtype=torch.float32).reshape(len(column), want)
        if not bool(torch.isfinite(labels).all()) or bool((labels[:, -1] <= 0).any()):
            raise LabelError("forecast labels must be finite, with a positive scale")
        return labels

    def loss(self, outputs, labels, reduction="mean"):
        err = (outputs - labels[:, :-1]) / labels[:, -1:]
        per_example = (err.abs() if self.loss_kind == "mae" else err**2).mean(-1)
        return per_example.sum() if reduction == "sum" else per_example.mean()

    def metrics(self, outputs, labels):
        target, den = labels[:, :-1].double(), labels[:, -1:].double()
        err = outputs.double() - target
        smape = 2 * err.abs() / (outputs.double().abs() + target.abs()).clamp(min=1e-12)
        return {
            "mase": (err.abs() / den).mean().item(),
            "smape": smape.mean().item(),
            "mse": err.pow(2).mean().item(),
            "mae": err.abs().mean().item(),
            "loss": self.loss(outputs, labels).item(),
        }

    def decode(self, outputs):
        return outputs.reshape(len(outputs), self.horizon, len(self.labels)).tolist()

    def to_dict(self):
        return super().to_dict() | {"horizon": self.horizon, "season": self.season, "loss": self.loss_kind}


PERCENT_METRICS = frozenset({"accuracy", "map", "micro_f1", "macro_f1"})


def format_metric(name: str, value: float | None, digits: int = 2) -> str:
    """A metric value as people read it: fractions of correct answers as percentages, errors with four
    significant digits; '-' for a value not measured."""
    if value is None:
        return "-"
    return f"{100 * value:.{digits}f}%" if name in PERCENT_METRICS else f"{value:.4g}"


# primary metrics where lower is better: what a record that names only the metric says of its direction
LOWER_IS_BETTER = frozenset(o.primary for o in (Regression, Forecasting))

KINDS: dict[str, type[Objective]] = {o.kind: o for o in (Classification, MultiLabel, Regression, Forecasting)}


def objective_from_dict(data: dict) -> Objective:
    """Rebuild an objective from task.json's `objective` (`Objective.to_dict`)."""
    kind, labels = data.get("kind", "classification"), tuple(data["labels"])
    if kind == "regression":
        return Regression(labels, tuple(data.get("loc", ())), tuple(data.get("scale", ())))
    if kind == "forecasting":
        return Forecasting(labels, int(data["horizon"]), int(data.get("season", 1)), data.get("loss", "mse"))
    return KINDS[kind](labels)


def seasonal_naive_scale(history: np.ndarray, season: int) -> float:
    """MASE's denominator for one series: the mean absolute error of the seasonal-naive forecast
    inside `history` (time, channels), falling back to the last-value forecast for short histories;
    never zero (a flat history scales by 1)."""
    m = season if len(history) > season else 1
    if len(history) <= m:
        return 1.0
    scale = float(abs(history[m:] - history[:-m]).mean())
    return scale if scale > 0 and math.isfinite(scale) else 1.0
