"""`timeseries`: series classification, extrinsic regression and forecasting, from the data sets aeon
ships (no download) or from one's own `.ts`, CSV or Parquet files (layouts: `files.py`).

- Classification and regression: the archives' own train/test splits; validation is carved from
  train with a seed (stratified by class). One's own files: {train, test[, validation]}, or one file
  from which test and validation are carved. Baselines: the majority class; the training mean.
- Forecasting: windows cut from whole series as the M competitions evaluate (`windows.py`): each
  series' last `horizon` steps are test, the `horizon` before them validation, earlier ones training.
  The objective is scored by MASE against the seasonal-naive forecast (`season`); baselines: the
  seasonal-naive and last-value forecasts.

Inputs go to the model as `values` (steps, channels) with ContinuousSpec(kind="series"): one position
per time step (`patch_linear` makes patches of them, `digits` writes them as digit tokens, `linear`
projects each step). Series may differ in length (JapaneseVowels does); a series' channels may not.
Missing values (NaN) are an error naming series, channel and step, or with `missing: interpolate`
are filled linearly along time; infinities are always an error.
"""

from __future__ import annotations

import json
import statistics
from collections import Counter
from dataclasses import replace
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING, Literal

from pydantic import Field, model_validator

from peftx.errors import PeftxError
from peftx.spec.input_spec import ContinuousSpec
from peftx.spec.objective import Classification, Forecasting, Objective, Regression
from peftx.tasks.base import SPLITS, TaskConfig, TaskData, TaskInfo
from peftx.tasks.registry import TASKS
from peftx.tasks.sequences.files import label_name, sorted_labels, target_values, vectors
from peftx.tasks.splits import check_splits, majority_accuracy
from peftx.tasks.timeseries import files
from peftx.tasks.timeseries.files import DATASETS, FORECASTING, TABLE_SUFFIXES, Collection
from peftx.tasks.timeseries.windows import Windowing, cut, seasonal_naive
from peftx.util.user_paths import UserPath

if TYPE_CHECKING:  # imported where data is made: reading a recipe imports neither
    import datasets
    import numpy as np

SUFFIXES = (".ts", *TABLE_SUFFIXES)


