"""Choosing a configuration's learning rate (or any tuned value) on a validation metric: the one rule
that both the sweep's tuning stage (`tune:`) and the report apply, so that they always agree."""

from __future__ import annotations

from collections.abc import Hashable, Mapping, Sequence


def choose(
    tried: Mapping[Hashable, Sequence[tuple[int, float]]], higher_is_better: bool = True
) -> tuple[Hashable, dict[Hashable, float]]:
    """The value with the best mean validation metric (the highest, or the lowest for an error), and
    each value's mean.

    Values are compared on the seeds that every one of them has a result for (a tuning stage runs each
    value on the first seed or seeds; the chosen one then gets more, which must not tilt the comparison
    towards or away from it). Where the values share no seed, each is the mean over all its seeds. A tie
    goes to the smaller value (for a learning rate, the safer one).

    Args:
        tried: value -> [(seed, validation metric), ...]; values without results are left out.
        higher_is_better: the metric's direction (accuracy: True; RMSE, MASE: False).
    """
    tried = {v: list(runs) for v, runs in tried.items() if runs}
    if not tried:
        raise ValueError("no value has a result to choose on")
    common = set.intersection(*({seed for seed, _ in runs} for runs in tried.values()))
    means = {}
    for value, runs in tried.items():
        kept = [acc for seed, acc in runs if seed in common] or [acc for _, acc in runs]
        means[value] = sum(kept) / len(kept)
    sign = 1.0 if higher_is_better else -1.0
    best = max(means, key=lambda v: (sign * means[v], _negated(v)))
    return best, means


def _negated(value: Hashable):
    try:
        return -float(value)
    except (TypeError, ValueError):
        return 0.0
