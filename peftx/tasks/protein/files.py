"""Readers of protein classification data in their published formats, each returning
(sequences, labels) per split. Missing or malformed files raise a one-line PeftxError naming the file.

- TAPE's remote homology (fold classification, 1,195 folds): `remote_homology_<split>.json` (a JSON
  list of records) or `remote_homology_<split>.lmdb` (LMDB: key b"num_examples" -> pickled count,
  keys b"0", b"1", ... -> pickled records; needs the `lmdb` package). Records carry `primary` (the
  sequence) and `fold_label`.
- FASTA + labels: `remote_homology_<split>.fasta` and `remote_homology_<split>.labels` (one
  `id<TAB>label` line per record; ids are the first word of the FASTA header; an optional header line
  `id<TAB>label`).
- SCL2205 (PyPI `p-scldata==2025.6.0`): `scl2205.csv` (entry, seq, scl), `labels.json`,
  `splits.json` (trn / evl / tst lists of indices) and `entries.json` (index -> entry).
"""

from __future__ import annotations

import csv
import io
import json
import pickle
from pathlib import Path

from peftx.errors import PeftxError
from peftx.util.text_files import read_text

Records = tuple[list[str], list[int]]  # (sequences, labels)
TAPE_PREFIX = "remote_homology_"


def _records(path: Path, items: list, label_key: str) -> Records:
    seqs, labels = [], []
    for i, rec in enumerate(items):
        try:
            seqs.append(str(rec["primary"]))
            labels.append(int(rec[label_key]))
        except (KeyError, TypeError, ValueError) as e:
            raise PeftxError(f"{path}: record {i} lacks a usable 'primary' or {label_key!r} ({e})") from None
    return seqs, labels


def read_tape_json(path: Path, label_key: str = "fold_label") -> Records:
    """A TAPE JSON file: a list of records with `primary` and the label field."""
    if not path.is_file():
        raise PeftxError(f"{path}: missing TAPE JSON file")
    try:
        items = json.loads(read_text(path, "TAPE JSON file"))
    except json.JSONDecodeError as e:
        raise PeftxError(f"{path}: not valid JSON (line {e.lineno}: {e.msg})") from None
    if not isinstance(items, list):
        raise PeftxError(f"{path}: expected a JSON list of records")
    return _records(path, items, label_key)


def read_tape_lmdb(path: Path, label_key: str = "fold_label") -> Records:
    """A TAPE LMDB database (a folder holding data.mdb)."""
    try:
        import lmdb
    except ImportError:
        raise PeftxError(
            f"{path}: reading TAPE's LMDB files needs the lmdb package: pip install 'peftx[tape]'"
        ) from None
    if not (path / "data.mdb").is_file():
        raise PeftxError(f"{path}: missing TAPE LMDB database (expected {path / 'data.mdb'})")
    try:
        env = lmdb.open(str(path), readonly=True, lock=False, readahead=False, meminit=False, max_readers=1)
    except lmdb.Error as e:
        raise PeftxError(f"{path}: cannot open LMDB database ({e})") from None
    try:
        with env.begin(write=False) as txn:
            raw = txn.get(b"num_examples")
            if raw is None:
                raise PeftxError(f"{path}: not a TAPE LMDB database (no num_examples key)")
            items = []
            for i in range(pickle.loads(raw)):  # TAPE stores pickles; read only files you trust
                value = txn.get(str(i).encode())
                if value is None:
                    raise PeftxError(f"{path}: record {i} is missing")
                items.append(pickle.loads(value))
    except (pickle.UnpicklingError, EOFError, TypeError, lmdb.Error) as e:
        raise PeftxError(f"{path}: corrupt TAPE LMDB database ({type(e).__name__}: {e})") from None
    finally:
        env.close()
    return _records(path, items, label_key)


def read_fasta(path: Path) -> dict[str, str]:
    """id (first word of each header) -> sequence, in file order."""
    if not path.is_file():
        raise PeftxError(f"{path}: missing FASTA file")
    out: dict[str, str] = {}
    current = None
    parts: list[str] = []
    for lineno, line in enumerate(read_text(path, "FASTA file").splitlines(), start=1):
        line = line.strip()
        if not line:
            continue
        if line.startswith(">"):
            if current is not None:
                out[current] = "".join(parts)
            words = line[1:].split()
            if not words:
                raise PeftxError(f"{path}:{lineno}: FASTA header without an id")
            current, parts = words[0], []
            if current in out:
                raise PeftxError(f"{path}:{lineno}: id {current!r} appears twice")
        elif current is None:
            raise PeftxError(f"{path}:{lineno}: sequence line before the first '>' header (not FASTA)")
        else:
            parts.append(line)
    if current is not None:
        out[current] = "".join(parts)
    if not out:
        raise PeftxError(f"{path}: no FASTA records")
    return out


