"""`sequences`: a data set of one's own (classification, multi-label or regression), read with
`datasets.load_dataset` from local CSV / TSV / JSON Lines / Parquet files (one per split, or one file
split by a seed) or from a hub data set id. Each row holds one input sequence and its label.

Inputs are symbols (a text cell: space-separated words, or its characters with `tokenize: chars`) or
continuous vectors (a list of equal-length lists per row, or a flat list cut by `width`). The
vocabulary is every symbol of the training split, sorted, recorded with its counts in the run's notes;
a symbol outside it in validation, test or `peftx predict` is an error naming where it is, or `<unk>`
with `unknown: unk`. Labels are integers or names, sorted ("2" before "10" when all are integers);
a label of validation or test that training lacks is an error. Baseline: the majority class.

`objective: multilabel` reads each label cell as a set of names (a list, a JSON list, or text split at
`label_separator`); `objective: regression` reads it as one number or a list of numbers (one per
target), and the baseline is the training mean.
"""

from __future__ import annotations

import hashlib
import json
import statistics
from collections import Counter
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING, Literal

from pydantic import Field, field_validator, model_validator

from peftx.errors import PeftxError
from peftx.spec.input_spec import ContinuousSpec, InputSpec, SymbolVocab
from peftx.spec.objective import Classification, MultiLabel, Objective, Regression
from peftx.tasks.base import SPLITS, TaskConfig, TaskData, TaskInfo
from peftx.tasks.registry import TASKS
from peftx.tasks.sequences.files import (
    FORMATS,
    UNK,
    Where,
    file_format,
    label_name,
    label_set,
    read_file,
    read_hub,
    require_columns,
    sorted_labels,
    split_symbols,
    target_values,
    vectors,
)
from peftx.tasks.splits import hold_out, majority_accuracy
from peftx.util.user_paths import UserPath

# `datasets` and numpy are imported where data is made: the task registers (and a recipe is read)
# without either.
if TYPE_CHECKING:
    import datasets
    import numpy as np

    Table = tuple[datasets.Dataset, Where]


