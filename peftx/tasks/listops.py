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

import csv
import random
from collections import Counter
from pathlib import Path
from typing import Literal

import datasets

from peftx.cache import cached_dataset_dict
from peftx.errors import PeftxError
from peftx.input_spec import SymbolVocab
from peftx.tasks.base import SPLITS, TaskConfig, TaskData, TaskInfo, majority_accuracy
from peftx.tasks.registry import TASKS

OPERATORS = ("[MIN", "[MAX", "[MED", "[SM")
END = "]"
DIGITS = tuple(str(d) for d in range(10))
VALUE_P = 0.25
GENERATOR_VERSION = 1

VOCAB = SymbolVocab(
    symbols=OPERATORS + (END,) + DIGITS,
    version="listops-v1",
    # Spelled as words a language model knows; each is one token in BERT's uncased vocabulary.
    text={"[MIN": "min", "[MAX": "max", "[MED": "median", "[SM": "sum", END: "]"},
)
LABELS = DIGITS
_INDEX = {s: i for i, s in enumerate(VOCAB.symbols)}

# Named sizes. `lra` is Long Range Arena's; `cpu` keeps sequences short enough to train on a laptop
# CPU in minutes; `tiny` is for tests.
PRESETS: dict[str, dict[str, int]] = {
    "lra": dict(min_length=500, max_length=2000, max_depth=10, max_args=10, n_train=96_000, n_val=2_000, n_test=2_000),
    "cpu": dict(min_length=20, max_length=160, max_depth=10, max_args=10, n_train=20_000, n_val=1_000, n_test=1_000),
    "tiny": dict(min_length=4, max_length=40, max_depth=4, max_args=4, n_train=256, n_val=64, n_test=64),
}


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


