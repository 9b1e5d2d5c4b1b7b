"""Modules a method adds outside the backbone are `MethodExtra`s: the model passes its input
embeddings and mask through each one's `transform_inputs`, and its longest input leaves room for
their `added_positions`."""

from __future__ import annotations

import dataclasses

import pytest
import torch
from torch import nn

from peftx.model.extras import MethodExtra
from tests.support.helpers import build, logits
from tests.support.tiny import tiny_recipe


class AppendZeros(MethodExtra):
    """Appends `n` zero vectors, unmasked, to every sequence."""

    def __init__(self, n: int) -> None:
        super().__init__()
        self.added_positions = n

    def transform_inputs(self, embeds, mask):
        zeros = embeds.new_zeros(embeds.shape[0], self.added_positions, embeds.shape[2])
        ones = mask.new_ones(mask.shape[0], self.added_positions)
        return torch.cat([embeds, zeros], 1), torch.cat([mask, ones], 1)


def tiny(method: dict | None = None):
    _, _, model, split = build(tiny_recipe("bert", method=method or {"name": "frozen", "preset": "head_only"}))
    model.eval()
    batch = split.collate([0, 1, 2])
    batch.pop("labels")
    return model, batch


def test_the_backbone_sees_what_the_extras_make_of_the_inputs():
    model, batch = tiny()
    seen = []
    encode = model.family.encode

    def recording(backbone, embeds, mask, *args):
        seen.append((embeds.shape, mask.clone()))
        return encode(backbone, embeds, mask, *args)

    model.family = dataclasses.replace(model.family, encode=recording)
    model.extras["two"] = AppendZeros(2)
    model.extras["three"] = AppendZeros(3)
    logits(model, batch)
    ((shape, mask),) = seen
    batch_size, seq = batch["input_ids"].shape
    assert shape == (batch_size, seq + 5, 32)
    assert torch.equal(mask[:, :seq], batch["attention_mask"]) and bool(mask[:, seq:].all())


def test_max_length_leaves_room_for_added_positions():
    model, _ = tiny()
    assert model.max_length == 128
    model.extras["two"] = AppendZeros(2)
    model.extras["plain"] = MethodExtra()  # adds none
    assert model.max_length == 126


def test_a_plain_extra_changes_nothing():
    model, batch = tiny()
    before = logits(model, batch)
    model.extras["plain"] = MethodExtra()
    torch.testing.assert_close(logits(model, batch), before)


def test_extras_must_be_method_extras():
    model, _ = tiny()
    with pytest.raises(TypeError, match=r"model.extras\['oops'\] must be a MethodExtra, not Linear"):
        model.extras["oops"] = nn.Linear(2, 2)


@pytest.mark.parametrize(
    ("method", "added"), [({"name": "prompt", "length": 3}, 3), ({"name": "prefix", "length": 3}, 0)]
)
def test_prompt_and_prefix_keep_method_extras(method, added):
    model, _ = tiny(method)
    (extra,) = model.extras.values()
    assert isinstance(extra, MethodExtra) and extra.added_positions == added
    assert model.max_length == 128 - added
