"""Batching: framing per family, padding only to the batch's longest, truncation, length groups."""

from __future__ import annotations

import datasets
import numpy as np

from peftx.families import SpecialIds
from peftx.training.batching import BOS, EOS, OFFSET, PAD, LengthGroupedBatches, SymbolCollator, SymbolSplit


def split_of(seqs):
    return SymbolSplit(datasets.Dataset.from_dict({"tokens": seqs, "label": [0] * len(seqs)}))


def test_framing_and_padding():
    s = split_of([[0, 1, 2], [3]])
    c = SymbolCollator(s, SpecialIds(pad=0, bos=101, eos=102), max_length=None, pad_to_multiple=1)
    b = c([0, 1])
    assert b["input_ids"].tolist() == [[BOS, 0 + OFFSET, 1 + OFFSET, 2 + OFFSET, EOS], [BOS, 3 + OFFSET, EOS, PAD, PAD]]
    assert b["attention_mask"].tolist() == [[1, 1, 1, 1, 1], [1, 1, 1, 0, 0]]
    gpt = SymbolCollator(s, SpecialIds(pad=0, bos=None, eos=None), max_length=None, pad_to_multiple=8)
    g = gpt([1])
    assert g["input_ids"].shape == (1, 8) and g["input_ids"][0, :1].tolist() == [3 + OFFSET]


def test_truncation_keeps_first_tokens_and_the_end_token():
    s = split_of([list(range(10))])
    c = SymbolCollator(s, SpecialIds(pad=0, bos=None, eos=1), max_length=4, pad_to_multiple=8)
    b = c([0])
    assert b["input_ids"].tolist() == [[OFFSET, OFFSET + 1, OFFSET + 2, EOS]]
    assert c.num_truncated() == 1


def test_length_grouped_batches_cover_each_example_once_with_less_padding():
    rng = np.random.default_rng(0)
    lengths = rng.integers(5, 200, size=1000)
    grouped = list(LengthGroupedBatches(lengths, 16, seed=0))
    plain = list(LengthGroupedBatches(lengths, 16, seed=0, group_by_length=False))
    assert sorted(i for b in grouped for i in b) == list(range(1000))

    def padding(batches):
        return sum(max(lengths[b]) * len(b) - lengths[b].sum() for b in batches)

    assert padding(grouped) < 0.2 * padding(plain)
    second_epoch = LengthGroupedBatches(lengths, 16, seed=0)
    next(iter(second_epoch))
    assert list(second_epoch) != grouped  # each epoch reshuffles
