"""Reading series for the `timeseries` task: the data sets aeon ships inside its wheel (read with aeon's
own loaders, offline), `.ts` files (aeon's reader), and CSV / Parquet tables in a wide or a long layout.

Every series comes out as a (time, channels) float64 array. Mistakes are one PeftxError naming the
file (or data set), the series and, for bad values, the channel and step.

Table layouts:
- wide: one row per series; an optional `id_column` and `label_column`, every other column one time
  step in column order. Empty cells after a row's last value end that series early (series may differ
  in length); an empty cell before it is a missing value. Wide tables hold univariate series.
- long: one row per (series, time step): `id_column`, `time_column`, the value columns (one per
  channel: `value_columns`, or every other column) and an optional `label_column` (constant per series).
  Rows are ordered by time within each series.
"""

from __future__ import annotations

import math
import re
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from peftx.errors import PeftxError

# numpy is imported by the readers: the timeseries task registers (and a recipe is read) without it.
if TYPE_CHECKING:
    import numpy as np

# aeon's shipped data sets, by the kind of problem the archive poses.
CLASSIFICATION = (
    "ACSF1",
    "ArrowHead",
    "BasicMotions",
    "GunPoint",
    "ItalyPowerDemand",
    "JapaneseVowels",
    "OSULeaf",
    "PickupGestureWiimoteZ",
)
REGRESSION = ("CardanoSentiment", "Covid3Month")


@dataclass(frozen=True)
class ForecastSet:
    """A shipped forecasting data set and its usual protocol.

    Attributes:
        loader: aeon's loader function name (`aeon.datasets`), or `load_forecasting:<file>`.
        horizon: steps forecast (m1 yearly: 6, the M1/M4 yearly horizon).
        season: the seasonal-naive period of MASE (yearly data: 1; monthly: 12).
        context: default window length (two horizons, or three seasons for monthly data).
    """

    loader: str
    horizon: int
    season: int
    context: int


FORECASTING = {
    "m1_yearly": ForecastSet("load_forecasting:m1_yearly_dataset", 6, 1, 12),
    "airline": ForecastSet("load_airline", 12, 12, 36),
    "shampoo_sales": ForecastSet("load_shampoo_sales", 6, 12, 12),
    "lynx": ForecastSet("load_lynx", 10, 1, 30),
    "PBS_dataset": ForecastSet("load_PBS_dataset", 12, 12, 36),
}
DATASETS = (*CLASSIFICATION, *REGRESSION, *FORECASTING)
TABLE_SUFFIXES = (".csv", ".parquet")


@dataclass
class Collection:
    """Series read from one source.

    Attributes:
        series: each (time, channels) float64.
        labels: one per series (class names or target numbers, as the source holds them), or None.
        where: the file or data set, for messages.
        ids: each series' name (tables with an id column, tsf files), or None: numbered from 1.
        kind: what the source's labels say the problem is ("classification", "regression", or
            "forecasting" for a source without labels).
    """

    series: list[np.ndarray]
    labels: list | None
    where: str
    ids: list[str] | None = None
    kind: str = "forecasting"
    channels: list[str] | None = None  # the channels' names (long tables: the value columns)

    def place(self, i: int) -> str:
        """'<where>: series <id or number>'."""
        return f"{self.where}: series {self.ids[i] if self.ids else i + 1}"


def _aeon_message(e: Exception) -> str:
    """aeon's error as one line, without the file object's repr it starts with."""
    text = re.sub(r"Error loading <[^>]*>\.\s*", "", " ".join(str(e).split()))
    return text[:300] or type(e).__name__


def _collection(X, y, where: str, kind: str) -> Collection:
    """aeon's (cases, channels, time) array or list of (channels, time) arrays -> a Collection."""
    import numpy as np

    series = [np.asarray(x, dtype=np.float64).T for x in X]  # (time, channels)
    labels = None if y is None or len(y) == 0 else [v.item() if hasattr(v, "item") else v for v in y]
    return Collection(series, labels, where, kind=kind)