class SequencesConfig(TaskConfig):
    """Sequences from files or a hub data set: one input column, one label column; classification,
    multi-label or regression."""

    name: Literal["sequences"] = "sequences"
    data_files: dict[str, UserPath] | UserPath | None = None
    """Local files: {train: a.csv, validation: b.csv, test: c.csv}, or one file (or a train file
    alone) split by `holdout`. Type by suffix: .csv .tsv .jsonl/.json (JSON Lines) .parquet."""
    path: str | None = None
    """A hub data set id (or a local data set folder) instead of files; its splits by `splits`."""
    subset: str | None = None
    """The hub data set's configuration name, if it has several."""
    splits: dict[str, str] = Field(default_factory=lambda: {s: s for s in SPLITS})
    """Our split -> the hub data set's split name, e.g. {validation: valid}; a missing one is held out."""
    input_column: str = "sequence"
    """Column of the inputs: text (symbols) or a list (vectors)."""
    label_column: str = "label"
    """Column of the labels: integers or names (multilabel: lists of them; regression: numbers)."""
    objective: Literal["classification", "multilabel", "regression"] = "classification"
    """What a label is: one class, a set of classes, or one or several numbers to predict."""
    label_separator: str = Field(" ", min_length=1)
    """Multilabel text cells: the character between label names."""
    inputs: Literal["auto", "symbols", "vectors"] = "auto"
    """What the input column holds; auto: symbols for text cells, vectors for list cells."""
    tokenize: Literal["spaces", "chars"] = "spaces"
    """Symbols: space-separated words, or every character (spaces dropped)."""
    width: int | None = Field(None, ge=1)
    """Vectors: numbers per position, for a flat list (or a text cell of numbers) per row."""
    unknown: Literal["error", "unk"] = "error"
    """A symbol outside the training vocabulary: an error naming it, or the symbol <unk>."""
    holdout: dict[str, float] = Field(default_factory=lambda: {"validation": 0.1, "test": 0.1})
    """Fractions of the training rows held out for splits no file or hub split gives."""
    split_seed: int = 0
    """Seed of that held-out split (fixed apart from the training seed)."""

    @model_validator(mode="after")
    def _one_source(self) -> SequencesConfig:
        if (self.data_files is None) == (self.path is None):
            raise ValueError("give one of data_files (local files) or path (a hub data set)")
        files = self.data_files if isinstance(self.data_files, dict) else {}
        unknown = sorted(set(files) - set(SPLITS)) + sorted(set(self.splits) - set(SPLITS))
        if unknown:
            raise ValueError(f"unknown split(s) {unknown} (valid: {', '.join(SPLITS)})")
        if isinstance(self.data_files, dict) and "train" not in self.data_files:
            raise ValueError("data_files needs a train file")
        for p in files.values() if isinstance(self.data_files, dict) else [self.data_files] * bool(self.data_files):
            file_format(p)
        return self

    @field_validator("holdout")
    @classmethod
    def _fractions(cls, v: dict[str, float]) -> dict[str, float]:
        if set(v) - {"validation", "test"} or any(not 0 < f < 1 for f in v.values()) or sum(v.values()) >= 1:
            raise ValueError("holdout: fractions of validation and test, each in (0, 1), summing below 1")
        return v

    def default_input(self) -> str:
        return "linear" if self._kind == "vectors" else "pretrained_vocab"

    # ------------------------------------------------------------------------------------------------
    # reading

    def _tables(self) -> dict[str, Table]:
        """The tables each split comes from (before any held-out split)."""
        if self.path is not None:
            return {ours: read_hub(self.path, self.subset, theirs) for ours, theirs in self.splits.items()}
        files = self.data_files if isinstance(self.data_files, dict) else {"train": self.data_files}
        return {split: read_file(path) for split, path in files.items()}

    @cached_property
    def _raw(self) -> dict[str, Table]:
        tables = self._tables()
        for split, (ds, where) in tables.items():
            if len(ds) == 0:
                raise PeftxError(f"{where.name}: split {split!r} has no rows")
            require_columns(ds, where, [self.input_column, self.label_column])
        return tables

    @cached_property
    def _kind(self) -> str:
        if self.inputs != "auto":
            return self.inputs
        if self.width is not None:
            return "vectors"
        ds, _ = self._raw["train"]
        return "symbols" if isinstance(ds[0][self.input_column], str) else "vectors"

    def _cells(self, split: str) -> tuple[list, list, Where]:
        ds, where = self._raw[split]
        return ds[self.input_column], ds[self.label_column], where

    @cached_property
    def _vocab(self) -> tuple[SymbolVocab | None, Counter]:
        """The vocabulary of the training split (symbols) and its counts; (None, {}) for vectors."""
        if self._kind == "vectors":
            return None, Counter()
        cells, _, where = self._cells("train")
        counts: Counter = Counter()
        for i, cell in enumerate(cells):
            try:
                counts.update(split_symbols(cell, self.tokenize))
            except ValueError as e:
                raise PeftxError(f"{where.row(i, self.input_column)}: {e}") from None
        symbols = tuple(sorted(counts))
        if self.unknown == "unk":
            if UNK in counts:
                raise PeftxError(f"{where.name}: the data uses {UNK!r} itself; use unknown: error")
            symbols = (UNK, *symbols)
        digest = hashlib.sha256("\n".join(symbols).encode()).hexdigest()[:12]
        return SymbolVocab(symbols=symbols, version=f"sequences-{digest}"), counts

    @cached_property
    def _labels(self) -> tuple[str, ...]:
        """Class names (sorted), or the regression targets' names (the column, indexed if lists)."""
        _, labels, where = self._cells("train")
        if self.objective == "regression":
            width = len(self._label_value(labels[0], where.row(0, self.label_column)))
            return (self.label_column,) if width == 1 else tuple(f"{self.label_column}[{i}]" for i in range(width))
        names = set()
        for i, cell in enumerate(labels):
            try:
                names.update(
                    label_set(cell, self.label_separator) if self.objective == "multilabel" else [label_name(cell)]
                )
            except ValueError as e:
                raise PeftxError(f"{where.row(i, self.label_column)}: {e}") from None
        return sorted_labels(names)

    def _label_value(self, cell: object, where: str) -> int | list[int] | list[float]:
        """One label cell as the objective's label: a class index, class indices, or target numbers.

        Raises:
            PeftxError: a cell the objective cannot read, or a class the training split lacks.
        """
        try:
            if self.objective == "regression":
                return target_values(cell)
            names = label_set(cell, self.label_separator) if self.objective == "multilabel" else [label_name(cell)]
        except ValueError as e:
            raise PeftxError(f"{where}: {e}") from None
        ids = {n: i for i, n in enumerate(self._labels)}
        unknown = [n for n in names if n not in ids]
        if unknown:
            raise PeftxError(
                f"{where}: label {unknown[0]!r} does not occur in the training split "
                f"(labels: {', '.join(self._labels)})"
            )
        return [ids[n] for n in names] if self.objective == "multilabel" else ids[names[0]]

    def objective_of(self) -> Objective:
        """The task's objective over its labels."""
        kind = {"classification": Classification, "multilabel": MultiLabel, "regression": Regression}
        return kind[self.objective](self._labels)

    @cached_property
    def _index(self) -> dict[str, int]:
        vocab, _ = self._vocab
        return {s: i for i, s in enumerate(vocab.symbols)} if vocab else {}

    def encode_symbols(self, cell: object) -> list[int]:
        """Symbol ids of one input cell.

        Raises:
            ValueError: not text, empty, or a symbol outside the vocabulary (with `unknown: error`).
        """
        symbols = split_symbols(cell, self.tokenize)
        if not symbols:
            raise ValueError("empty sequence")
        index = self._index
        if self.unknown == "unk":
            return [index.get(s, 0) for s in symbols]
        for s in symbols:
            if s not in index:
                raise ValueError(f"unknown symbol {s!r} (not among the {len(index)} symbols of the training split)")
        return [index[s] for s in symbols]

    def encode_vectors(self, cell: object) -> np.ndarray:
        """(seq, dim) of one input cell, checked against the training split's width."""
        arr = vectors(cell, self.width)
        dim = self._dim
        if dim is not None and arr.shape[1] != dim:
            raise ValueError(f"vectors of length {arr.shape[1]}, the training split's have {dim}")
        return arr

    @cached_property
    def _dim(self) -> int | None:
        if self._kind != "vectors":
            return None
        if self.width is not None:
            return self.width
        cells, _, where = self._cells("train")
        try:
            return int(vectors(cells[0], None).shape[1])
        except ValueError as e:
            raise PeftxError(f"{where.row(0, self.input_column)}: {e}") from None

    def _encode_split(self, split: str) -> datasets.Dataset:
        cells, labels, where = self._cells(split)
        xs, ys = [], []
        encode = self.encode_symbols if self._kind == "symbols" else self.encode_vectors
        for i, (cell, label) in enumerate(zip(cells, labels)):
            try:
                xs.append(encode(cell))
            except (ValueError, TypeError) as e:
                raise PeftxError(f"{where.row(i, self.input_column)}: {e}") from None
            ys.append(self._label_value(label, where.row(i, self.label_column)))
        if self.objective == "regression" and any(len(y) != len(self._labels) for y in ys):
            row = next(i for i, y in enumerate(ys) if len(y) != len(self._labels))
            raise PeftxError(
                f"{where.row(row, self.label_column)}: {len(ys[row])} target(s), the first row has {len(self._labels)}"
            )
        import datasets

        spec = self.describe().input_spec
        if isinstance(spec, SymbolVocab):
            x_feature = datasets.Sequence(datasets.Value("int32"))
        else:
            x_feature = datasets.Sequence(datasets.Sequence(datasets.Value("float32")))
        label_feature = {
            "classification": datasets.ClassLabel(names=list(self._labels)),
            "multilabel": datasets.Sequence(datasets.Value("int32")),
            "regression": datasets.Sequence(datasets.Value("float32")),
        }[self.objective]
        features = datasets.Features({spec.column: x_feature, "label": label_feature})
        return datasets.Dataset.from_dict({spec.column: xs, "label": ys}, features=features)

    # ------------------------------------------------------------------------------------------------
    # the task contract

    def input_spec(self) -> InputSpec:
        vocab, _ = self._vocab
        return vocab if vocab is not None else ContinuousSpec(dim=self._dim)

    def parse(self, text: str) -> list[int] | np.ndarray:
        """One `peftx predict` input (a cell as the files hold it) -> symbol ids or (seq, dim) values.

        Raises:
            PeftxError: an input the training data's vocabulary or width does not fit.
        """
        try:
            return self.encode_symbols(text) if self._kind == "symbols" else self.encode_vectors(text)
        except (ValueError, TypeError) as e:
            raise PeftxError(str(e)) from None

    def read_inputs(self, path: Path) -> tuple[list[str], list[str] | None] | None:
        """A `peftx predict` file in the task's own format: (each row's input as `parse` reads it, its
        label where the file has the label column); None for another file type (lines of inputs)."""
        if path.suffix.lower() not in FORMATS:
            return None
        ds, where = read_file(path)
        require_columns(ds, where, [self.input_column])
        cells = ds[self.input_column]
        texts = [c if isinstance(c, str) else _vector_text(c) for c in cells]
        targets = None
        if self.label_column in ds.column_names and self.objective == "classification":
            targets = []
            for i, cell in enumerate(ds[self.label_column]):
                try:
                    targets.append(label_name(cell))
                except ValueError as e:
                    raise PeftxError(f"{where.row(i, self.label_column)}: {e}") from None
        return texts, targets

    def describe(self) -> TaskInfo:
        return TaskInfo(
            input_spec=self.input_spec(),
            labels=self._labels,
            parse=self.parse,
            read_inputs=self.read_inputs,
            objective=self.objective_of(),
        )

    def load(self) -> TaskData:
        present = {s: self._encode_split(s) for s in self._raw}
        missing = [s for s in SPLITS if s not in present]
        if missing:
            present = hold_out(present, missing, self.holdout, self.split_seed)
        import datasets

        splits = datasets.DatasetDict({s: present[s] for s in SPLITS})
        train, test = splits["train"], splits["test"]
        baselines = {}
        if self.objective == "classification":
            baselines["majority_class"] = majority_accuracy(train["label"], test["label"])
        return TaskData(splits=splits, info=self.describe(), baselines=baselines, notes=self._notes(splits, missing))

    def _notes(self, splits: datasets.DatasetDict, held_out: list[str]) -> list[str]:
        files = self.data_files
        source = self.path or (", ".join(f"{k}: {v}" for k, v in files.items()) if isinstance(files, dict) else files)
        notes = [f"sequences from {source}" + (f"; {held_out} held out (seed {self.split_seed})" if held_out else "")]
        vocab, counts = self._vocab
        if vocab is not None:
            listed = " ".join(f"{s}:{counts.get(s, 0)}" for s in vocab.symbols)
            notes.append(f"vocabulary {vocab.version} ({len(vocab.symbols)} symbols, sorted, train counts): {listed}")
        else:
            notes.append(f"vectors of {self._dim} numbers per position")
        notes.append(self._label_note(splits["train"]["label"]))
        column = self.describe().input_spec.column
        for name, ds in splits.items():
            lengths = [len(x) for x in ds[column]]
            notes.append(
                f"{name}: {len(ds)} rows, length min {min(lengths)} / median {statistics.median(lengths):g} / "
                f"mean {statistics.fmean(lengths):.1f} / max {max(lengths)}"
            )
        return notes

    def _label_note(self, train_labels: list) -> str:
        if self.objective == "regression":
            import numpy as np

            values = np.asarray(train_labels, dtype=np.float64)
            mean, std = values.mean(0).round(4).tolist(), values.std(0).round(4).tolist()
            return f"targets {', '.join(self._labels)} (train): mean {mean}, std {std}"
        flat = [i for ids in train_labels for i in ids] if self.objective == "multilabel" else train_labels
        counts = Counter(flat)
        return "labels (train counts): " + " ".join(f"{n}:{counts[i]}" for i, n in enumerate(self._labels))


def _vector_text(cell: object) -> str:
    """A list cell as the JSON text `parse` reads back."""
    import numpy as np

    return json.dumps(np.asarray(cell, dtype=np.float64).tolist(), separators=(",", ":"))


TASKS.register(SequencesConfig)
