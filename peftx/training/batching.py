"""From dataset splits to padded batches: framing, truncation, length-grouped batching.

Symbol inputs share one index space across input adapters: 0 = padding, 1 = the family's start
token, 2 = its end token, task symbol i = i + 3. Continuous inputs (vectors in a `values` column) are
framed the same way: their batches carry `input_ids` marking each position as padding, start, end or
VALUE (= 3, "take this position's vector from `values`"), so every adapter decides in one place how
the family's start/end tokens are embedded. Batches are padded only to their own longest sequence,
and the training order groups similar lengths (less padding, same randomness per epoch).
"""

from __future__ import annotations

import random
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING

import datasets
import numpy as np
import pyarrow.compute as pc
import torch
from pyarrow.types import is_integer as pa_is_integer
from torch.utils.data import Sampler

from peftx.families import SpecialIds
from peftx.spec.index_space import BOS, EOS, OFFSET, PAD, VALUE
from peftx.spec.input_spec import ContinuousSpec, InputSpec, SymbolVocab
from peftx.spec.objective import Classification, Objective

if TYPE_CHECKING:
    from peftx.recipe import TrainSection

__all__ = [
    "PAD",
    "BOS",
    "EOS",
    "OFFSET",
    "VALUE",
    "Split",
    "make_split",
    "pad_multiple",
    "LengthGroupedBatches",
    "shard",
    "eval_batches",
    "eval_shard",
]


@dataclass
class Split:
    """A split ready for batching: a collate function, each example's framed length, its labels
    (None for unlabelled inputs, as `predict` reads them) and the objective that scores them."""

    collate: Callable[[list[int]], dict[str, torch.Tensor]]
    lengths: np.ndarray  # (n,)
    labels: torch.Tensor | None  # (n, ...) as `objective.label_tensor` makes them
    objective: Objective = Classification(())

    def __len__(self) -> int:
        return len(self.lengths)


class SymbolSplit:
    """One split's symbol sequences held as one flat array plus offsets (cheap even for LRA sizes)."""

    def __init__(self, ds: datasets.Dataset) -> None:
        col = ds.data.column("tokens").combine_chunks()
        self.offsets = col.offsets.to_numpy().astype(np.int64)  # (n + 1,)
        self.flat = col.values.to_numpy().astype(np.int32) + OFFSET  # shared index space; int32: any vocabulary
        self.labels = _class_labels(ds)
        self.lengths = np.diff(self.offsets)  # (n,)

    def __len__(self) -> int:
        return len(self.lengths)

    def sequence(self, i: int) -> np.ndarray:
        return self.flat[self.offsets[i] : self.offsets[i + 1]]