class TimeSeriesConfig(TaskConfig):
    """Series from aeon's shipped data sets or one's own files: classification, regression, forecasting."""

    name: Literal["timeseries"] = "timeseries"
    dataset: Literal[DATASETS] | None = None
    """One of aeon's shipped data sets (classification: ArrowHead, GunPoint, JapaneseVowels, ...;
    regression: Covid3Month, CardanoSentiment; forecasting: m1_yearly, airline, ...)."""
    data_files: dict[str, UserPath] | UserPath | None = None
    """One's own series instead: {train: a.ts, test: b.ts} (validation optional), or one file; .ts,
    .csv or .parquet. Forecasting reads one file of whole series."""
    layout: Literal["auto", "wide", "long"] = "auto"
    """Tables: wide (a row per series) or long (a row per series and step); auto: long if the table has
    `time_column`."""
    id_column: str = "id"
    """Tables: the column naming each series (wide: optional)."""
    time_column: str = "time"
    """Long tables: the column ordering each series' steps."""
    label_column: str = "label"
    """Tables: the class or target of each series (absent: forecasting)."""
    value_columns: list[str] | None = None
    """Long tables: the channels' columns; None: every column but id, time and label."""
    objective: Literal["auto", "classification", "regression", "forecasting"] = "auto"
    """auto: what the data is (class labels, numeric targets, or none: forecasting). Any labelled series
    can be forecast instead; numeric labels can be regressed."""
    horizon: int | None = Field(None, ge=1)
    """Forecasting: steps forecast; None: the data set's own (m1_yearly 6, airline 12), else 1."""
    context: int | None = Field(None, ge=1)
    """Forecasting: steps the model sees before the forecast origin; None: the data set's own, else 2 x horizon."""
    season: int | None = Field(None, ge=1)
    """Forecasting: the seasonal-naive period of MASE (yearly 1, monthly 12); None: the data set's, else 1."""
    min_context: int = Field(2, ge=1)
    """Forecasting: fewest context steps of a window (series that start late give shorter contexts)."""
    stride: int = Field(1, ge=1)
    """Forecasting: steps between the origins of training windows."""
    loss: Literal["mse", "mae"] = "mse"
    """Forecasting: the training loss on errors scaled by each window's MASE denominator."""
    validation: float = Field(0.2, gt=0, lt=1)
    """Classification / regression: share of the training series held out for validation (seeded)."""
    test: float = Field(0.2, gt=0, lt=1)
    """Classification / regression from one file: share of its series held out for test."""
    split_seed: int = 0
    """Seed of the held-out splits (fixed apart from the training seed)."""
    missing: Literal["error", "interpolate"] = "error"
    """A missing value (NaN): an error naming series, channel and step, or filled by linear interpolation."""

    @model_validator(mode="after")
    def _one_source(self) -> TimeSeriesConfig:
        if (self.dataset is None) == (self.data_files is None):
            raise ValueError("give one of dataset (aeon's shipped data) or data_files (your own)")
        files_ = self.data_files if isinstance(self.data_files, dict) else {"train": self.data_files}
        if self.data_files is not None:
            unknown = sorted(set(files_) - set(SPLITS))
            if unknown or "train" not in files_:
                raise ValueError(f"data_files: a train file and optionally {SPLITS[1:]}, not {unknown or list(files_)}")
            for p in files_.values():
                if p.suffix.lower() not in SUFFIXES:
                    raise ValueError(f"{p}: unknown series file type {p.suffix!r} (valid: {', '.join(SUFFIXES)})")
        return self

    def default_input(self) -> str:
        return "patch_linear"

    # ------------------------------------------------------------------------------------------------
    # reading

    def _read(self, path: Path) -> Collection:
        if path.suffix.lower() == ".ts":
            return files.read_ts(path)
        cols = (self.id_column, self.time_column, self.label_column, self.value_columns)
        return files.read_table(path, self.layout, *cols)

    @cached_property
    def _sources(self) -> dict[str, Collection]:
        """The collections as the source gives them: {train, test} (shipped sets), the files by split,
        or {series: ...} (forecasting)."""
        if self.dataset in FORECASTING:
            return {"series": files.load_shipped_series(self.dataset)}
        if self.dataset is not None:
            return {s: files.load_shipped(self.dataset, s) for s in ("train", "test")}
        given = self.data_files if isinstance(self.data_files, dict) else {"train": self.data_files}
        return {split: self._read(path) for split, path in given.items()}

    @cached_property
    def kind(self) -> str:
        """The objective's kind: the recipe's, or what the source's labels say."""
        source = self._sources.get("train") or self._sources["series"]
        if self.objective == "auto":
            return source.kind
        if self.objective != "forecasting" and source.labels is None:
            raise PeftxError(f"task.objective: {self.objective} needs labels; {source.where} has none")
        if self.dataset is not None and self.objective not in (source.kind, "forecasting"):
            raise PeftxError(
                f"task.objective: {self.dataset} is a {source.kind} data set; read it as {source.kind} or forecasting"
            )
        return self.objective

    @cached_property
    def _series(self) -> dict[str, Collection]:
        """Checked series by split (forecasting: {series: ...}, cut into windows later)."""
        sources = self._sources
        if self.kind == "forecasting" and "series" not in sources:
            if self.dataset is None and len(sources) > 1:
                raise PeftxError("task.data_files: forecasting reads one file of whole series (data_files: a path)")
            # one file, or a labelled shipped set whose every series is forecast
            joined = _joined(sources, f"aeon {self.dataset}") if len(sources) > 1 else sources["train"]
            sources = {"series": joined}
        first = sources.get("train") or sources["series"]
        channels = first.series[0].shape[1] if first.series and first.series[0].ndim == 2 else None
        out = {}
        for name, coll in sources.items():
            out[name] = replace(coll, series=files.clean(coll, self.missing, channels))
        return out

    @cached_property
    def channels(self) -> int:
        return (self._series.get("train") or self._series["series"]).series[0].shape[1]

    def _label(self, coll: Collection, i: int) -> str | list[float]:
        """Series i's label as the objective reads it: a class name, or target numbers.

        Raises:
            PeftxError: a missing label, or one of the wrong type (naming the series).
        """
        try:
            if self.kind == "regression":
                return target_values(coll.labels[i])
            return label_name(coll.labels[i])
        except (ValueError, TypeError) as e:
            raise PeftxError(f"{coll.place(i)}: {e} (task objective: {self.kind})") from None

    @cached_property
    def _labels(self) -> tuple[str, ...]:
        if self.kind == "forecasting":
            named = (self._series.get("train") or self._series["series"]).channels
            if named:
                return tuple(named)
            return ("value",) if self.channels == 1 else tuple(f"channel_{c + 1}" for c in range(self.channels))
        train = self._series["train"]
        if self.kind == "regression":
            width = len(self._label(train, 0))
            return ("target",) if width == 1 else tuple(f"target_{i + 1}" for i in range(width))
        return sorted_labels({self._label(train, i) for i in range(len(train.series))})

    @cached_property
    def _windowing(self) -> Windowing:
        known = FORECASTING.get(self.dataset or "")
        horizon = self.horizon or (known.horizon if known else 1)
        context = self.context or (known.context if self.horizon is None and known else 2 * horizon)
        season = self.season or (known.season if known else 1)
        return Windowing(horizon, context, season, min(self.min_context, context), self.stride)

    def objective_of(self) -> Objective:
        """The task's objective over its labels (class names, target names, or channel names)."""
        if self.kind == "forecasting":
            w = self._windowing
            return Forecasting(self._labels, w.horizon, w.season, self.loss)
        return (Regression if self.kind == "regression" else Classification)(self._labels)

    # ------------------------------------------------------------------------------------------------
    # the task contract

    def describe(self) -> TaskInfo:
        return TaskInfo(
            input_spec=ContinuousSpec(dim=self.channels, kind="series"),
            labels=self._labels,
            parse=self.parse,
            read_inputs=self.read_inputs,
            objective=self.objective_of(),
        )

    def parse(self, text: str) -> np.ndarray:
        """One `peftx predict` input: a series as JSON ([[step 1's channels], ...], or a flat list for one
        channel) or as numbers separated by spaces (steps x channels, time-major). A forecast reads the
        last `context` steps.

        Raises:
            PeftxError: not numbers, or a step of another channel count than the training series'.
        """
        try:
            x = vectors(text, self.channels if not text.strip().startswith("[[") else None)
        except (ValueError, TypeError) as e:
            raise PeftxError(str(e)) from None
        if x.shape[1] != self.channels:
            raise PeftxError(f"{x.shape[1]} channel(s) per step, the training series have {self.channels}")
        return x[-self._windowing.context :] if self.kind == "forecasting" else x

    def read_inputs(self, path: Path) -> tuple[list[str], list[str] | None] | None:
        """A `peftx predict` file of series (.ts, .csv, .parquet): each series as `parse` reads it, and
        its class where the file has labels; None for another file type."""
        if path.suffix.lower() not in SUFFIXES:
            return None
        coll = self._read(path)
        series = files.clean(coll, self.missing, self.channels)
        texts = [json.dumps(x.tolist(), separators=(",", ":")) for x in series]
        targets = None
        if coll.labels is not None and self.kind == "classification":
            targets = [self._label(coll, i) for i in range(len(series))]
        return texts, targets

    def load(self) -> TaskData:
        if self.kind == "forecasting":
            return self._load_forecasting()
        splits = self._labelled_splits()
        objective = self.objective_of()
        where = self.dataset or str(self.data_files)
        if self.kind == "classification":
            check_splits(splits, "timeseries", where, len(self._labels))
        baselines = {}
        if self.kind == "classification":
            baselines["majority_class"] = majority_accuracy(splits["train"]["label"], splits["test"]["label"])
        info = self.describe()
        notes = self._notes(splits, objective)
        return TaskData(splits=splits, info=info, baselines=baselines, notes=notes)

    # ------------------------------------------------------------------------------------------------
    # splits

    def _labelled_splits(self) -> datasets.DatasetDict:
        """Classification / regression splits: the source's, with test and validation carved from
        train where the source has none."""
        import datasets  # see the imports above

        parts = {s: (c.series, [self._label(c, i) for i in range(len(c.series))]) for s, c in self._series.items()}
        for split, fraction in (("test", self.test), ("validation", self.validation)):
            if split not in parts:
                xs, ys = parts["train"]
                keep, held = carve(ys if self.kind == "classification" else None, len(xs), fraction, self.split_seed)
                parts[split] = ([xs[i] for i in held], [ys[i] for i in held])
                parts["train"] = ([xs[i] for i in keep], [ys[i] for i in keep])
        ids = {n: i for i, n in enumerate(self._labels)}
        out = {}
        for split in SPLITS:
            xs, ys = parts[split]
            if self.kind == "classification":
                unknown = sorted({y for y in ys if y not in ids})
                if unknown:
                    where = self._series.get(split, self._series["train"]).where
                    raise PeftxError(f"{where}: class {unknown[0]!r} does not occur in the training split")
                ys = [ids[y] for y in ys]
            out[split] = _dataset(xs, ys, self.kind, self._labels)
        return datasets.DatasetDict(out)

    def _load_forecasting(self) -> TaskData:
        import datasets  # see the imports above
        import torch

        coll = self._series["series"]
        w = self._windowing
        windows = cut(coll.series, w, [coll.place(i) for i in range(len(coll.series))], coll.where)
        splits = datasets.DatasetDict(
            {
                s: _dataset([win.context for win in windows[s]], [win.label for win in windows[s]], "forecasting", ())
                for s in SPLITS
            }
        )
        objective = self.objective_of()
        test = objective.label_tensor(splits["test"]["label"])
        baselines = {}
        for name, season in (("seasonal_naive", w.season), ("naive", 1))[: 1 + (w.season > 1)]:
            guess = torch.tensor(seasonal_naive(windows["test"], w.horizon, season), dtype=torch.float32)
            baselines[name] = objective.metrics(guess, test)[objective.primary]
        notes = self._notes(splits, objective)
        notes.insert(
            1,
            f"windows: horizon {w.horizon}, context {w.context} (at least {w.min_context}), "
            f"season {w.season}, training origins every {w.stride} step(s); {len(coll.series)} series",
        )
        return TaskData(splits=splits, info=self.describe(), baselines=baselines, notes=notes)

    def _notes(self, splits: datasets.DatasetDict, objective: Objective) -> list[str]:
        source = f"aeon {self.dataset}" if self.dataset else str(self.data_files)
        notes = [
            f"timeseries from {source}: {objective.kind}, {self.channels} channel(s), missing values: {self.missing}"
        ]
        for name, ds in splits.items():
            lengths = [len(x) for x in ds["values"]]
            notes.append(
                f"{name}: {len(ds)} {'windows' if objective.kind == 'forecasting' else 'series'}, length min "
                f"{min(lengths)} / median {statistics.median(lengths):g} / max {max(lengths)}"
            )
        if objective.kind == "classification":
            counts = Counter(splits["train"]["label"])
            notes.append("classes (train counts): " + " ".join(f"{n}:{counts[i]}" for i, n in enumerate(self._labels)))
        return notes