def load_shipped(name: str, split: str) -> Collection:
    """A shipped classification or regression data set's own train or test split.

    Args:
        name: one of CLASSIFICATION or REGRESSION.
        split: "train" or "test".
    """
    # aeon takes seconds to import: only a timeseries task that reads data pays for it
    from aeon.datasets import load_classification, load_regression

    load = load_classification if name in CLASSIFICATION else load_regression
    X, y = load(name, split=split)
    kind = "classification" if name in CLASSIFICATION else "regression"
    coll = _collection(X, None, f"aeon {name} ({split})", kind)
    coll.labels = [str(v) for v in y] if kind == "classification" else [float(v) for v in y]
    return coll


def load_shipped_series(name: str) -> Collection:
    """A shipped forecasting data set: its series, whole."""
    import aeon.datasets as aeon_datasets  # see `load_shipped`
    import numpy as np

    loader = FORECASTING[name].loader
    with warnings.catch_warnings():  # aeon 1.6 deprecates the small classic series; they still load
        warnings.simplefilter("ignore", FutureWarning)
        if loader.startswith("load_forecasting:"):
            frame = aeon_datasets.load_forecasting(loader.partition(":")[2])
            series = [np.asarray(v, dtype=np.float64).reshape(-1, 1) for v in frame["series_value"]]
            return Collection(series, None, f"aeon {name}", [str(s) for s in frame["series_name"]])
        values = getattr(aeon_datasets, loader)()
    return Collection([np.asarray(values, dtype=np.float64).reshape(-1, 1)], None, f"aeon {name}")


def read_ts(path: Path) -> Collection:
    """A `.ts` file (aeon's reader): classification if its header says `@classLabel true`, regression
    for `@targetLabel true`, forecasting (no labels) otherwise.

    Raises:
        PeftxError: no such file, or one aeon cannot read (a series whose channels differ in length,
            a regression target that is not a number), naming the file.
    """
    if not path.is_file():
        raise PeftxError(f"{path}: no such series file")
    from aeon.datasets import load_from_ts_file  # see `load_shipped`

    try:
        X, y, meta = load_from_ts_file(str(path), return_meta_data=True)
    except (OSError, ValueError, TypeError, IndexError) as e:
        raise PeftxError(f"{path}: cannot read as a .ts file ({_aeon_message(e)})") from None
    kind = "classification" if meta.get("classlabel") else "regression" if meta.get("targetlabel") else "forecasting"
    out = _collection(X, y if kind != "forecasting" else None, str(path), kind)
    if out.labels is not None and kind == "classification":
        out.labels = [str(v) for v in out.labels]
    return out


def _read_frame(path: Path):
    import pandas as pd  # through aeon's own dependency; only tables need it

    if not path.is_file():
        raise PeftxError(f"{path}: no such series file")
    try:
        return pd.read_parquet(path) if path.suffix.lower() == ".parquet" else pd.read_csv(path)
    except Exception as e:  # pandas and pyarrow raise many types for a bad file: the file is at fault
        raise PeftxError(f"{path}: cannot read as {path.suffix[1:]} ({' '.join(str(e).split())[:300]})") from None


def _require(frame, path: Path, columns: list[str]) -> None:
    for c in columns:
        if c not in frame.columns:
            raise PeftxError(f"{path}: no column {c!r} (columns: {', '.join(map(str, frame.columns))})")


def _numbers(frame, path: Path, columns: list[str]) -> np.ndarray:
    """The columns as float64, empty cells as NaN; a cell that is not a number is an error."""
    import numpy as np
    import pandas as pd

    out = frame[columns].apply(pd.to_numeric, errors="coerce")
    bad = out.isna() & frame[columns].notna() & (frame[columns].astype(str).apply(lambda c: c.str.strip()) != "")
    if bad.to_numpy().any():
        row, col = np.argwhere(bad.to_numpy())[0]
        line = f"{path}:{row + 2}" if path.suffix.lower() == ".csv" else f"{path}: row {row + 1}"
        raise PeftxError(f"{line}: column {columns[col]!r}: {frame[columns[col]].iloc[row]!r} is not a number")
    return out.to_numpy(dtype=np.float64)


