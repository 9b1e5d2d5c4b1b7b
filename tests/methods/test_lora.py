"""LoRA on every family: the intended parameters (and only those) train, and the loss falls; the fused
LoRA layer (`train.fused_lora`) gives peft's loss and gradients."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F

from peftx.methods.lora_fused import fuse_lora_layers, lora_linear
from peftx.methods.recomputed_activation import recompute_activations
from tests.support.helpers import build, changed, snapshot, train_steps
from tests.support.tiny import tiny_recipe


def test_only_lora_head_change_after_steps(family):
    _, _, model, split = build(tiny_recipe(family))
    infos = model.param_infos()
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable == {n for n, i in infos.items() if i.role in ("adapter", "head")}
    assert any(infos[n].role == "adapter" for n in trainable)
    before = snapshot(model)
    train_steps(model, split, 3)
    moved = changed(before, model)
    # nothing frozen moves; every LoRA B matrix starts at zero and moves, except the decoder
    # self-attention queries/keys of T5/BART: over the lone decoder start token, softmax is constant
    assert moved <= trainable
    still = {n for n in trainable if "lora_B" in n} - moved
    assert all(
        ".decoder." in n
        and ("SelfAttention.q" in n or "SelfAttention.k" in n or "self_attn.q_proj" in n or "self_attn.k_proj" in n)
        for n in still
    ), still
    assert any(infos[n].role == "head" for n in moved)


def test_lora_parameter_count_is_analytic(family):
    _, _, model, _ = build(tiny_recipe(family, method={"name": "lora", "r": 4, "targets": ["attention"]}))
    mods = dict(model.backbone.named_modules())
    expected = 0
    for name in model.family.modules_of(model.backbone, ["attention"]):
        base = mods[name].base_layer
        w = base.weight
        fan_in, fan_out = (w.shape[0], w.shape[1]) if type(base).__name__ == "Conv1D" else (w.shape[1], w.shape[0])
        expected += 4 * (fan_in + fan_out)
    adapter = sum(p.numel() for n, p in model.named_parameters() if model.param_infos()[n].role == "adapter")
    assert adapter == expected


def test_lora_targets_by_module_pattern():
    _, _, model, _ = build(
        tiny_recipe("bert", method={"name": "lora", "targets": [r"encoder\.layer\.1\.attention\.self\.query"]})
    )
    adapters = [n for n, i in model.param_infos().items() if i.role == "adapter"]
    assert adapters and all(".layer.1.attention.self.query." in n for n in adapters)


def test_unmatched_lora_pattern_is_a_user_error():
    from peftx.errors import PeftxError

    with pytest.raises(PeftxError, match="method.targets: 'nothing' matches no module of bert"):
        build(tiny_recipe("bert", method={"name": "lora", "targets": ["nothing"]}))


def test_loss_falls_on_tiny_listops(family):
    _, _, model, split = build(tiny_recipe(family, method={"name": "lora", "r": 8, "train_roles": ["layer_norm"]}))
    losses = train_steps(model, split, 40, lr=1e-2)
    assert sum(losses[-8:]) / 8 < sum(losses[:8]) / 8 - 0.1


def test_train_roles_add_layer_norms():
    _, _, model, _ = build(tiny_recipe("bert", method={"name": "lora", "train_roles": ["layer_norm", "bias"]}))
    infos = model.param_infos()
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert {n for n, i in infos.items() if i.role == "layer_norm"} <= trainable
    assert {n for n, i in infos.items() if i.is_bias} <= trainable
    assert not any(infos[n].role in ("attention", "feed_forward") and not infos[n].is_bias for n in trainable)


def test_dora_adds_one_magnitude_per_output_channel(family):
    plain = build(tiny_recipe(family, method={"name": "lora", "r": 2, "targets": ["attention"]}))[2]
    dora = build(tiny_recipe(family, method={"name": "lora", "r": 2, "targets": ["attention"], "use_dora": True}))[2]
    mods = dict(dora.backbone.named_modules())
    outs = 0
    for name in dora.family.modules_of(dora.backbone, ["attention"]):
        w = mods[name].base_layer.weight
        outs += w.shape[1] if type(mods[name].base_layer).__name__ == "Conv1D" else w.shape[0]
    count = lambda m: sum(p.numel() for n, p in m.named_parameters() if m.param_infos()[n].role == "adapter")  # noqa: E731
    assert count(dora) - count(plain) == outs
    assert any("lora_magnitude_vector" in n for n, p in dora.named_parameters() if p.requires_grad)


def test_rslora_scales_by_alpha_over_sqrt_r():
    for rs, scale in ((False, 16 / 4), (True, 16 / 2)):
        method = {"name": "lora", "r": 4, "alpha": 16, "use_rslora": rs}
        model = build(tiny_recipe("bert", method=method))[2]
        query = dict(model.backbone.named_modules())["encoder.layer.0.attention.self.query"]
        assert query.scaling["default"] == scale


def _lora_pair(family: str):
    """A tiny LoRA model with non-zero B matrices, and a copy whose LoRA layers are fused."""
    _, _, plain, split = build(tiny_recipe(family))
    torch.manual_seed(0)
    for name, p in plain.named_parameters():
        if "lora_B" in name:
            torch.nn.init.normal_(p, std=0.1)
    fused = copy.deepcopy(plain)
    assert fuse_lora_layers(fused) > 0
    plain.eval()  # no dropout: both paths see the same computation
    fused.eval()
    return plain, fused, split


def _loss_and_grads(model, batch):
    batch = dict(batch)
    y = batch.pop("labels")
    loss = F.cross_entropy(model(**batch), y)
    loss.backward()
    return loss.item(), {n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad}


def test_fused_lora_gives_peft_loss_and_gradients(family):
    """Same math: in float64 the two agree to ~1e-12. (In float32 peft's own path is the less exact
    one: T5's bottom-layer gradients differ from float64 by 1e-3 relative, the fused ones by 1e-6.)"""
    plain, fused, split = _lora_pair(family)
    plain, fused = plain.double(), fused.double()
    batch = split.collate(list(range(16)))
    loss, grads = _loss_and_grads(plain, batch)
    fused_loss, fused_grads = _loss_and_grads(fused, batch)
    assert fused_loss == pytest.approx(loss, rel=1e-12)
    scale = max(g.abs().max().item() for g in grads.values())
    for name, g in grads.items():
        torch.testing.assert_close(fused_grads[name], g, rtol=1e-9, atol=1e-12 * scale, msg=name)


def test_fused_lora_inference_matches_peft(family):
    plain, fused, split = _lora_pair(family)
    batch = split.collate(list(range(16)))
    batch.pop("labels")
    with torch.inference_mode():
        torch.testing.assert_close(fused(**batch), plain(**batch), rtol=1e-4, atol=1e-5)


def test_fused_lora_under_bf16_autocast_stays_close():
    plain, fused, split = _lora_pair("bert")
    batch = split.collate(list(range(16)))
    y = batch.pop("labels")
    with torch.autocast("cpu", dtype=torch.bfloat16):
        ref = F.cross_entropy(plain(**batch).float(), y)
        got = F.cross_entropy(fused(**batch).float(), y)
    got.backward()
    assert got.item() == pytest.approx(ref.item(), rel=0.02)
    assert all(p.grad.dtype == torch.float32 for p in fused.parameters() if p.requires_grad)


def test_lora_layers_peft_handles_itself_are_not_fused():
    _, _, model, _ = build(tiny_recipe("bert", method={"name": "lora", "r": 4, "dropout": 0.1}))
    assert fuse_lora_layers(model) == 0  # LoRA dropout needs peft's own forward


def test_lora_linear_without_grad_is_the_merged_product():
    x, w, b = torch.randn(3, 5, 8), torch.randn(6, 8), torch.randn(6)
    a, bb = torch.randn(2, 8), torch.randn(6, 2)
    expected = F.linear(x, w, b) + 0.5 * (x @ a.t()) @ bb.t()
    with torch.no_grad():
        torch.testing.assert_close(lora_linear(x, w, b, a, bb, 0.5), expected, rtol=1e-5, atol=1e-5)


def _recomputing_pair(family: str):
    """Two copies of a fused tiny LoRA model, the second with `recompute_activations`."""
    _, fused, split = _lora_pair(family)
    lean = copy.deepcopy(fused)
    return fused, lean, recompute_activations(lean), split


@pytest.mark.parametrize("autocast", [False, True])
def test_recomputed_activations_give_the_same_loss_and_gradients(family, autocast):
    """Exact, not close: the activation's output is the same function of the same tensor."""
    fused, lean, routed, split = _recomputing_pair(family)
    assert routed > 0
    batch = split.collate(list(range(16)))
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
        loss, grads = _loss_and_grads(fused, batch)
        lean_loss, lean_grads = _loss_and_grads(lean, batch)
    assert lean_loss == loss
    for name, g in grads.items():
        assert torch.equal(lean_grads[name], g), name


def _saved_bytes(model, batch) -> int:
    """Bytes autograd keeps for backward over one forward (each storage once)."""
    storages = {}

    def pack(t):
        storages[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()
        return t

    batch = dict(batch)
    y = batch.pop("labels")
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        loss = F.cross_entropy(model(**batch), y)
    loss.backward()
    return sum(storages.values())


@pytest.mark.parametrize("family", ["bert", "gpt2"])
def test_recomputed_activations_keep_the_feed_forward_output_no_more(family):
    fused, lean, _, split = _recomputing_pair(family)
    batch = split.collate(list(range(16)))
    tokens = batch["input_ids"].numel()
    config = fused.backbone.config
    width = getattr(config, "intermediate_size", None) or getattr(config, "n_inner", None) or 4 * config.n_embd
    layers = getattr(config, "num_hidden_layers", None) or config.n_layer
    saved = _saved_bytes(fused, batch) - _saved_bytes(lean, batch)
    assert saved >= 0.95 * layers * tokens * width * 4  # at least one fp32 output per layer


def test_an_activation_output_changed_in_place_is_kept_not_recomputed():
    x = torch.randn(4, 6, requires_grad=True)
    w, a, b = torch.randn(5, 6), torch.randn(2, 6, requires_grad=True), torch.randn(5, 2, requires_grad=True)
    act = torch.nn.GELU()
    recompute_activations(act)
    y = act(x)
    y.mul_(3.0)  # after this, act(x) is no longer the layer's input
    lora_linear(y, w, None, a, b, 0.5).sum().backward()
    expected = [t.grad.clone() for t in (x, a, b)]
    for t in (x, a, b):
        t.grad = None
    y = torch.nn.functional.gelu(x) * 3.0
    (F.linear(y, w) + 0.5 * (y @ a.t()) @ b.t()).sum().backward()
    for got, want in zip(expected, (x.grad, a.grad, b.grad)):
        torch.testing.assert_close(got, want)