def _joined(sources: dict[str, Collection], where: str) -> Collection:
    """Every split's series as one collection (a labelled set read for forecasting)."""
    return Collection([x for c in sources.values() for x in c.series], None, where)


def carve(labels: list | None, n: int, fraction: float, seed: int) -> tuple[list[int], list[int]]:
    """(kept, held-out) indices: `fraction` of n held out by a seeded permutation, per class where
    `labels` are given (every class keeps at least one example; at least one is held out).

    Raises:
        PeftxError: fewer than two examples.
    """
    import numpy as np

    if n < 2:
        raise PeftxError(f"task: {n} training series are too few to hold out a split")
    rng = np.random.default_rng(seed)
    groups = (
        [np.arange(n)] if labels is None else [np.flatnonzero(np.asarray(labels) == c) for c in sorted(set(labels))]
    )
    held = []
    for idx in groups:
        k = min(int(round(fraction * len(idx))), len(idx) - 1)
        held.extend(rng.permutation(idx)[:k].tolist())
    if not held:
        largest = max(groups, key=len)
        held = [int(rng.choice(largest))]
    held_set = set(held)
    return [i for i in range(n) if i not in held_set], sorted(held)


def _dataset(xs: list[np.ndarray], ys: list, kind: str, labels: tuple[str, ...]) -> datasets.Dataset:
    """One split: `values` (steps, channels) per series or window, and `label`."""
    import datasets  # see the imports above
    import numpy as np

    label_feature = (
        datasets.ClassLabel(names=list(labels))
        if kind == "classification"
        else datasets.Sequence(datasets.Value("float32"))
    )
    features = datasets.Features(
        {"values": datasets.Sequence(datasets.Sequence(datasets.Value("float32"))), "label": label_feature}
    )
    return datasets.Dataset.from_dict(
        {"values": [np.asarray(x, dtype=np.float32) for x in xs], "label": ys}, features=features
    )


TASKS.register(TimeSeriesConfig)
