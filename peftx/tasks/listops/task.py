"""ListOps (Long Range Arena): nested MIN / MAX / MED / SM expressions over digits, 10 classes.

The generator follows LRA's `listops.py`: a node is a leaf digit unless a draw falls at or below 0.25
(`if r > VALUE_P: leaf`), nodes at the maximum depth are leaves, an operator takes 2 to `max_args`
arguments, and an expression's length counts one per digit and two per operator (the operator and
its closing bracket). Expressions are kept when `min_length < length < max_length`, exactly as LRA
filters. Two deliberate differences, neither of which changes the distribution: a tree is abandoned as
soon as it grows past `max_length` (it would be rejected anyway), and the redundant parentheses of
LRA's TSV form are not emitted (the loader strips them). Closing brackets are kept: they are the only
sign of where an argument list ends (the Frozen Pretrained Transformer's loader lost them).
"""

from __future__ import annotations

import random
from collections import Counter
from typing import TYPE_CHECKING, Literal

from pydantic import Field, model_validator

from peftx.tasks.base import TaskConfig, TaskData, TaskInfo
from peftx.tasks.listops.lra_files import LRA_FILES, load_lra_tsv, read_lra_file
from peftx.tasks.listops.symbols import (
    DIGITS,
    END,
    LABELS,
    OPERATORS,
    VALUE_P,
    VOCAB,
    encode,
    evaluate,
    features,
    parse_expression,
    tokenize,
)
from peftx.tasks.registry import TASKS
from peftx.tasks.splits import check_splits, majority_accuracy
from peftx.util.cache import cached_dataset_dict
from peftx.util.user_paths import UserPath

# `datasets` and numpy are imported by the functions that make data: reading and checking a recipe
# imports neither.
if TYPE_CHECKING:
    import datasets

# Re-exported: the task's symbols and LRA's files are reached through this module.
__all__ = [
    "DIGITS",
    "END",
    "LABELS",
    "LRA_FILES",
    "OPERATORS",
    "VALUE_P",
    "VOCAB",
    "ListOpsConfig",
    "encode",
    "evaluate",
    "generate_expression",
    "generate_splits",
    "load_lra_tsv",
    "parse_expression",
    "read_lra_file",
    "tokenize",
]

# `task.generator`: 1 draws one tree at a time as LRA's script does (`generate_expression`); 2
# (`numpy_generator`) draws the same distribution thousands of trees at a time, ~10x faster, from other
# random numbers (so other data).
GENERATORS = (1, 2)
# Draws in a row that may bring no new expression before generation gives up. Every preset accepts at
# least 3% of its draws (measured: cpu 3.1%, lra 8.2%, lra512 3.9%, tiny 20%), so 100,000 failures in a row never
# happen by chance; when they do, the settings allow too few distinct expressions (seconds, not a hang).
MAX_DRAWS_WITHOUT_NEW = 100_000

# Named sizes. `lra` is Long Range Arena's; `cpu` keeps sequences short enough to train on a laptop
# CPU in minutes; `tiny` is for tests.
PRESETS: dict[str, dict[str, int]] = {
    "lra": dict(min_length=500, max_length=2000, max_depth=10, max_args=10, n_train=96_000, n_val=2_000, n_test=2_000),
    # LRA's depth, argument counts and sizes at lengths a 512-position model holds whole (framing
    # included): LRA's own 500-2,000 would need truncation (scripts/listops_lengths.py measures it).
    "lra512": dict(
        min_length=200, max_length=510, max_depth=10, max_args=10, n_train=96_000, n_val=2_000, n_test=2_000
    ),
    "cpu": dict(min_length=20, max_length=160, max_depth=10, max_args=10, n_train=20_000, n_val=1_000, n_test=1_000),
    "tiny": dict(min_length=4, max_length=40, max_depth=4, max_args=4, n_train=256, n_val=64, n_test=64),
}
# The generator each preset uses unless `task.generator` says otherwise: the LRA-size presets the fast
# one; `cpu` and `tiny` keep generator 1, so that their data stay those of the published results.
PRESET_GENERATOR = {"lra": 2, "lra512": 2, "cpu": 1, "tiny": 1}


class _TooLong(Exception):
    pass


