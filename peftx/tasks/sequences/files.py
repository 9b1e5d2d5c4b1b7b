"""Reading the `sequences` task's tables (CSV, TSV, JSON Lines, Parquet or a hub data set) through
`datasets.load_dataset`, and turning their cells into symbols, vectors and labels. Every mistake in a
file is one PeftxError naming the file, the row (its line, for text formats) and the column."""

from __future__ import annotations

import csv
import json
import math
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from peftx.errors import PeftxError
from peftx.util.cache import cache_root
from peftx.util.echo import printable
from peftx.util.text_files import decode_text, split_lines

# `datasets` and numpy are imported by the functions that read tables: the task registers (and a recipe
# is read) without either.
if TYPE_CHECKING:
    import datasets
    import numpy as np

# File suffix -> the `datasets` builder that reads it (and its options).
FORMATS = {
    ".csv": ("csv", {}),
    ".tsv": ("csv", {"delimiter": "\t"}),
    ".jsonl": ("json", {}),
    ".json": ("json", {}),
    ".parquet": ("parquet", {}),
}
UNK = "<unk>"


@dataclass(frozen=True)
class Where:
    """Where a table came from, for messages: a file (rows are located by line in text formats) or a
    hub split."""

    name: str
    header_lines: int | None  # lines before the first row (CSV: 1; JSON Lines: 0); None: not a text file

    def row(self, i: int, column: str) -> str:
        """'file:line: column 'x'' (text files) or 'name: row n, column 'x''; `i` counts rows from 0."""
        if self.header_lines is None:
            return f"{self.name}: row {i + 1}, column {column!r}"
        return f"{self.name}:{i + 1 + self.header_lines}: column {column!r}"


def file_format(path: Path) -> tuple[str, dict]:
    """The `datasets` builder and options for a file, by its suffix.

    Raises:
        PeftxError: a suffix none reads.
    """
    builder = FORMATS.get(path.suffix.lower())
    if builder is None:
        raise PeftxError(f"{path}: unknown data file type {path.suffix!r} (valid: {', '.join(FORMATS)})")
    return builder


def read_file(path: Path) -> tuple[datasets.Dataset, Where]:
    """One local table as a Dataset.

    Raises:
        PeftxError: no such file, an unknown suffix, or a file its reader cannot parse.
    """
    if not path.is_file():
        raise PeftxError(f"{path}: no such data file")
    import datasets

    datasets.disable_progress_bars()  # a bar per file is noise around peftx's own output
    builder, options = file_format(path)
    if builder == "csv":
        options = options | _text_columns(path, options.get("delimiter", ","))
    try:
        dd = datasets.load_dataset(
            builder, data_files={"rows": str(path)}, cache_dir=str(cache_root() / "datasets"), **options
        )
    except Exception as e:  # pyarrow / pandas / json errors of many types: the file is bad, not peftx
        if "corresponds to no data" not in str(e):
            raise PeftxError(_read_problem(path, builder, e)) from None
        dd = {"rows": datasets.Dataset.from_dict({c: [] for c in options.get("features", {})})}  # no rows
    text = builder in ("csv", "json")
    return dd["rows"], Where(str(path), (1 if builder == "csv" else 0) if text else None)


def _read_problem(path: Path, builder: str, error: Exception) -> str:
    """One line for a file `datasets` could not read, at `file:line` where the line can be known.
    `datasets` wraps the reader's error in "An error occurred while generating the dataset" (the cause
    only in a log line), and pandas and pyarrow count lines their own way, so text files are checked
    here: UTF-8 first, then JSON line by line; else the innermost cause, with the line it names."""
    if builder in ("csv", "json"):
        text = decode_text(path.read_bytes(), str(path))  # names the line of a byte that is not UTF-8
        if builder == "json":
            found = _json_problem(text)
            if found:
                return f"{path}:{found}"
    cause = error
    while cause.__cause__ is not None or cause.__context__ is not None:
        cause = cause.__cause__ or cause.__context__
    message = _first_line(cause)
    line = re.search(r"\bline (\d+)", message)  # pandas: "Expected 2 fields in line 3, saw 3"
    where = f"{path}:{line.group(1)}" if line and builder == "csv" else str(path)
    return f"{where}: cannot read as {path.suffix[1:]} ({message})"


