"""Hitting a trainable budget: targets (`2%`, `1.5M`) and the search for the largest knob value
within one. Pure functions: counting is the caller's (`peftx.studies.budget.table`)."""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass

from peftx.errors import PeftxError
from peftx.model.budget import Budget


@dataclass(frozen=True)
class Target:
    """A trainable budget: a percentage of the model's parameters, or a parameter count."""

    value: float
    percent: bool

    def measure(self, b: Budget) -> float:
        return b.trainable_pct if self.percent else b.trainable

    def fits(self, b: Budget) -> bool:
        return self.measure(b) <= self.value

    def __str__(self) -> str:
        return f"{self.value:g}%" if self.percent else f"{int(self.value):,}"


_SUFFIX = {"": 1, "k": 1e3, "m": 1e6, "b": 1e9, "g": 1e9}


def parse_target(text: str) -> Target:
    """`2%`, `0.5%`, `1500000`, `1.5M`, `150k` -> Target.

    Raises:
        PeftxError: anything else, or a value out of range.
    """
    m = re.fullmatch(r"\s*([0-9]*\.?[0-9]+(?:e[+-]?[0-9]+)?)\s*(%|[kmbg]?)\s*", text, re.IGNORECASE)
    if not m:
        raise PeftxError(f"--target {text!r}: expected a percentage such as 2% or a parameter count such as 1.5M")
    number, unit = float(m.group(1)), m.group(2).lower()
    if unit == "%":
        if not 0 < number <= 100:
            raise PeftxError(f"--target {text!r}: a percentage must be above 0 and at most 100")
        return Target(number, percent=True)
    count = number * _SUFFIX[unit]
    if count < 1:
        raise PeftxError(f"--target {text!r}: a parameter count must be at least 1")
    return Target(float(int(count)), percent=False)


def largest_within(f: Callable[[int], float], bound: float, low: int, high: int) -> int | None:
    """The largest k in [low, high] with f(k) <= bound, for f non-decreasing; None if f(low) > bound.

    Interpolates between the bracket's ends (budgets are near-affine in their knob, so the first
    guess is usually exact and its neighbour confirms it), probes the guess's neighbour, and bisects
    whenever a step fails to halve the bracket, so it takes at most about 3 log2(high - low) evaluations (four for
    an affine f).
    """
    if high < low:
        return None
    f_lo = f(low)
    if f_lo > bound:
        return None
    f_hi = f(high)
    if f_hi <= bound:
        return high
    lo, hi = low, high  # f(lo) <= bound < f(hi)
    bisect = False
    while hi - lo > 1:
        width = hi - lo
        if bisect or f_hi == f_lo:
            guesses = [(lo + hi) // 2]
        else:  # the interpolated guess, then its neighbour on the far side of the bound
            guess = min(max(lo + int((bound - f_lo) * (hi - lo) // (f_hi - f_lo)), lo + 1), hi - 1)
            guesses = [guess, guess + 1] if guess + 1 < hi else [guess]
        for i, guess in enumerate(guesses):
            if i and not lo < guess < hi:
                break
            value = f(guess)
            if value <= bound:
                lo, f_lo = guess, value
            else:
                hi, f_hi = guess, value
                break  # the neighbour above an over-budget guess says nothing new
        bisect = 2 * (hi - lo) > width
    return lo
