"""What a report is made of: one row per configuration, and the statistics over its seeds."""

from __future__ import annotations

import math
from dataclasses import dataclass, field


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
    lrs_tried: dict[float, float] = field(default_factory=dict)  # lr -> mean validation accuracy
    curves: list[list[tuple[int, float]]] = field(default_factory=list)  # per seed: (step, val acc)
    train_curves: list[list[tuple[int, float]]] = field(default_factory=list)  # per seed: (step, train loss)
    selected: list[tuple[int, float]] = field(default_factory=list)  # per seed: (selected step, its val acc)
    duplicates: list[tuple[int, list[str]]] = field(default_factory=list)  # (seed, names of its runs) if > 1
    pretrained: bool | None = None
    key: str = ""  # short id in plots and tables: c1, c2, ...

    @property
    def label(self) -> str:
        return ", ".join(f"{key_label(k)}={short(v)}" for k, v in self.config.items() if k != "task.name") or self.task

    @property
    def short_label(self) -> str:
        """The legend's label: the id and the configuration's values, cut short."""
        values = ", ".join(short(v, 12) for k, v in self.config.items() if k != "model.pretrained")
        twin = "" if self.pretrained is None else (" pre" if self.pretrained else " scratch")
        return short(f"{self.key} {values}".strip(), 28) + twin


def key_label(key: str) -> str:
    """`method.name` -> `method`, `method.r` -> `r`: short, and distinct for the plug-in sections."""
    section, _, field = key.rpartition(".")
    return section if field == "name" and section else field


def short(value: object, width: int = 28) -> str:
    text = str(value)
    return text if len(text) <= width else text[: width - 1] + "…"