def generate_expression(rng: random.Random, max_depth: int, max_args: int, max_length: int) -> list[str] | None:
    """One random expression as a token list, or None if it grew to `max_length` or beyond."""
    out: list[str] = []

    def node(depth: int) -> None:
        r = rng.random() if depth < max_depth else 1.0
        if r > VALUE_P:
            out.append(rng.choice(DIGITS))
        else:
            out.append(rng.choice(OPERATORS))
            for _ in range(rng.randint(2, max_args)):
                node(depth + 1)
            out.append(END)
        if len(out) >= max_length:
            raise _TooLong

    try:
        node(1)
    except _TooLong:
        return None
    return out


def longest_expression(max_depth: int, max_args: int) -> int:
    """The length of the largest tree the generator can draw (every node an operator with `max_args`
    arguments down to `max_depth`), capped where it no longer matters."""
    length = 1
    for _ in range(max_depth - 1):
        length = min(2 + max_args * length, 1 << 40)
    return length


def generate_splits(
    seed: int,
    min_length: int,
    max_length: int,
    max_depth: int,
    max_args: int,
    n_train: int,
    n_val: int,
    n_test: int,
    generator: int = 1,
) -> datasets.DatasetDict:
    """Unique expressions, split train/validation/test in generation order (no duplicates across splits),
    drawn by generator 1 or 2 (GENERATORS)."""
    import datasets

    from peftx.tasks.listops.numpy_generator import generate_batched, shortage

    total = n_train + n_val + n_test
    bounds = {"train": (0, n_train), "validation": (n_train, n_train + n_val), "test": (n_train + n_val, total)}
    if generator == 2:
        drawn = generate_batched(seed, min_length, max_length, max_depth, max_args, total, MAX_DRAWS_WITHOUT_NEW)
        symbols, values = list(drawn), list(drawn.values())
        return datasets.DatasetDict(
            {split: _dataset_from_bytes(symbols[a:b], values[a:b]) for split, (a, b) in bounds.items()}
        )
    rng = random.Random(seed)
    seen: dict[str, None] = {}
    misses = 0
    while len(seen) < total:
        toks = generate_expression(rng, max_depth, max_args, max_length)
        before = len(seen)
        if toks is not None and min_length < len(toks) < max_length:
            seen.setdefault(" ".join(toks))
        misses = 0 if len(seen) > before else misses + 1
        if misses >= MAX_DRAWS_WITHOUT_NEW:
            raise shortage(misses, len(seen), total, min_length, max_length, max_depth, max_args)
    exprs = list(seen)
    return datasets.DatasetDict({split: _to_dataset(exprs[a:b]) for split, (a, b) in bounds.items()})


def _to_dataset(exprs: list[str]) -> datasets.Dataset:
    import datasets

    return datasets.Dataset.from_dict(
        {"tokens": [encode(e) for e in exprs], "label": [evaluate(e.split()) for e in exprs]}, features=features()
    )


def _dataset_from_bytes(symbols: list[bytes], values: list[int]) -> datasets.Dataset:
    """Expressions given as symbol-id bytes, straight into Arrow (no Python list per expression)."""
    import datasets
    import numpy as np
    import pyarrow as pa

    offsets = np.zeros(len(symbols) + 1, np.int32)
    np.cumsum([len(s) for s in symbols], out=offsets[1:])
    flat = np.frombuffer(b"".join(symbols), np.int8)
    table = pa.table(
        {
            "tokens": pa.ListArray.from_arrays(pa.array(offsets), pa.array(flat)),
            "label": pa.array(values, pa.int64()),
        }
    )
    return datasets.Dataset(table.cast(features().arrow_schema), info=datasets.DatasetInfo(features=features()))


def root_operator_accuracy(train: datasets.Dataset, test: datasets.Dataset) -> float:
    """Accuracy of predicting from the outermost operator alone (its most common value in train:
    0 for MIN, 9 for MAX). Models that learned nothing of the nesting plateau here (~36% on LRA)."""
    by_op: dict[int, Counter] = {}
    for toks, y in zip(train["tokens"], train["label"]):
        by_op.setdefault(toks[0], Counter())[y] += 1
    fallback = Counter(train["label"]).most_common(1)[0][0]
    rule = {op: c.most_common(1)[0][0] for op, c in by_op.items()}
    hits = sum(rule.get(toks[0], fallback) == y for toks, y in zip(test["tokens"], test["label"]))
    return hits / max(len(test), 1)


