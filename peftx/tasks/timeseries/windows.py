"""Forecasting windows cut from whole series, as the M competitions evaluate (Makridakis et al.; M4,
2020): each series' last `horizon` steps are its test target, the `horizon` steps before them its
validation target, and every earlier stretch of `horizon` steps (forecast origins `stride` apart,
counted back from the validation origin) a training target. Nothing a window is scored on was seen
by a window of an earlier split.

A window's input is the `context` steps before its origin (fewer where the series starts later, but
at least `min_context`); its label is the target, time-major (step 1's channels, then step 2's ...),
followed by MASE's denominator: the in-sample mean absolute error of the seasonal-naive forecast over
the whole series before the origin (`seasonal_naive_scale`; M4's definition of MASE).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from peftx.errors import PeftxError
from peftx.spec.objective import seasonal_naive_scale

if TYPE_CHECKING:  # numpy: only where windows are cut
    import numpy as np


@dataclass(frozen=True)
class Windowing:
    """How windows are cut (see the module docstring)."""

    horizon: int
    context: int
    season: int
    min_context: int
    stride: int = 1


@dataclass
class Window:
    """One forecasting example."""

    context: np.ndarray  # (steps, channels)
    label: list[float]  # horizon x channels future values (time-major), then the MASE scale
    series: int  # which series it came from
    origin: int  # the first forecast step's index in that series


def window(x: np.ndarray, origin: int, w: Windowing, series: int) -> Window:
    """The window forecasting `x[origin : origin + horizon]` from the steps before `origin`."""
    context = x[max(0, origin - w.context) : origin]
    target = x[origin : origin + w.horizon]  # (horizon, channels)
    scale = seasonal_naive_scale(x[:origin], w.season)
    return Window(context, [*target.reshape(-1).tolist(), scale], series, origin)


def cut(series: list[np.ndarray], w: Windowing, where: list[str], source: str) -> dict[str, list[Window]]:
    """Train, validation and test windows of every series.

    Args:
        where: each series' place, for messages.
        source: the file or data set, for messages.

    Raises:
        PeftxError: a series too short for its validation and test windows.
    """
    out: dict[str, list[Window]] = {"train": [], "validation": [], "test": []}
    for i, x in enumerate(series):
        n = len(x)
        need = 2 * w.horizon + w.min_context
        if n < need:
            raise PeftxError(
                f"{where[i]}: {n} steps; validation and test windows need {need} "
                f"(2 x horizon {w.horizon} + min_context {w.min_context})"
            )
        out["test"].append(window(x, n - w.horizon, w, i))
        out["validation"].append(window(x, n - 2 * w.horizon, w, i))
        origins = range(n - 3 * w.horizon, w.min_context - 1, -w.stride)
        out["train"].extend(window(x, o, w, i) for o in reversed(origins))
    if not out["train"]:
        raise PeftxError(
            f"{source}: no training window: every series is shorter than "
            f"3 x horizon {w.horizon} + min_context {w.min_context} steps (lower task.horizon or task.min_context)"
        )
    return out


def seasonal_naive(windows: list[Window], horizon: int, season: int) -> np.ndarray:
    """The seasonal-naive forecast of each window, (windows, horizon x channels) time-major: step j
    repeats the context's value one season (j mod season) back; the last value for a context shorter
    than a season."""
    import numpy as np

    out = []
    for win in windows:
        ctx = win.context
        m = season if len(ctx) >= season else 1
        last = ctx[len(ctx) - m :]  # (m, channels)
        out.append(np.stack([last[j % m] for j in range(horizon)]).reshape(-1))
    return np.asarray(out)
