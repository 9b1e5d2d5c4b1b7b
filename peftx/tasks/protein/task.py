"""Protein sequence classification: subcellular location (SCL2205, offline) and TAPE's remote
homology (fold, 1,195 classes, from local files).

Inputs are amino-acid letters, one symbol each: the 20 standard residues plus TAPE's extra IUPAC
letters B (D or N), O (pyrrolysine), U (selenocysteine), X (unknown) and Z (E or Q). `pretrained_vocab`
spells each symbol as its letter, one token in every family's vocabulary. Lower case is accepted.

Long sequences are cropped to `max_residues` before framing, in a stated way: `crop: ends` (default)
keeps the first ceil(N/2) and the last floor(N/2) residues, since sorting signals sit at both termini
(N-terminal signal and transit peptides, C-terminal ER-retention and peroxisomal signals);
`crop: start` keeps the first N. The same crop applies at prediction time.

SCL2205 comes from PyPI `p-scldata==2025.6.0` (19,074 UniProt sequences, 13 locations, the package's
own train / eval / held-out splits). A few sequences occur in more than one split; they are dropped
from train (and validation) so that the test set holds no sequence seen in training; the counts are in
the run's data notes.
"""

from __future__ import annotations

from functools import cache
from typing import TYPE_CHECKING, Literal

from pydantic import Field

from peftx.errors import PeftxError
from peftx.spec.input_spec import SymbolVocab
from peftx.tasks.base import SPLITS, TaskConfig, TaskData, TaskInfo
from peftx.tasks.protein import files as protein_files
from peftx.tasks.registry import TASKS
from peftx.tasks.splits import check_splits, majority_accuracy, nearest_centroid_accuracy
from peftx.util.user_paths import UserPath

# numpy and `datasets` are imported by the functions that make data: the task registers (and a recipe
# is read) without either.
if TYPE_CHECKING:
    import numpy as np

AMINO_ACIDS = tuple("ABCDEFGHIKLMNOPQRSTUVWXYZ")
VOCAB = SymbolVocab(symbols=AMINO_ACIDS, version="amino-acids-v1")
SCL_LABELS = (
    "Cytoplasm",
    "Plastid",
    "Secreted",
    "Mitochondrion",
    "Membrane",
    "Peroxisome",
    "Nucleus",
    "Cell projection",
    "ER",
    "Cytoplasm;Nucleus",
    "Centrosome;Cytoplasm;Cytoskeleton;Microtubule organizing center",
    "Cytoplasm;Membrane",
    "Cytoplasm;Cytoskeleton",
)
NUM_FOLDS = 1195
FOLD_LABELS = tuple(str(i) for i in range(NUM_FOLDS))  # TAPE's fold_label numbering


@cache
def _lookup() -> np.ndarray:
    """Byte -> symbol id of its amino acid (either case), -1 for any other byte."""
    import numpy as np

    table = np.full(256, -1, dtype=np.int16)
    for i, a in enumerate(AMINO_ACIDS):
        table[ord(a)] = table[ord(a.lower())] = i
    return table


def encode(seq: str) -> np.ndarray:
    """Symbol ids (int8) of an amino-acid sequence; raises ValueError naming an unknown letter."""
    import numpy as np

    raw = np.frombuffer(seq.encode("ascii", errors="replace"), dtype=np.uint8)
    ids = _lookup()[raw]
    if (ids < 0).any():
        bad = seq[int(np.argmax(ids < 0))]
        raise ValueError(f"{bad!r} is not an amino-acid letter (valid: {''.join(AMINO_ACIDS)})")
    return ids.astype(np.int8)


def crop(ids: np.ndarray, max_residues: int | None, how: str) -> np.ndarray:
    """The residues kept of a sequence (see the module docstring)."""
    if max_residues is None or len(ids) <= max_residues:
        return ids
    if how == "start":
        return ids[:max_residues]
    import numpy as np

    head = (max_residues + 1) // 2
    return np.concatenate([ids[:head], ids[len(ids) - (max_residues - head) :]])