class SymbolCollator:
    """Frames (start/end tokens as the family wants), truncates and right-pads symbol sequences.

    Args:
        split: the sequences.
        specials: which framing tokens the family uses (bos/eos of None: not added).
        max_length: longest framed sequence the backbone takes (None: unbounded); longer inputs keep
            their first tokens.
        pad_to_multiple: round the padded length up (tensor-core and vector-unit friendly shapes).
    """

    def __init__(self, split: SymbolSplit, specials: SpecialIds, max_length: int | None, pad_to_multiple: int):
        self.split = split
        self.bos = specials.bos is not None
        self.eos = specials.eos is not None
        self.frame = int(self.bos) + int(self.eos)
        self.max_body = None if max_length is None else max_length - self.frame
        self.multiple = pad_to_multiple
        self.max_length = max_length

    def framed_length(self, i: int) -> int:
        n = int(self.split.lengths[i])
        return (n if self.max_body is None else min(n, self.max_body)) + self.frame

    def num_truncated(self) -> int:
        return 0 if self.max_body is None else int((self.split.lengths > self.max_body).sum())

    def width(self, indices: list[int]) -> int:
        """Padded length of a batch: its longest framed sequence, rounded up, capped at max_length."""
        longest = max(self.framed_length(i) for i in indices)
        width = -(-longest // self.multiple) * self.multiple
        return width if self.max_length is None else min(width, self.max_length)

    def __call__(self, indices: list[int]) -> dict[str, torch.Tensor]:
        width = self.width(indices)
        ids = np.full((len(indices), width), PAD, dtype=np.int64)
        mask = np.zeros((len(indices), width), dtype=np.int64)
        for row, i in enumerate(indices):
            body = self.split.sequence(i)[: self.max_body]
            start = int(self.bos)
            if self.bos:
                ids[row, 0] = BOS
            ids[row, start : start + len(body)] = body
            if self.eos:
                ids[row, start + len(body)] = EOS
            mask[row, : len(body) + self.frame] = 1
        batch = {"input_ids": torch.from_numpy(ids), "attention_mask": torch.from_numpy(mask)}
        if self.split.labels is not None:
            batch["labels"] = self.split.labels[indices]
        return batch


class LengthGroupedBatches(Sampler[list[int]]):
    """Training batches of similar lengths in random order, for one of `num_processes` processes.

    Each epoch shuffles the examples, cuts them into windows of `window` global batches, sorts each
    window by length and slices it into global batches of `batch_size x num_processes` examples, then
    shuffles the batches: the order stays random while a batch holds sequences of near-equal length.
    `group_by_length=False` gives plain shuffled batches.

    The permutation depends on the seed, the epoch and the global batch size only, so N processes at
    `batch_size` B see, step by step, exactly the examples one process sees at N x B: process r takes
    the r-th of N contiguous, near-equal parts of each global batch (`shard`). An epoch's last global
    batch may hold fewer than N examples; processes past its end then receive an empty list.
    """

    def __init__(
        self,
        lengths: np.ndarray,
        batch_size: int,
        seed: int,
        group_by_length: bool = True,
        window: int = 64,
        num_processes: int = 1,
        process_index: int = 0,
    ):
        if not 0 <= process_index < num_processes:
            raise ValueError(f"process_index {process_index} is not one of {num_processes} processes")
        self.lengths = lengths
        self.batch_size = batch_size  # per process
        self.seed = seed
        self.group = group_by_length
        self.window = window
        self.num_processes = num_processes
        self.process_index = process_index
        self.epoch = 0

    @property
    def global_batch_size(self) -> int:
        return self.batch_size * self.num_processes

    def __len__(self) -> int:
        return -(-len(self.lengths) // self.global_batch_size)

    def global_batches(self) -> list[list[int]]:
        """The next epoch's global batches (every process computes the same ones)."""
        size = self.global_batch_size
        rng = random.Random(self.seed * 100_003 + self.epoch)
        self.epoch += 1
        order = list(range(len(self.lengths)))
        rng.shuffle(order)
        if self.group:
            span = size * self.window
            order = [
                i
                for s in range(0, len(order), span)
                for i in sorted(order[s : s + span], key=lambda j: -self.lengths[j])
            ]
        batches = [order[s : s + size] for s in range(0, len(order), size)]
        if self.group:
            rng.shuffle(batches)
        return batches

    def __iter__(self) -> Iterator[list[int]]:
        for batch in self.global_batches():
            yield shard(batch, self.num_processes, self.process_index)


def shard(batch: list[int], num_processes: int, process_index: int) -> list[int]:
    """Process `process_index`'s part of a global batch: the r-th of `num_processes` contiguous parts
    whose sizes differ by at most one (the first parts take the remainder); empty where the batch
    holds fewer examples than processes."""
    base, extra = divmod(len(batch), num_processes)
    start = process_index * base + min(process_index, extra)
    return batch[start : start + base + (process_index < extra)]


def eval_batches(lengths: np.ndarray, batch_size: int, max_tokens: int | None = None) -> list[list[int]]:
    """Evaluation batches sorted by length (order does not matter for metrics; padding does).

    Args:
        batch_size: most examples in a batch.
        max_tokens: most padded tokens in a batch (batch x its longest length); a fixed number of
            examples would pad the long tail's batches heavily. Every batch holds at least one example.
    """
    order = np.argsort(-lengths, kind="stable").tolist()
    batches, start = [], 0
    while start < len(order):
        width = int(lengths[order[start]])  # the longest of the batch: sorted longest first
        size = batch_size if max_tokens is None else max(1, min(batch_size, max_tokens // max(width, 1)))
        batches.append(order[start : start + size])
        start += size
    return batches


def eval_shard(batches: list[list[int]], num_processes: int, process_index: int) -> list[list[int]]:
    """One process's evaluation batches: every `num_processes`-th batch from its own index (round robin
    over the length-sorted list, so each process gets long and short ones), then empty lists until it
    has as many as process 0, so that every process runs the same number of forward passes (sharded
    models gather their weights in each one). Over all processes each example appears exactly once."""
    mine = batches[process_index::num_processes]
    return mine + [[] for _ in range(-(-len(batches) // num_processes) - len(mine))]


def pad_multiple(cfg: TrainSection, device: torch.device) -> int:
    """The multiple padded batch widths round up to: `train.pad_to_multiple`, else 8 on GPUs (tensor-core
    shapes) and 1 on CPUs (rounding only adds work: a CPU's matrix units see batch x width rows, already
    a multiple of the batch).

    Args:
        cfg: the recipe's `train` section.
        device: where the batches go.

    Returns:
        The multiple, at least 1.
    """
    if cfg.pad_to_multiple is not None:
        return cfg.pad_to_multiple
    return 1 if device.type == "cpu" else 8


def make_split(
    ds: datasets.Dataset,
    spec: InputSpec,
    specials: SpecialIds,
    max_length: int | None,
    pad_to_multiple: int,
    objective: Objective | None = None,
) -> Split:
    """A split ready for batching for the task's kind of input.

    Args:
        pad_to_multiple: round each batch's padded width up to this (see `pad_multiple`).
        objective: makes the label tensor (None: classification, labels as class indices).
    """
    if isinstance(spec, SymbolVocab):
        collate = SymbolCollator(SymbolSplit(ds), specials, max_length, pad_to_multiple)
    elif isinstance(spec, ContinuousSpec):
        collate = ContinuousCollator(ContinuousSplit(ds, spec), specials, max_length, pad_to_multiple)
    else:
        raise TypeError(f"no batching for input spec {type(spec).__name__}")
    if objective is not None and "label" in ds.column_names:
        collate.split.labels = objective.label_tensor(ds["label"])
    lengths = np.array([collate.framed_length(i) for i in range(len(ds))], dtype=np.int64)
    return Split(collate, lengths, collate.split.labels, objective or Classification(()))


# --- continuous inputs -------------------------------------------------------------------------


class ContinuousSplit:
    """One split's vector sequences (column `values`, (seq, dim) per example) as one flat array.

    Values are kept in their stored dtype (images: uint8) and scaled to floats per batch
    (`spec.scale`), so a split of 60k images stays a few tens of MB.
    """

    def __init__(self, ds: datasets.Dataset, spec) -> None:
        col = ds.data.column("values").combine_chunks()
        self.dim = spec.dim
        self.scale = spec.scale
        self.lengths = pc.list_value_length(col).to_numpy(zero_copy_only=False).astype(np.int64)  # (n,)
        self.flat = pc.list_flatten(pc.list_flatten(col)).to_numpy(zero_copy_only=False)  # (sum(seq) * dim,)
        if self.flat.size != self.lengths.sum() * self.dim:
            raise ValueError(f"values: vectors are not all {self.dim} long")
        self.offsets = np.concatenate([[0], np.cumsum(self.lengths)])  # (n + 1,) in vectors
        self.labels = _class_labels(ds)

    def __len__(self) -> int:
        return len(self.lengths)

    def sequence(self, i: int) -> np.ndarray:
        a, b = self.offsets[i] * self.dim, self.offsets[i + 1] * self.dim
        return self.flat[a:b].reshape(-1, self.dim)  # (seq, dim)


class ContinuousCollator(SymbolCollator):
    """Frames, truncates (first vectors kept) and right-pads vector sequences.

    A batch holds `values` (batch, seq, dim) float32, zero at framing and padding positions,
    `input_ids` (batch, seq) with PAD / BOS / EOS / VALUE marking what each position is, and
    `attention_mask`.
    """

    def __call__(self, indices: list[int]) -> dict[str, torch.Tensor]:
        width = self.width(indices)
        ids = np.full((len(indices), width), PAD, dtype=np.int64)
        values = np.zeros((len(indices), width, self.split.dim), dtype=np.float32)
        start = int(self.bos)
        for row, i in enumerate(indices):
            body = self.split.sequence(i)[: self.max_body]  # (seq, dim)
            if self.bos:
                ids[row, 0] = BOS
            ids[row, start : start + len(body)] = VALUE
            values[row, start : start + len(body)] = body
            if self.eos:
                ids[row, start + len(body)] = EOS
        values *= self.split.scale
        batch = {
            "input_ids": torch.from_numpy(ids),
            "values": torch.from_numpy(values),
            "attention_mask": torch.from_numpy((ids != PAD).astype(np.int64)),
        }
        if self.split.labels is not None:
            batch["labels"] = self.split.labels[indices]
        return batch


def _class_labels(ds: datasets.Dataset) -> torch.Tensor | None:
    """A `label` column of class indices as a tensor (other objectives' labels: `make_split`)."""
    if "label" not in ds.column_names or not pa_is_integer(ds.data.column("label").type):
        return None
    return torch.tensor(ds["label"], dtype=torch.long)


def draw_like_a_data_loader() -> None:
    """Take from the global torch generator what a DataLoader's iterator takes (one int64, its base
    seed). The loop feeds batches itself (each process its part of the global batch); drawing as a
    DataLoader would keeps a seed's dropout masks, and so its results, those of a DataLoader-fed loop."""
    torch.empty((), dtype=torch.int64).random_()