def evaluate(tokens: list[str]) -> int:
    """Value of a ListOps expression given as tokens (parentheses already removed).

    Raises:
        ValueError: the expression is malformed.
    """
    stack: list[list] = []
    value = None
    for tok in tokens:
        if tok in OPERATORS:
            stack.append([tok])
        elif tok == END:
            if not stack or len(stack[-1]) < 2:
                raise ValueError("']' without an open operator or arguments")
            op, *args = stack.pop()
            if op == "[MIN":
                v = min(args)
            elif op == "[MAX":
                v = max(args)
            elif op == "[MED":
                s = sorted(args)
                n = len(s)
                # numpy.median then int(), as LRA computes it: the mean of the middle two, truncated.
                v = s[n // 2] if n % 2 else int((s[n // 2 - 1] + s[n // 2]) / 2)
            else:
                v = sum(args) % 10
            if stack:
                stack[-1].append(v)
            else:
                value = v
        elif tok in DIGITS:
            if stack:
                stack[-1].append(int(tok))
            else:
                value = int(tok)
        else:
            raise ValueError(f"unknown ListOps symbol {tok!r}")
    if stack or value is None:
        raise ValueError("unbalanced expression")
    return value


def tokenize(text: str) -> list[str]:
    """Split a ListOps string (LRA TSV form, parentheses allowed) into symbols."""
    return [t for t in text.replace("(", " ").replace(")", " ").split()]


def encode(text: str) -> list[int]:
    """Symbol ids of a ListOps string; raises PeftxError naming an unknown symbol."""
    ids = []
    for tok in tokenize(text):
        if tok not in _INDEX:
            raise PeftxError(f"unknown ListOps symbol {tok!r} (valid: {' '.join(VOCAB.symbols)})")
        ids.append(_INDEX[tok])
    return ids


def generate_splits(
    seed: int, min_length: int, max_length: int, max_depth: int, max_args: int, n_train: int, n_val: int, n_test: int
) -> datasets.DatasetDict:
    """Unique expressions, split train/validation/test in generation order (no duplicates across splits)."""
    rng = random.Random(seed)
    seen: dict[str, None] = {}
    total = n_train + n_val + n_test
    while len(seen) < total:
        toks = generate_expression(rng, max_depth, max_args, max_length)
        if toks is not None and min_length < len(toks) < max_length:
            seen.setdefault(" ".join(toks))
    exprs = list(seen)
    bounds = {"train": (0, n_train), "validation": (n_train, n_train + n_val), "test": (n_train + n_val, total)}
    return datasets.DatasetDict({split: _to_dataset(exprs[a:b]) for split, (a, b) in bounds.items()})


def _to_dataset(exprs: list[str]) -> datasets.Dataset:
    features = datasets.Features(
        {"tokens": datasets.Sequence(datasets.Value("int8")), "label": datasets.ClassLabel(names=list(LABELS))}
    )
    return datasets.Dataset.from_dict(
        {"tokens": [encode(e) for e in exprs], "label": [evaluate(e.split()) for e in exprs]}, features=features
    )


LRA_FILES = {"train": "basic_train.tsv", "validation": "basic_val.tsv", "test": "basic_test.tsv"}


def load_lra_tsv(data_dir: Path) -> datasets.DatasetDict:
    """Read LRA's `basic_{train,val,test}.tsv` (columns Source, Target) from `data_dir`."""
    out = {}
    for split, fname in LRA_FILES.items():
        path = data_dir / fname
        if not path.is_file():
            raise PeftxError(f"{path}: missing ListOps file (expected {', '.join(LRA_FILES.values())})")
        exprs, labels = [], []
        with path.open(newline="") as f:
            reader = csv.DictReader(f, delimiter="\t")
            if not reader.fieldnames or {"Source", "Target"} - set(reader.fieldnames):
                raise PeftxError(f"{path}: expected columns Source and Target, found {reader.fieldnames}")
            for lineno, row in enumerate(reader, start=2):
                try:
                    exprs.append(encode(row["Source"]))
                    labels.append(int(row["Target"]))
                except (PeftxError, ValueError, TypeError) as e:
                    raise PeftxError(f"{path}:{lineno}: {e}") from None
        features = datasets.Features(
            {"tokens": datasets.Sequence(datasets.Value("int8")), "label": datasets.ClassLabel(names=list(LABELS))}
        )
        out[split] = datasets.Dataset.from_dict({"tokens": exprs, "label": labels}, features=features)
    return datasets.DatasetDict(out)


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
    preset: Literal["cpu", "lra", "tiny"] = "cpu"
    """Named sizes: `cpu` (lengths 21-159, 20k/1k/1k), `lra` (501-1999, 96k/2k/2k), `tiny` (tests)."""
    min_length: int | None = None
    """Keep expressions longer than this (digits count one, operators two); null: the preset's."""
    max_length: int | None = None
    """Keep expressions shorter than this; null: the preset's."""
    max_depth: int | None = None
    """Deepest nesting of operators; null: the preset's."""
    max_args: int | None = None
    """Most arguments of one operator (each takes 2 to max_args); null: the preset's."""
    n_train: int | None = None
    """Training expressions to generate; null: the preset's."""
    n_val: int | None = None
    """Validation expressions to generate; null: the preset's."""
    n_test: int | None = None
    """Test expressions to generate; null: the preset's."""
    data_seed: int = 0
    """Seed of the generator; fixed apart from the training seed so that all runs share one dataset."""
    data_dir: Path | None = None
    """Read LRA's basic_{train,val,test}.tsv from here instead of generating."""

    def generator_args(self) -> dict[str, int]:
        args = dict(PRESETS[self.preset])
        for k in args:
            if getattr(self, k) is not None:
                args[k] = getattr(self, k)
        return args

    def describe(self) -> TaskInfo:
        return TaskInfo(input_spec=VOCAB, labels=LABELS, parse=encode)

    def load(self) -> TaskData:
        if self.data_dir is not None:
            splits = load_lra_tsv(self.data_dir)
            notes = [f"ListOps from LRA files in {self.data_dir}"]
        else:
            args = self.generator_args()
            key = {"generator": GENERATOR_VERSION, "seed": self.data_seed, **args}
            splits = cached_dataset_dict("listops", key, lambda: generate_splits(self.data_seed, **args))
            notes = [f"ListOps generated: {args}, data_seed={self.data_seed}"]
        missing = [s for s in SPLITS if s not in splits]
        if missing:
            raise PeftxError(f"ListOps data lacks split(s) {missing}")
        train, test = splits["train"], splits["test"]
        baselines = {
            "majority_class": majority_accuracy(train["label"], test["label"]),
            "root_operator": root_operator_accuracy(train, test),
        }
        return TaskData(splits=splits, info=self.describe(), baselines=baselines, notes=notes)


TASKS.register(ListOpsConfig)
