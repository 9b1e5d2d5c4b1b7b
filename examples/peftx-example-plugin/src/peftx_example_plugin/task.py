"""`labelled_lines`: a task read from one text file, one example per line: `<label> <symbols...>`.

The whole task contract in one file: a `TaskConfig` subclass that declares its registry name, says
what its inputs and labels are (`describe`) and loads its splits (`load`), then registers itself.
"""

from __future__ import annotations

import random
from pathlib import Path
from typing import Literal

import datasets

from peftx.errors import PeftxError
from peftx.tasks import TASKS, SymbolVocab, TaskConfig, TaskData, TaskInfo
from peftx.tasks.splits import majority_accuracy


class LabelledLinesConfig(TaskConfig):
    """Examples from a text file, one per line: a label, then the sequence's symbols."""

    name: Literal["labelled_lines"] = "labelled_lines"
    path: Path
    """The file (lines: `<label> <symbol> <symbol> ...`; blank lines and `#` comments skipped)."""
    test_fraction: float = 0.2
    """Share of the lines held out for test (as many again for validation), by a fixed seed."""

    def _rows(self) -> list[tuple[str, list[str]]]:
        if not self.path.is_file():
            raise PeftxError(f"{self.path}: no such file")
        rows = []
        for lineno, line in enumerate(self.path.read_text().splitlines(), start=1):
            words = line.split()
            if not words or words[0].startswith("#"):
                continue
            if len(words) < 2:
                raise PeftxError(f"{self.path}:{lineno}: expected a label and at least one symbol")
            rows.append((words[0], words[1:]))
        if not rows:
            raise PeftxError(f"{self.path}: no examples")
        return rows

    def describe(self) -> TaskInfo:
        rows = self._rows()
        vocab = SymbolVocab(symbols=tuple(sorted({s for _, seq in rows for s in seq})), version="labelled-lines-1")
        index = {s: i for i, s in enumerate(vocab.symbols)}

        def parse(text: str) -> list[int]:  # one `peftx predict` input line
            unknown = [s for s in text.split() if s not in index]
            if unknown or not text.split():
                raise PeftxError(f"unknown symbol(s) {unknown}" if unknown else "empty input")
            return [index[s] for s in text.split()]

        return TaskInfo(input_spec=vocab, labels=tuple(sorted({y for y, _ in rows})), parse=parse)

    def load(self) -> TaskData:
        info = self.describe()
        rows = self._rows()
        random.Random(0).shuffle(rows)
        n_test = max(1, int(self.test_fraction * len(rows)))
        parts = {"test": rows[:n_test], "validation": rows[n_test : 2 * n_test], "train": rows[2 * n_test :]}
        features = datasets.Features(
            {
                "tokens": datasets.Sequence(datasets.Value("int32")),
                "label": datasets.ClassLabel(names=list(info.labels)),
            }
        )
        splits = datasets.DatasetDict(
            {
                name: datasets.Dataset.from_dict(
                    {
                        "tokens": [info.parse(" ".join(seq)) for _, seq in part],
                        "label": [info.labels.index(y) for y, _ in part],
                    },
                    features=features,
                )
                for name, part in parts.items()
            }
        )
        baseline = majority_accuracy(splits["train"]["label"], splits["test"]["label"])
        return TaskData(
            splits=splits,
            info=info,
            baselines={"majority_class": baseline},
            notes=[f"{len(rows)} lines of {self.path}"],
        )


TASKS.register(LabelledLinesConfig)