class ListOpsConfig(TaskConfig):
    """ListOps, generated (by preset, overridable field by field) or read from LRA's TSV files."""

    name: Literal["listops"] = "listops"
    preset: Literal["cpu", "lra", "lra512", "tiny"] = "cpu"
    """Named sizes: `cpu` (lengths 21-159, 20k/1k/1k), `lra` (501-1999, 96k/2k/2k), `lra512` (LRA's
    depth, arguments and sizes at lengths 201-509, which a 512-position model holds whole), `tiny` (tests)."""
    min_length: int | None = Field(None, ge=0)
    """Keep expressions longer than this (digits count one, operators two); null: the preset's."""
    max_length: int | None = Field(None, ge=2)
    """Keep expressions shorter than this; null: the preset's."""
    max_depth: int | None = Field(None, ge=1)
    """Deepest nesting of operators; null: the preset's."""
    max_args: int | None = Field(None, ge=2)
    """Most arguments of one operator (each takes 2 to max_args); null: the preset's."""
    n_train: int | None = Field(None, ge=1)
    """Training expressions to generate; null: the preset's."""
    n_val: int | None = Field(None, ge=1)
    """Validation expressions to generate; null: the preset's."""
    n_test: int | None = Field(None, ge=1)
    """Test expressions to generate; null: the preset's."""
    generator: Literal[1, 2] | None = None
    """Generator version: 1 draws one tree at a time as LRA's script does, 2 the same distribution
    thousands at a time (~10x faster, other data); null: the preset's (2 for `lra` and `lra512`, 1 for
    `cpu` and `tiny`)."""
    data_seed: int = Field(0, ge=0)
    """Seed of the generator; fixed apart from the training seed so that all runs share one dataset."""
    data_dir: UserPath | None = None
    """Read LRA's basic_{train,val,test}.tsv from here instead of generating."""

    @model_validator(mode="after")
    def _lengths_possible(self) -> ListOpsConfig:
        a = self.generator_args()
        if a["min_length"] + 1 >= a["max_length"]:
            raise ValueError(
                f"min_length {a['min_length']} and max_length {a['max_length']} leave no length between them "
                "(expressions are kept when min_length < length < max_length)"
            )
        longest = longest_expression(a["max_depth"], a["max_args"])
        if a["min_length"] >= longest:
            raise ValueError(
                f"min_length {a['min_length']}: no expression is longer (max_depth {a['max_depth']} and max_args "
                f"{a['max_args']} allow at most {longest})"
            )
        return self

    def generator_args(self) -> dict[str, int]:
        args = dict(PRESETS[self.preset])
        for k in args:
            if getattr(self, k) is not None:
                args[k] = getattr(self, k)
        return args

    def train_size(self) -> int | None:
        return None if self.data_dir is not None else self.generator_args()["n_train"]

    def describe(self) -> TaskInfo:
        return TaskInfo(input_spec=VOCAB, labels=LABELS, parse=parse_expression)

    def load(self) -> TaskData:
        if self.data_dir is not None:
            splits = load_lra_tsv(self.data_dir)
            notes = [f"ListOps from LRA files in {self.data_dir}"]
        else:
            args = self.generator_args()
            version = self.generator or PRESET_GENERATOR[self.preset]
            key = {"generator": version, "seed": self.data_seed, **args}
            splits = cached_dataset_dict(
                "listops", key, lambda: generate_splits(self.data_seed, **args, generator=version)
            )
            note = f"ListOps generated: {args}, data_seed={self.data_seed}"
            if version != 1:  # generator 1's note is left as it is, so its results group with earlier ones
                note += f", generator {version}"
            notes = [note]
        check_splits(splits, "ListOps", self.data_dir or "task")
        train, test = splits["train"], splits["test"]
        baselines = {
            "majority_class": majority_accuracy(train["label"], test["label"]),
            "root_operator": root_operator_accuracy(train, test),
        }
        return TaskData(splits=splits, info=self.describe(), baselines=baselines, notes=notes)


TASKS.register(ListOpsConfig)