def read_labels(path: Path) -> dict[str, int]:
    """id -> integer label from `id<TAB>label` lines (whitespace also separates)."""
    if not path.is_file():
        raise PeftxError(f"{path}: missing labels file")
    out = {}
    for lineno, line in enumerate(read_text(path, "labels file").splitlines(), start=1):
        words = line.split()
        if not words:
            continue
        if lineno == 1 and words == ["id", "label"]:
            continue
        if len(words) != 2:
            raise PeftxError(f"{path}:{lineno}: expected 'id<TAB>label', got {line!r}")
        try:
            out[words[0]] = int(words[1])
        except ValueError:
            raise PeftxError(f"{path}:{lineno}: label {words[1]!r} is not an integer") from None
    return out


def read_fasta_labels(fasta: Path, labels_path: Path) -> Records:
    """Sequences from a FASTA file with labels from its labels file (every id must have one)."""
    seqs = read_fasta(fasta)
    labels = read_labels(labels_path)
    missing = [i for i in seqs if i not in labels]
    if missing:
        raise PeftxError(f"{labels_path}: no label for {len(missing)} FASTA id(s), e.g. {missing[0]!r}")
    return list(seqs.values()), [labels[i] for i in seqs]


def read_tape_split(data_dir: Path, split: str, fmt: str) -> Records:
    """One split of TAPE remote homology from `data_dir` in format json | lmdb | fasta | auto."""
    stem = data_dir / f"{TAPE_PREFIX}{split}"
    if fmt == "auto":
        found = [
            f for f, p in (("lmdb", ".lmdb"), ("json", ".json"), ("fasta", ".fasta")) if stem.with_suffix(p).exists()
        ]
        if not found:
            raise PeftxError(f"{stem}: missing remote homology file (.lmdb, .json or .fasta + .labels)")
        fmt = found[0]
    if fmt == "json":
        return read_tape_json(stem.with_suffix(".json"))
    if fmt == "lmdb":
        return read_tape_lmdb(stem.with_suffix(".lmdb"))
    return read_fasta_labels(stem.with_suffix(".fasta"), stem.with_suffix(".labels"))


def scldata_dir() -> Path:
    """The data folder of the installed `p-scldata` package."""
    try:
        import scldata
    except ImportError:
        raise PeftxError("task.dataset: scl2205 needs p-scldata==2025.6.0: pip install 'peftx[offline]'") from None
    return Path(scldata.__file__).parent / "data"


def read_scl2205(data_dir: Path) -> tuple[dict[str, Records], dict[int, str]]:
    """SCL2205's train / validation / test splits (the package's own trn / evl / tst) and its label names."""
    paths = {n: data_dir / n for n in ("scl2205.csv", "labels.json", "splits.json", "entries.json")}
    for path in paths.values():
        if not path.is_file():
            raise PeftxError(f"{path}: missing SCL2205 file (expected {', '.join(paths)})")
    try:
        names = {int(k): v for k, v in json.loads(read_text(paths["labels.json"]))["index_to_label"].items()}
        splits = json.loads(read_text(paths["splits.json"]))
        entries = json.loads(read_text(paths["entries.json"]))
        text = read_text(paths["scl2205.csv"])
        rows = {r["entry"]: (r["seq"], int(r["scl"])) for r in csv.DictReader(io.StringIO(text, newline=""))}
        out = {
            ours: (
                [rows[entries[str(i)]][0] for i in splits[theirs]],
                [rows[entries[str(i)]][1] for i in splits[theirs]],
            )
            for ours, theirs in (("train", "trn"), ("validation", "evl"), ("test", "tst"))
        }
    except (json.JSONDecodeError, csv.Error, KeyError, TypeError, ValueError, AttributeError) as e:
        raise PeftxError(f"{data_dir}: malformed SCL2205 files ({type(e).__name__}: {e})") from None
    return out, names