def read_table(
    path: Path, layout: str, id_column: str, time_column: str, label_column: str, value_columns: list[str] | None
) -> Collection:
    """A CSV or Parquet table of series (see the module docstring for the layouts).

    Args:
        layout: "wide", "long", or "auto" (long when the table has `time_column`).

    Raises:
        PeftxError: a missing column, a cell that is not a number, a series with two labels.
    """
    import numpy as np

    frame = _read_frame(path)
    if layout == "auto":
        layout = "long" if time_column in frame.columns else "wide"
    labels = frame[label_column].tolist() if label_column in frame.columns else None  # Python scalars
    if layout == "wide":
        steps = [c for c in frame.columns if c not in (id_column, label_column)]
        values = _numbers(frame, path, steps)  # (series, steps)
        series = []
        for row in values:
            real = np.flatnonzero(~np.isnan(row))
            series.append(row[: real[-1] + 1 if len(real) else 0].reshape(-1, 1))  # trailing blanks: shorter
        ids = [str(v) for v in frame[id_column]] if id_column in frame.columns else None
        return Collection(series, labels, str(path), ids, _kind_of(labels))
    _require(frame, path, [id_column, time_column])
    channels = value_columns or [c for c in frame.columns if c not in (id_column, time_column, label_column)]
    _require(frame, path, channels)
    values = _numbers(frame, path, channels)  # in file order, so that messages name the file's lines
    frame = frame.reset_index(drop=True).sort_values([id_column, time_column], kind="stable")
    order = frame.index.to_numpy()
    values, frame = values[order], frame.reset_index(drop=True)
    labels = [labels[p] for p in order] if labels is not None else None
    series, ids, per_series = [], [], []
    for key, rows in frame.groupby(id_column, sort=False).indices.items():
        series.append(values[rows])
        ids.append(str(key))
        if labels is not None:
            found = {str(v) for v in frame[label_column].iloc[rows]}
            if len(found) > 1:
                raise PeftxError(
                    f"{path}: series {key}: column {label_column!r} holds {len(found)} labels {sorted(found)}"
                )
            per_series.append(labels[rows[0]])
    labels = per_series if labels is not None else None
    return Collection(series, labels, str(path), ids, _kind_of(labels), [str(c) for c in channels])


def _kind_of(labels: list | None) -> str:
    """What a table's labels say: none -> forecasting; all integers or text -> classification; other
    numbers -> regression."""
    if labels is None:
        return "forecasting"
    numbers = [v for v in labels if isinstance(v, int | float) and not isinstance(v, bool)]
    if len(numbers) == len(labels) and any(not float(v).is_integer() for v in numbers if math.isfinite(v)):
        return "regression"
    return "classification"


def clean(coll: Collection, missing: str, channels: int | None) -> list[np.ndarray]:
    """Each series checked: at least one step, `channels` channels, every value finite; NaN gaps
    filled by linear interpolation along time (the nearest value at either end) with
    `missing: interpolate`.

    Raises:
        PeftxError: naming the series, and for a bad value its channel and step.
    """
    import numpy as np

    out = []
    for i, x in enumerate(coll.series):
        if x.ndim != 2 or x.shape[0] == 0:
            raise PeftxError(f"{coll.place(i)}: empty series")
        if channels is not None and x.shape[1] != channels:
            raise PeftxError(f"{coll.place(i)}: {x.shape[1]} channel(s), the training series have {channels}")
        bad = np.isinf(x) | (np.isnan(x) if missing == "error" else np.zeros_like(x, dtype=bool))
        if bad.any():
            t, c = np.argwhere(bad)[0]
            hint = " (task.missing: interpolate fills gaps)" if np.isnan(x[t, c]) else ""
            raise PeftxError(f"{coll.place(i)}, channel {c + 1}, step {t + 1}: {x[t, c]} is not a finite number{hint}")
        if np.abs(x[np.isfinite(x)]).max(initial=0) > np.finfo(np.float32).max:
            raise PeftxError(f"{coll.place(i)}: a value is too large for float32 (at most about 3.4e38)")
        out.append(_interpolate(x, coll.place(i)) if np.isnan(x).any() else x)
    return out


def _interpolate(x: np.ndarray, where: str) -> np.ndarray:
    """Linear interpolation of NaN steps per channel (numpy's `interp`: the nearest value at the ends)."""
    import numpy as np

    x = x.copy()
    t = np.arange(len(x))
    for c in range(x.shape[1]):
        known = ~np.isnan(x[:, c])
        if not known.any():
            raise PeftxError(f"{where}, channel {c + 1}: every value is missing")
        x[:, c] = np.interp(t, t[known], x[known, c])
    return x
