"""Soft prompts: where they go, that they reach the logits, and that pooling still reads the right
position (BERT's [CLS] at 0, GPT-2's real last token)."""

from __future__ import annotations

import torch

from peftx.tasks.listops.task import VOCAB
from tests.support.helpers import build, logits
from tests.support.tiny import tiny_recipe

LENGTH = 3


def prompt_model(family: str, **model_extra):
    raw = tiny_recipe(family, method={"name": "prompt", "length": LENGTH})
    raw["model"].update(model_extra)
    _, _, model, split = build(raw)
    model.eval()
    batch = split.collate(list(range(5)))
    batch.pop("labels")
    return model, batch


def test_prompt_goes_behind_the_start_token_or_first(family):
    model, batch = prompt_model(family)
    prompt = model.extras["prompt"]
    embeds = model.input(batch)  # (batch, seq, hidden)
    out, mask = prompt.transform_inputs(embeds, batch["attention_mask"])
    at = {"bert": 1, "bart": 1, "llama": 1, "gpt2": 0, "t5": 0}[family]  # behind [CLS] / <s> / BOS; else first
    assert out.shape[1] == embeds.shape[1] + LENGTH and mask.shape == out.shape[:2]
    assert torch.equal(out[:, :at], embeds[:, :at])
    assert torch.equal(out[:, at : at + LENGTH], prompt.vectors.expand(len(out), -1, -1))
    assert torch.equal(out[:, at + LENGTH :], embeds[:, at:])
    assert torch.equal(mask.sum(1), batch["attention_mask"].sum(1) + LENGTH)


def test_prompt_reaches_the_logits(family):
    model, batch = prompt_model(family)
    base = logits(model, batch)
    vectors = model.extras["prompt"].vectors
    with torch.no_grad():  # not a constant shift: BERT's embedding LayerNorm would remove it
        vectors.add_(torch.randn_like(vectors))
    assert not torch.allclose(logits(model, batch), base, atol=1e-6)


def test_padding_is_ignored_with_a_prompt(family):
    model, batch = prompt_model(family)
    n = int(batch["attention_mask"][-1].sum())
    assert n < batch["attention_mask"].shape[1]
    alone = {k: v[-1:, :n] for k, v in batch.items() if v is not None}
    torch.testing.assert_close(logits(model, batch)[-1:], logits(model, alone), atol=1e-5, rtol=1e-4)


def test_gpt2_pools_the_real_last_token():
    """With causal attention only the pooled position and later ones see the last real token:
    changing it changes the logits, and padding after it does not (test above)."""
    model, batch = prompt_model("gpt2")
    n = int(batch["attention_mask"][-1].sum())
    alone = {k: v[-1:, :n].clone() for k, v in batch.items() if v is not None}
    base = logits(model, alone)
    last = alone["input_ids"][0, -1]
    alone["input_ids"][0, -1] = 3 + (last - 3 + 1) % len(VOCAB.symbols)  # another symbol
    assert not torch.allclose(logits(model, alone), base, atol=1e-6)
    earlier = {k: v.clone() for k, v in alone.items()}
    earlier["attention_mask"][0, -1] = 0  # now the pooled position must be the one before
    assert not torch.allclose(logits(model, earlier), logits(model, alone), atol=1e-6)


def test_prompt_positions_come_off_the_longest_input():
    model, _ = prompt_model("bert")
    assert model.max_length == 128 - LENGTH
    t5, _ = prompt_model("t5")
    assert t5.max_length is None  # relative positions: unbounded


def test_random_init_uses_the_embedding_scale():
    _, _, model, _ = build(tiny_recipe("bert", method={"name": "prompt", "length": 64, "init": "random"}))
    table = model.backbone.get_input_embeddings().weight
    ratio = model.extras["prompt"].vectors.std() / table.std()
    assert 0.7 < ratio < 1.3