class ProteinConfig(TaskConfig):
    """Protein sequences -> subcellular location (scl2205) or fold (remote_homology)."""

    name: Literal["protein"] = "protein"
    dataset: Literal["scl2205", "remote_homology"] = "scl2205"
    """scl2205: 13 subcellular locations (offline, p-scldata); remote_homology: TAPE's 1,195 folds."""
    data_dir: UserPath | None = None
    """remote_homology: folder of TAPE's files (required); scl2205: None = the installed p-scldata."""
    format: Literal["auto", "json", "lmdb", "fasta"] = "auto"
    """remote_homology file format; auto: the first of lmdb, json, fasta found."""
    test_split: Literal["fold_holdout", "superfamily_holdout", "family_holdout"] = "fold_holdout"
    """remote_homology: which of TAPE's three test sets."""
    max_residues: int | None = Field(510, ge=2)
    """Crop longer sequences to this many residues (None: no crop; the model's positions still bound it)."""
    crop: Literal["ends", "start"] = "ends"
    """ends: first half and last half of `max_residues`; start: the first `max_residues`."""
    n_train: int | None = Field(None, ge=1)
    """Use only this many training sequences (seeded subset); None: all."""
    n_val: int | None = Field(None, ge=1)
    """Use only this many validation sequences (seeded subset); None: all."""
    n_test: int | None = Field(None, ge=1)
    """Use only this many test sequences (seeded subset); None: all."""
    data_seed: int = 0
    """Seed of the subsets; fixed apart from the training seed so that all runs share one dataset."""

    def labels(self) -> tuple[str, ...]:
        return SCL_LABELS if self.dataset == "scl2205" else FOLD_LABELS

    def describe(self) -> TaskInfo:
        return TaskInfo(input_spec=VOCAB, labels=self.labels(), parse=self.parse)

    def parse(self, line: str) -> list[int]:
        """One amino-acid sequence per line (whitespace ignored) -> cropped symbol ids."""
        try:
            ids = encode("".join(line.split()))
        except ValueError as e:
            raise PeftxError(str(e)) from None
        if not len(ids):
            raise PeftxError("empty sequence")
        return crop(ids, self.max_residues, self.crop).tolist()

    def _read(self) -> tuple[dict[str, protein_files.Records], list[str]]:
        notes = []
        if self.dataset == "scl2205":
            folder = self.data_dir or protein_files.scldata_dir()
            raw, names = protein_files.read_scl2205(folder)
            if tuple(names.get(i) for i in range(len(names))) != SCL_LABELS:
                raise PeftxError(f"{folder / 'labels.json'}: labels differ from SCL2205's 13 (p-scldata==2025.6.0)")
            raw, dropped = drop_overlaps(raw)
            notes.append(
                f"protein: SCL2205 from {folder}; dropped {dropped['train']} training sequence(s) that also occur in "
                f"validation or test, and {dropped['validation']} validation sequence(s) that also occur in test"
            )
            return raw, notes
        if self.data_dir is None:
            raise PeftxError("task.data_dir: remote_homology needs a folder of TAPE's remote_homology files")
        parts = {"train": "train", "validation": "valid", "test": f"test_{self.test_split}"}
        raw = {
            ours: protein_files.read_tape_split(self.data_dir, theirs, self.format) for ours, theirs in parts.items()
        }
        for split, (_, labels) in raw.items():
            bad = [y for y in labels if not 0 <= y < NUM_FOLDS]
            if bad:
                raise PeftxError(f"{self.data_dir}: {split} fold label {bad[0]} outside 0..{NUM_FOLDS - 1}")
        notes.append(f"protein: TAPE remote homology from {self.data_dir}, test = {self.test_split}")
        return raw, notes

    def load(self) -> TaskData:
        import datasets  # here, not at the top: reading a recipe imports no `datasets`
        import numpy as np

        raw, notes = self._read()
        rng = np.random.default_rng(self.data_seed)
        limits = {"train": self.n_train, "validation": self.n_val, "test": self.n_test}
        out, cropped = {}, {}
        features = datasets.Features(
            {
                "tokens": datasets.Sequence(datasets.Value("int8")),
                "label": datasets.ClassLabel(names=list(self.labels())),
            }
        )
        for split in SPLITS:
            seqs, labels = raw[split]
            keep = np.arange(len(seqs))
            if limits[split] is not None and limits[split] < len(seqs):
                keep = np.sort(rng.permutation(len(seqs))[: limits[split]])
            tokens = []
            for i in keep:
                try:
                    ids = encode(seqs[i])
                except ValueError as e:
                    raise PeftxError(f"protein {split} sequence {i}: {e}") from None
                tokens.append(crop(ids, self.max_residues, self.crop))
            cropped[split] = sum(len(seqs[i]) > (self.max_residues or 1 << 62) for i in keep)
            out[split] = datasets.Dataset.from_dict(
                {"tokens": tokens, "label": [labels[i] for i in keep]}, features=features
            )
        splits = datasets.DatasetDict(out)
        check_splits(splits, f"protein {self.dataset}", self.data_dir or "task", len(self.labels()))
        notes.append(
            f"protein: splits { ({s: len(out[s]) for s in SPLITS}) }; cropped to {self.max_residues} residues "
            f"({self.crop}): {cropped}"
        )
        y = {s: np.asarray(out[s]["label"]) for s in ("train", "test")}
        comp = {s: composition(out[s]["tokens"]) for s in ("train", "test")}
        baselines = {
            "majority_class": majority_accuracy(y["train"].tolist(), y["test"].tolist()),
            "composition_nearest_centroid": nearest_centroid_accuracy(
                comp["train"], y["train"], comp["test"], y["test"]
            ),
        }
        return TaskData(splits=splits, info=self.describe(), baselines=baselines, notes=notes)


def drop_overlaps(raw: dict[str, protein_files.Records]) -> tuple[dict[str, protein_files.Records], dict[str, int]]:
    """Drop from train the sequences found in validation or test, and from validation those in test."""
    later = {"train": ("validation", "test"), "validation": ("test",)}
    dropped = {}
    out = dict(raw)
    for split, others in later.items():
        seen = {s for o in others for s in raw[o][0]}
        seqs, labels = raw[split]
        kept = [(s, y) for s, y in zip(seqs, labels) if s not in seen]
        dropped[split] = len(seqs) - len(kept)
        out[split] = ([s for s, _ in kept], [y for _, y in kept])
    return out, dropped


def composition(tokens: list[list[int]]) -> np.ndarray:
    """(n, alphabet) fraction of each amino acid in each sequence."""
    import numpy as np

    out = np.zeros((len(tokens), len(AMINO_ACIDS)), dtype=np.float32)
    for i, t in enumerate(tokens):
        if len(t):
            out[i] = np.bincount(np.asarray(t, dtype=np.int64), minlength=len(AMINO_ACIDS)) / len(t)
    return out


TASKS.register(ProteinConfig)