def _json_problem(text: str) -> str | None:
    """'line: what' for the first line of a JSON Lines text that is not a JSON object (a whole JSON
    document: the line of its syntax error), or None when every line is one."""
    try:
        json.loads(text)
        if not text.lstrip().startswith("{"):
            return None  # one valid document (an array of rows): nothing to say by line
    except ValueError as e:
        if text.lstrip().startswith("["):
            return f"{e.lineno}: not valid JSON ({e.msg})"
    for number, line in enumerate(split_lines(text), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except ValueError as e:
            return f"{number}: not valid JSON ({e.msg} at column {e.colno})"
        if not isinstance(row, dict):
            return f"{number}: a JSON {type(row).__name__}, not an object of column values"
    return None


def _text_columns(path: Path, delimiter: str) -> dict:
    """Options that make `datasets` read every CSV column as text, empty cells included: a bit
    string such as 0110 must not become the number 110 (cells are parsed per column here)."""
    with path.open("rb") as f:
        first = decode_text(f.readline(), f"{path}")  # only the header line: a bad byte later is its own line's
    try:
        header = next(csv.reader([first.removeprefix("\ufeff").rstrip("\r\n")], delimiter=delimiter), None)
    except csv.Error as e:
        raise PeftxError(f"{path}:1: cannot read the header ({e})") from None
    if not header:
        raise PeftxError(f"{path}:1: no header line (the first line names the columns)")
    if len(set(header)) != len(header):
        raise PeftxError(f"{path}:1: a column name appears twice ({', '.join(header)})")
    import datasets

    features = datasets.Features({c: datasets.Value("string") for c in header})
    return {"features": features, "na_filter": False}


def read_hub(path: str, subset: str | None, split: str) -> tuple[datasets.Dataset, Where]:
    """One split of a hub data set (or of a local data set folder `datasets` understands).

    Raises:
        PeftxError: the data set or split cannot be had (offline, a wrong id or split name).
    """
    import datasets

    datasets.disable_progress_bars()
    try:
        ds = datasets.load_dataset(path, subset, split=split, cache_dir=str(cache_root() / "datasets"))
    except Exception as e:  # network, missing split, missing data set: all the user's to fix
        raise PeftxError(f"task.path: cannot load {path!r} split {split!r} ({_first_line(e)})") from None
    return ds, Where(f"{path}[{split}]", None)


def _first_line(e: Exception) -> str:
    text = " ".join(str(e).split()) or type(e).__name__
    return text[:300]


def require_columns(ds: datasets.Dataset, where: Where, columns: list[str]) -> None:
    """Raises PeftxError naming the first column `ds` lacks (and the columns it has)."""
    for col in columns:
        if col not in ds.column_names:
            raise PeftxError(f"{where.name}: no column {col!r} (columns: {', '.join(ds.column_names)})")


def split_symbols(cell: object, tokenize: str) -> list[str]:
    """Symbols of one cell: space-separated words, or its characters (`chars`, spaces dropped)."""
    if not isinstance(cell, str):
        raise ValueError(f"expected text, got {type(cell).__name__}")
    return [c for c in cell if not c.isspace()] if tokenize == "chars" else cell.split()


def vectors(cell: object, width: int | None) -> np.ndarray:
    """One cell of continuous inputs as (seq, dim) float32: a list of equal-length lists, or a flat list
    (or a string of space-separated numbers, or a JSON list) cut into vectors of `width`.

    Raises:
        ValueError: a cell of another shape, a flat list without `width` or not a multiple of it,
            or a value that is not a finite number (or too large for float32).
    """
    import numpy as np

    if isinstance(cell, str):
        text = cell.strip()
        cell = json.loads(text) if text.startswith("[") else [float(x) for x in text.split()]
    if not isinstance(cell, Sequence | np.ndarray) or len(cell) == 0:
        raise ValueError("expected a non-empty list of numbers or of vectors")
    if isinstance(cell[0], Sequence | np.ndarray):
        lengths = {len(v) for v in cell}
        if len(lengths) != 1:
            raise ValueError(f"vectors of different lengths {sorted(lengths)}")
        arr = np.asarray(cell, dtype=np.float64)
        if width is not None and arr.shape[1] != width:
            raise ValueError(f"vectors of length {arr.shape[1]}, task.width is {width}")
    else:
        if width is None:
            raise ValueError("a flat list of numbers needs task.width (numbers per position)")
        if len(cell) % width:
            raise ValueError(f"{len(cell)} numbers is not a multiple of task.width {width}")
        arr = np.asarray(cell, dtype=np.float64).reshape(-1, width)
    if not np.isfinite(arr).all():
        raise ValueError("a value is not a finite number")
    big = np.abs(arr) > np.finfo(np.float32).max  # finite here, infinite once stored as float32
    if big.any():
        raise ValueError(f"{float(arr[big][0]):g} is too large for float32 (at most about 3.4e38)")
    return arr.astype(np.float32)


def label_name(cell: object) -> str:
    """A label cell as its name: integers (also integral floats) as digits, text as itself.

    Raises:
        ValueError: an empty or missing label, or a number that is not an integer.
    """
    if cell is None or (isinstance(cell, str) and not cell.strip()):
        raise ValueError("empty label")
    if isinstance(cell, bool):
        return str(int(cell))
    if isinstance(cell, float):
        if not math.isfinite(cell) or cell != int(cell):
            raise ValueError(f"label {cell!r} is not an integer or a name")
        return str(int(cell))
    return str(cell).strip()


def label_set(cell: object, separator: str) -> list[str]:
    """A multi-label cell as its label names: a list, a JSON list as text, or text split at
    `separator` (an empty list or empty text: no label).

    Raises:
        ValueError: a cell that is none of these, or holds an empty or non-integral name.
    """
    if isinstance(cell, str):
        text = cell.strip()
        if text.startswith("["):
            try:
                cell = json.loads(text)
            except json.JSONDecodeError:
                raise ValueError(f"labels {printable(text)!r}: not a JSON list") from None
        else:
            return [label_name(p) for p in text.split(separator) if p.strip()] if text else []
    if not isinstance(cell, list | tuple):
        raise ValueError(f"labels {cell!r}: expected a list of labels")
    return [label_name(c) for c in cell]


def target_values(cell: object) -> list[float]:
    """A regression cell as its target numbers: a number, or a list of numbers.

    Raises:
        ValueError: empty, not numeric, or not finite.
    """
    values = list(cell) if isinstance(cell, list | tuple) else [cell]
    out = []
    for v in values:
        if v is None or isinstance(v, bool) or (isinstance(v, str) and not v.strip()):
            raise ValueError("empty target")
        try:
            number = float(v)
        except (TypeError, ValueError):
            raise ValueError(f"target {printable(str(v))!r} is not a number") from None
        if not math.isfinite(number) or abs(number) > 3.4e38:
            raise ValueError(f"target {number!r} is not a finite float32 number")
        out.append(number)
    if not out:
        raise ValueError("empty target list")
    return out


def sorted_labels(names: set[str]) -> tuple[str, ...]:
    """Label names in order: numerically when all are integers ("2" before "10"), else as text."""
    if all(n.lstrip("-").isdigit() for n in names):
        return tuple(sorted(names, key=int))
    return tuple(sorted(names))
