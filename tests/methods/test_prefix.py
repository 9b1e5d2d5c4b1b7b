"""Prefix tuning through transformers' attention interface: the prefixes reach every attention layer
that should see them (T5's relative attention and cross-attention included), masks and position
bias are right, and the attention kinds are configurable. These tests fail if a transformers
release stops routing an attention module through `ALL_ATTENTION_FUNCTIONS`."""

from __future__ import annotations

import pytest
import torch

from peftx.errors import PeftxError
from peftx.methods.prefix_attention import ATTENTION, prefix_attention
from tests.support.helpers import build, logits
from tests.support.tiny import tiny_recipe

SITES = {
    "bert": [f"encoder.layer.{i}.attention.self" for i in range(2)],
    "gpt2": [f"h.{i}.attn" for i in range(2)],
    "t5": [f"encoder.block.{i}.layer.0.SelfAttention" for i in range(2)]
    + [f"decoder.block.{i}.layer.{j}.{a}" for i in range(2) for j, a in ((0, "SelfAttention"), (1, "EncDecAttention"))],
    "bart": [f"encoder.layers.{i}.self_attn" for i in range(2)]
    + [f"decoder.layers.{i}.{a}" for i in range(2) for a in ("self_attn", "encoder_attn")],
    "llama": [f"layers.{i}.self_attn" for i in range(2)],
}


def prefix_model(family: str, **method):
    _, _, model, split = build(tiny_recipe(family, method={"name": "prefix", "length": 3, **method}))
    model.eval()
    batch = split.collate(list(range(5)))
    batch.pop("labels")
    return model, batch


def test_default_sites_are_every_attention_that_runs(family):
    model, _ = prefix_model(family)
    assert model.extras["prefix"].sites == SITES[family]
    assert model.backbone.config._attn_implementation == ATTENTION


@pytest.mark.parametrize("reparam", [None, 8])
def test_each_site_prefix_changes_the_logits(family, reparam):
    """Perturbing one site's prefix at a time changes the output: every layer sees its prefix
    (T5's encoder block 0 carries the relative-position bias; T5/BART decoders cross-attend)."""
    model, batch = prefix_model(family, reparam_hidden=reparam)
    prefixes = model.extras["prefix"]
    base = logits(model, batch)
    for index, site in enumerate(prefixes.sites):
        with torch.no_grad():
            if reparam is None:
                target = prefixes.kv[index]
                saved = target.clone()
                target.add_(torch.randn_like(target))
            else:  # only this site's rows of the MLP's output layer
                lo, hi = prefixes.bounds[index], prefixes.bounds[index + 1]
                target = prefixes.mlp_out.bias
                saved = target.clone()
                target[lo:hi] += torch.randn(hi - lo)
            moved = logits(model, batch)
            target.copy_(saved)
        assert not torch.allclose(moved, base, atol=1e-6), site
    assert torch.equal(logits(model, batch), base)


def test_prefix_gradients_reach_every_site(family):
    model, batch = prefix_model(family)
    model(**batch).sum().backward()
    grads = [p.grad for p in model.extras["prefix"].kv]
    assert all(g is not None and g.abs().sum() > 0 for g in grads)


def test_padding_is_ignored_with_prefixes(family):
    """A row padded inside a batch scores as it does alone: the widened mask keeps padding out
    (and GPT-2's causal mask stays aligned to the real positions)."""
    model, batch = prefix_model(family)
    n = int(batch["attention_mask"][-1].sum())
    assert n < batch["attention_mask"].shape[1]  # the last row is padded
    alone = {k: v[-1:, :n] for k, v in batch.items() if v is not None}
    torch.testing.assert_close(logits(model, batch)[-1:], logits(model, alone), atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize(
    "kinds, sites",
    [
        (["encoder_self"], [s for s in SITES["t5"] if s.startswith("encoder")]),
        (["cross"], [s for s in SITES["t5"] if "EncDecAttention" in s]),
        (["decoder_self", "cross"], [s for s in SITES["t5"] if s.startswith("decoder")]),
    ],
)
def test_attention_kinds_are_configurable(kinds, sites):
    model, batch = prefix_model("t5", attentions=kinds)
    assert model.extras["prefix"].sites == sites


def test_encoder_mean_pooling_prefixes_the_encoder_only():
    raw = tiny_recipe("bart", method={"name": "prefix", "length": 2})
    raw["model"]["pooling"] = "encoder_mean"
    _, _, model, _ = build(raw)
    assert model.extras["prefix"].sites == [s for s in SITES["bart"] if s.startswith("encoder")]
    raw["method"]["attentions"] = ["cross"]
    with pytest.raises(PeftxError, match=r"method.attentions: \['cross'\] does not run with pooling 'encoder_mean'"):
        build(raw)


def test_attention_kind_a_family_lacks_is_a_user_error():
    message = r"method.attentions: bert has no \['cross'\] attention \(it has: encoder_self\)"
    with pytest.raises(PeftxError, match=message):
        prefix_model("bert", attentions=["cross"])


class _Module(torch.nn.Module):
    def __init__(self, prefix, is_causal: bool):
        super().__init__()
        self.training = False
        self.is_causal = is_causal
        self.peftx_prefix = lambda: prefix


def _explicit(query, key, value, mask, scaling, bias=None):
    scores = query @ key.transpose(-1, -2) * scaling  # (batch, heads, q, k)
    if bias is not None:
        scores = scores + bias
    scores = scores.masked_fill(~mask, float("-inf"))
    return (scores.softmax(-1) @ value).transpose(1, 2)  # (batch, q, heads, hd)


@pytest.mark.parametrize("case", ["padding_mask", "position_bias", "causal_without_mask"])
def test_prefix_attention_equals_the_explicit_computation(case):
    """Keys/values [prefix; own], every query sees the prefix, prefix positions get zero bias."""
    torch.manual_seed(0)
    b, h, q, k, p, d = 2, 3, 5, 5, 4, 8
    query, key, value = torch.randn(b, h, q, d), torch.randn(b, h, k, d), torch.randn(b, h, k, d)
    prefix = (torch.randn(h, p, d), torch.randn(h, p, d))
    module = _Module(prefix, is_causal=case == "causal_without_mask")
    own = torch.ones(b, 1, q, k, dtype=torch.bool)
    own[1, ..., 3:] = False  # the second row's last two keys are padding
    kwargs, bias = {}, None
    if case == "position_bias":  # T5: relative-position score terms for the own keys
        kwargs["position_bias"] = torch.randn(1, h, q, k)
        bias = torch.cat([torch.zeros(1, h, q, p), kwargs["position_bias"]], -1)
    if case == "causal_without_mask":
        mask_in, own = None, torch.ones(q, k, dtype=torch.bool).tril().expand(b, 1, q, k)
    else:
        mask_in = own
    out, _ = prefix_attention(module, query, key, value, mask_in, scaling=0.5, **kwargs)
    full_k = torch.cat([prefix[0].expand(b, -1, -1, -1), key], 2)
    full_v = torch.cat([prefix[1].expand(b, -1, -1, -1), value], 2)
    full_mask = torch.cat([torch.ones(b, 1, q, p, dtype=torch.bool), own.expand(b, 1, q, k)], -1)
    torch.testing.assert_close(out, _explicit(query, full_k, full_v, full_mask, 0.5, bias), atol=1e-5, rtol=1e-5)
