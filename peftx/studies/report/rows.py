"""What a report is made of: one row per configuration, and the statistics over its seeds."""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from peftx.spec.objective import PERCENT_METRICS


def mean(xs: list[float]) -> float:
    return sum(xs) / len(xs)


def sem(xs: list[float]) -> float:
    """Standard error of the mean: sample standard deviation / sqrt(n); NaN for fewer than 2 values."""
    n = len(xs)
    if n < 2:
        return float("nan")
    m = mean(xs)
    return math.sqrt(sum((x - m) ** 2 for x in xs) / (n - 1) / n)


@dataclass
class Row:
    """One configuration at its chosen learning rate (each seed counted once)."""

    config: dict[str, object]  # the keys that vary across the report -> value
    task: str  # the task identity's label
    lr: float
    seeds: list[int]
    test: list[float]
    val: list[float]
    trainable: int
    total: int
    baselines: dict[str, float]
    lrs_tried: dict[float, float] = field(default_factory=dict)  # lr -> mean validation value of `metric`
    curves: list[list[tuple[int, float]]] = field(default_factory=list)  # per seed: (step, validation `metric`)
    train_curves: list[list[tuple[int, float]]] = field(default_factory=list)  # per seed: (step, train loss)
    selected: list[tuple[int, float]] = field(
        default_factory=list
    )  # per seed: (selected step, its validation `metric`)
    duplicates: list[tuple[int, list[str]]] = field(default_factory=list)  # (seed, names of its runs) if > 1
    stopped: list[tuple[str | None, int | None, int | None]] = field(default_factory=list)  # per seed: how, step, cap
    pretrained: bool | None = None
    key: str = ""  # short id in plots and tables: c1, c2, ...
    metric: str = "accuracy"  # the task's primary metric: what `test`, `val` and the curves hold
    higher_is_better: bool = True

    @property
    def scale(self) -> float:
        """Factor to the shown unit: 100 for fractions shown as percentages, else 1."""
        return 100.0 if self.metric in PERCENT_METRICS else 1.0

    @property
    def unit(self) -> str:
        """The metric as axes and headings name it: `accuracy (%)`, `rmse`."""
        return f"{self.metric} (%)" if self.metric in PERCENT_METRICS else self.metric

    @property
    def label(self) -> str:
        return ", ".join(f"{key_label(k)}={short(v)}" for k, v in self.config.items() if k != "task.name") or self.task

    @property
    def short_label(self) -> str:
        """The legend's label: the id and the configuration's values, cut short."""
        values = ", ".join(short(v, 12) for k, v in self.config.items() if k != "model.pretrained")
        twin = "" if self.pretrained is None else (" pre" if self.pretrained else " scratch")
        return short(f"{self.key} {values}".strip(), 28) + twin


def stopped_label(stopped: list[tuple[str | None, int | None, int | None]]) -> str:
    """How a configuration's runs ended: `flat 3` (train.early_stop ended each), `cap 2, flat 1`, with the
    steps taken (and the cap); `—` for runs recorded before peftx said."""
    counts = {how: sum(1 for h, _, _ in stopped if h == how) for how in ("flat", "cap")}
    if not any(counts.values()):
        return "—"
    steps = sorted(s for _, s, _ in stopped if s is not None)
    caps = {c for _, _, c in stopped if c is not None}
    span = f"{steps[0]}" if steps[0] == steps[-1] else f"{steps[0]}-{steps[-1]}"
    text = ", ".join(f"{how} {n}" for how, n in counts.items() if n)
    return f"{text} (steps {span} of {max(caps)})" if caps else text


def welch_interval(a: list[float], b: list[float], level: float = 0.95) -> tuple[float, float, float]:
    """mean(a) - mean(b) and its Welch t interval (NaN bounds for fewer than 2 values on a side)."""
    diff = mean(a) - mean(b)
    if len(a) < 2 or len(b) < 2:
        return diff, float("nan"), float("nan")
    va, vb = sem(a) ** 2, sem(b) ** 2
    se = math.sqrt(va + vb)
    if se == 0:
        return diff, diff, diff
    df = (va + vb) ** 2 / (va**2 / (len(a) - 1) + vb**2 / (len(b) - 1))
    from scipy import stats

    half = stats.t.ppf(0.5 + level / 2, df) * se
    return diff, diff - half, diff + half


def key_label(key: str) -> str:
    """`method.name` -> `method`, `method.r` -> `r`: short, and distinct for the plug-in sections."""
    section, _, field = key.rpartition(".")
    return section if field == "name" and section else field


def short(value: object, width: int = 28) -> str:
    text = str(value)
    return text if len(text) <= width else text[: width - 1] + "…"


def pct(x: float) -> str:
    return "—" if math.isnan(x) else f"{100 * x:.1f}"


def shown(row: Row, x: float) -> str:
    """A value of the row's metric in the table's unit: percentages to one decimal (`pct`), errors to
    four significant digits."""
    return pct(x) if row.scale == 100 else ("—" if math.isnan(x) else f"{x:.4g}")
