"""Long Range Arena's ListOps files (`basic_{train,val,test}.tsv`, columns Source and Target)."""

from __future__ import annotations

import csv
import io
from pathlib import Path
from typing import TYPE_CHECKING

from peftx.errors import PeftxError
from peftx.tasks.listops.symbols import LABELS, features, parse_expression
from peftx.util.text_files import read_text

if TYPE_CHECKING:
    import datasets

LRA_FILES = {"train": "basic_train.tsv", "validation": "basic_val.tsv", "test": "basic_test.tsv"}


def read_lra_file(path: Path) -> tuple[list[list[int]], list[int]]:
    """One of LRA's ListOps TSV files: (symbol ids, label) per row.

    Raises:
        PeftxError: a missing, binary or non-UTF-8 file, a missing column, or a bad row (an empty or
            malformed expression, unbalanced brackets, a Target that is not a digit 0-9), naming file:line.
    """
    text = read_text(path, "ListOps file")
    reader = csv.DictReader(io.StringIO(text, newline=""), delimiter="\t")
    try:
        fields = reader.fieldnames
    except csv.Error as e:
        raise PeftxError(f"{path}:1: not a TSV header ({e})") from None
    if not fields or {"Source", "Target"} - set(fields):
        raise PeftxError(f"{path}: expected columns Source and Target, found {fields}")
    exprs, labels = [], []
    while True:
        try:
            row = next(reader)
        except StopIteration:
            break
        except csv.Error as e:
            raise PeftxError(f"{path}:{reader.line_num}: not a TSV row ({e})") from None
        where = f"{path}:{reader.line_num}"
        if None in row:
            raise PeftxError(f"{where}: more fields than the header's {len(fields)}")
        source, target = row["Source"], row["Target"]
        if source is None or target is None:
            raise PeftxError(f"{where}: fewer fields than the header's {len(fields)}")
        if not source.strip():
            raise PeftxError(f"{where}: Source: empty")
        try:
            exprs.append(parse_expression(source))
        except PeftxError as e:
            raise PeftxError(f"{where}: {e}") from None
        if target.strip() not in LABELS:
            raise PeftxError(f"{where}: Target: {target!r} is not a label (0-9)")
        labels.append(int(target))
    return exprs, labels


def load_lra_tsv(data_dir: Path) -> datasets.DatasetDict:
    """Read LRA's `basic_{train,val,test}.tsv` (columns Source, Target) from `data_dir`.

    Raises:
        PeftxError: a missing folder or file, a bad row (naming file:line), or a file without rows.
    """
    if not data_dir.is_dir():
        raise PeftxError(f"task.data_dir: {data_dir}: no such folder (expected {', '.join(LRA_FILES.values())})")
    import datasets  # here, not at the top: reading a recipe imports no `datasets`

    out = {}
    for split, fname in LRA_FILES.items():
        path = data_dir / fname
        if not path.is_file():
            raise PeftxError(f"{path}: missing ListOps file (expected {', '.join(LRA_FILES.values())})")
        exprs, labels = read_lra_file(path)
        if not exprs:
            raise PeftxError(f"{path}: no examples (a header and no rows)")
        out[split] = datasets.Dataset.from_dict({"tokens": exprs, "label": labels}, features=features())
    return datasets.DatasetDict(out)
