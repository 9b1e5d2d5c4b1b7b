"""Batching of continuous inputs: framing markers per family, values aligned, truncation."""

from __future__ import annotations

import datasets
import numpy as np
import pytest

from peftx.families import SpecialIds
from peftx.spec.input_spec import ContinuousSpec
from peftx.training.batching import BOS, EOS, PAD, VALUE, ContinuousCollator, ContinuousSplit, make_split

SPEC = ContinuousSpec(dim=2, scale=0.5)


def split_of(seqs):
    ds = datasets.Dataset.from_dict({"values": seqs, "label": list(range(len(seqs)))})
    return ContinuousSplit(ds, SPEC)


def test_framing_values_and_padding():
    s = split_of([[[2, 4], [6, 8], [0, 2]], [[4, 4]]])
    c = ContinuousCollator(s, SpecialIds(pad=0, bos=101, eos=102), max_length=None, pad_to_multiple=1)
    b = c([0, 1])
    assert b["input_ids"].tolist() == [[BOS, VALUE, VALUE, VALUE, EOS], [BOS, VALUE, EOS, PAD, PAD]]
    assert b["attention_mask"].tolist() == [[1, 1, 1, 1, 1], [1, 1, 1, 0, 0]]
    assert b["values"].shape == (2, 5, 2)
    assert b["values"][0, 1:4].tolist() == [[1, 2], [3, 4], [0, 1]]  # scaled by spec.scale
    assert b["values"][1].abs().sum() == 2.0 * 2 and b["values"][:, 0].abs().sum() == 0  # zero at framing
    assert b["labels"].tolist() == [0, 1]
    gpt = ContinuousCollator(s, SpecialIds(pad=0, bos=None, eos=None), max_length=None, pad_to_multiple=8)
    g = gpt([1])
    assert g["input_ids"].shape == (1, 8) and g["input_ids"][0, :2].tolist() == [VALUE, PAD]


def test_truncation_keeps_first_vectors_and_the_end_marker():
    s = split_of([[[i, i] for i in range(10)]])
    c = ContinuousCollator(s, SpecialIds(pad=0, bos=None, eos=1), max_length=4, pad_to_multiple=8)
    b = c([0])
    assert b["input_ids"].tolist() == [[VALUE, VALUE, VALUE, EOS]]
    assert b["values"][0, :3, 0].tolist() == [0, 0.5, 1.0]
    assert c.num_truncated() == 1


def test_make_split_dispatches_and_checks_vector_length():
    ds = datasets.Dataset.from_dict({"values": [[[1, 2], [3, 4]]], "label": [0]})
    split = make_split(ds, SPEC, SpecialIds(pad=0, bos=1, eos=2), max_length=None, pad_to_multiple=1)
    assert split.lengths.tolist() == [4]
    with pytest.raises(ValueError, match="not all 3 long"):
        ContinuousSplit(ds, ContinuousSpec(dim=3))


def test_sliced_datasets_read_their_own_rows():
    seqs = [np.full((2, 2), i, dtype=np.uint8) for i in range(6)]
    ds = datasets.Dataset.from_dict({"values": seqs}).select(range(3, 6))
    s = ContinuousSplit(ds, SPEC)
    assert [int(s.sequence(i)[0, 0]) for i in range(3)] == [3, 4, 5]
