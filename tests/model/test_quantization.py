"""Quantized backbones: LoRA and every other method that keeps the body frozen, on 8-bit and 4-bit bodies
of every family, through train -> eval -> train cycles; budgets unchanged; what cannot train on a
quantized body is refused."""

from __future__ import annotations

import weakref
from typing import Literal

import pytest
import torch
import torch.nn.functional as F

from peftx.errors import PeftxError
from peftx.families import ParamInfo
from peftx.methods import METHODS, apply_method
from peftx.methods.base import MethodConfig
from peftx.model.quantization import (
    dequantized_weight,
    is_quantized,
    prepare_quantized,
    quantized_modules,
    set_quantized_weight,
)
from peftx.recipe import validate_recipe
from peftx.studies.budget import model_budget
from peftx.training.builder import recipe_budget
from peftx.training.evaluation import infer
from peftx.training.session import make_accelerator
from tests.methods.test_methods import CASES, intended
from tests.support.helpers import build, changed, on_device, snapshot, train_steps
from tests.support.tiny import FAMILY_NAMES, tiny_recipe

BITS = ("8bit", "4bit")


def quantized_recipe(family: str, bits: str, tmp_path=None, **sections) -> dict:
    raw = tiny_recipe(family, tmp_path, **sections)
    raw["model"]["quantization"] = bits
    return raw


def packed(model) -> int:
    """How many 4-bit layers bitsandbytes has repacked into its AVX512-BF16 inference layout."""
    states = [getattr(m.weight, "quant_state", None) for m in quantized_modules(model).values()]
    return sum(getattr(s, "packing_format_for_cpu", False) for s in states)


def eval_forward(model, batch: dict) -> None:
    """An evaluation forward as the loop runs it: eval mode, inference mode (no grad)."""
    model.eval()
    with torch.inference_mode():
        model(**on_device(batch, model))
    model.train()


def grads(model, batch: dict, y: torch.Tensor) -> tuple[float, dict[str, torch.Tensor]]:
    model.train()
    torch.manual_seed(0)  # the same dropout masks every call
    loss = F.cross_entropy(model(**on_device(batch, model)), y.to(next(model.parameters()).device))
    loss.backward()
    out = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    model.zero_grad(set_to_none=True)
    return loss.item(), out


@pytest.mark.parametrize("bits", BITS)
def test_lora_on_quantized_body_trains_through_eval(family, bits):
    _, _, model, split = build(quantized_recipe(family, bits))
    infos = model.param_infos()
    quantized = {n for n, p in model.named_parameters() if is_quantized(p)}
    # the body's matrices are quantized; embeddings (which pretrained_vocab reads), norms and the head are not
    assert quantized and all(infos[n].role in ("attention", "feed_forward") for n in quantized)
    assert model.backbone.get_input_embeddings().weight.dtype == torch.float32
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable == {n for n, i in infos.items() if i.role in ("adapter", "head")}
    before = snapshot(model)
    losses = train_steps(model, split, 1)
    logits = infer(model, split, 128, make_accelerator("fp32"))  # eval forward under inference_mode
    losses += train_steps(model, split, 1)
    assert torch.isfinite(logits).all() and all(torch.isfinite(torch.tensor(losses)))
    moved = changed(before, model)
    assert moved <= trainable and any(infos[n].role == "adapter" for n in moved)
    assert packed(model) == 0


FROZEN_BODY_CASES = [c for c, m in CASES.items() if METHODS.get(m["name"]).quantized_body_ok and c != "lora"]


@pytest.mark.parametrize("case", FROZEN_BODY_CASES)
def test_every_frozen_body_method_trains_on_a_quantized_body(case, family):
    # each method meets both widths across the families (and each family both across the methods)
    bits = BITS[(FROZEN_BODY_CASES.index(case) + FAMILY_NAMES.index(family)) % 2]
    _, _, model, split = build(quantized_recipe(family, bits, method=CASES[case]))
    infos = model.param_infos()
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable == intended(case, family, infos)
    assert not any(is_quantized(p) for n, p in model.named_parameters() if n in trainable)
    before = snapshot(model)
    losses = train_steps(model, split, 1)
    infer(model, split, 128, make_accelerator("fp32"))
    losses += train_steps(model, split, 1)
    assert all(torch.isfinite(torch.tensor(losses)))
    assert changed(before, model) <= trainable


@pytest.mark.parametrize("bits", BITS)
def test_biases_of_quantized_layers_train(bits):
    # bitfit-style: the biases of int8 / 4-bit layers stay float32 parameters and get gradients
    _, _, model, split = build(quantized_recipe("bert", bits, method={"name": "lora", "r": 4, "train_roles": ["bias"]}))
    layer_biases = {f"{n}.bias" for n, m in quantized_modules(model).items() if m.bias is not None}
    assert layer_biases and all(dict(model.named_parameters())[n].requires_grad for n in layer_biases)
    before = snapshot(model)
    train_steps(model, split, 2)
    assert layer_biases <= changed(before, model)


@pytest.mark.parametrize("bits", BITS)
def test_quantized_layer_gradients_match_its_dequantized_weights(bits):
    _, _, model, _ = build(quantized_recipe("bert", bits))
    layer = next(iter(quantized_modules(model).values()))
    layer.train()
    layer.bias.requires_grad_(True)
    x = torch.randn(3, 5, layer.in_features, device=layer.weight.device, requires_grad=True)
    out = layer(x)
    g = torch.randn_like(out)
    (out * g).sum().backward()
    weight = dequantized_weight(layer)  # (out, in)
    ref = F.linear(x.detach(), weight, layer.bias.detach())
    # LLM.int8 on a GPU rounds the activations to 8 bits too; elsewhere the weight alone is rounded
    int8_activations = bits == "8bit" and layer.weight.device.type == "cuda"
    atol = 0.02 * ref.abs().max().item() if int8_activations else 1e-4
    assert torch.allclose(out, ref, atol=atol)
    assert torch.allclose(x.grad, g @ weight, atol=1e-4)
    assert torch.allclose(layer.bias.grad, g.sum((0, 1)), atol=1e-4)


def test_8bit_training_keeps_no_activations():
    """bitsandbytes' 8-bit matmuls keep their input outside saved-tensor hooks, beyond the reach of
    gradient checkpointing; a frozen 8-bit layer's backward needs none of it, and peftx keeps none."""
    _, _, model, _ = build(quantized_recipe("bert", "8bit"))
    layer = next(iter(quantized_modules(model).values()))
    layer.train()
    x = torch.randn(2, 3, layer.in_features, device=layer.weight.device, requires_grad=True)
    h = x * 2
    out = layer(h)
    kept = weakref.ref(h)
    del h
    assert kept() is None
    out.sum().backward()
    expected = 2 * dequantized_weight(layer).sum(0).expand_as(x)
    assert torch.allclose(x.grad, expected, atol=1e-4)


def test_4bit_cpu_repacking_cannot_break_training():
    """bitsandbytes repacks 4-bit weights for AVX512-BF16 CPUs on the first eval forward without grad;
    training afterwards then runs a kernel without a backward (DESIGN.md). peftx turns the repacking off
    on every CPU, and `prepare_quantized` undoes it where it happened anyway."""
    raw = quantized_recipe("bert", "4bit")
    raw["model"]["config_overrides"].update(hidden_size=64, intermediate_size=128)  # >= one 64-weight block
    raw["model"]["head_dropout"] = 0.0
    _, _, model, split = build(raw)
    modules = quantized_modules(model).values()
    if next(iter(modules)).weight.device.type != "cpu":
        pytest.skip("the repacking is bitsandbytes' CPU path; this body was quantized onto a GPU")
    assert all(m.support_avx512bf16_for_cpu is False for m in modules)
    batch = split.collate(list(range(16)))
    y = batch.pop("labels")
    loss0, grads0 = grads(model, batch, y)
    eval_forward(model, batch)
    assert packed(model) == 0
    grads_after_eval = grads(model, batch, y)[1]
    assert grads_after_eval.keys() == grads0.keys()
    assert all(torch.equal(g, grads0[name]) for name, g in grads_after_eval.items())

    for m in modules:  # what bitsandbytes does on a CPU with AVX512-BF16
        m.support_avx512bf16_for_cpu = True
    eval_forward(model, batch)
    assert packed(model) == len(modules)
    prepare_quantized(model)
    assert packed(model) == 0 and all(m.support_avx512bf16_for_cpu is False for m in modules)
    loss1, grads1 = grads(model, batch, y)
    assert loss1 == pytest.approx(loss0, rel=1e-4)  # the packed layout keeps its scales in bf16
    for name, g in grads1.items():
        assert torch.allclose(g, grads0[name], rtol=1e-2, atol=1e-3), name


def test_budget_of_quantized_model_equals_unquantized(family):
    plain = model_budget(build(tiny_recipe(family))[2]).to_dict()
    for bits in BITS:  # parameters are counted by what they stand for, 4-bit packing included
        assert model_budget(build(quantized_recipe(family, bits))[2]).to_dict() == plain, bits
        assert recipe_budget(validate_recipe(quantized_recipe(family, bits))).to_dict() == plain, bits


def test_4bit_options_reach_the_layers():
    raw = quantized_recipe("bert", "4bit")
    raw["model"].update(quant_type="fp4", double_quant=False, compute_dtype="bfloat16")
    _, _, model, split = build(raw)
    for layer in quantized_modules(model).values():
        state = layer.weight.quant_state
        assert (state.quant_type, state.nested, layer.compute_dtype) == ("fp4", False, torch.bfloat16)
    assert train_steps(model, split, 1)  # bf16 compute on a tiny model: fine even where bf16 is slow


@pytest.mark.parametrize(
    "change, message",
    [
        (
            lambda r: r["method"].update(train_roles=["attention"]),
            r"method\.train_roles: \['attention'\] are quantized",
        ),
        (lambda r: r["model"].update(quantization="8bit", quant_type="fp4"), r"model: quant_type applies to .*4bit"),
        (lambda r: r["model"].update(quantization="none", compute_dtype="bfloat16"), r"model: compute_dtype applies"),
    ],
)
def test_recipe_refuses_training_quantized_weights(change, message):
    raw = quantized_recipe("bert", "8bit")
    change(raw)
    with pytest.raises(PeftxError, match=message):
        validate_recipe(raw, "r.yaml")


@pytest.mark.parametrize("method", [{"name": "full"}, {"name": "layers", "top": 1}])
def test_method_that_trains_the_body_is_refused_with_a_quantized_body(method):
    name = method["name"]
    with pytest.raises(PeftxError, match=rf"^r\.yaml: method\.name: '{name}' trains the body's weights, .*8bit") as e:
        validate_recipe(quantized_recipe("bert", "8bit", method=method), "r.yaml")
    assert "\n" not in str(e.value)
    validate_recipe(tiny_recipe("bert", method=method), "r.yaml")  # unquantized: fine


class _TrainsAttention(MethodConfig):
    name: Literal["attention_only"] = "attention_only"

    def trains(self, info: ParamInfo) -> bool:
        return info.role == "attention"


def test_applying_a_method_that_would_train_quantized_weights_fails_clearly():
    recipe, _, model, _ = build(quantized_recipe("bert", "8bit"))
    with pytest.raises(PeftxError, match=r"method\.name: 'attention_only' would train \d+ quantized weight"):
        apply_method(model, _TrainsAttention(), recipe.input.trained_roles())


@pytest.mark.gpu
@pytest.mark.parametrize("bits", BITS)
def test_lora_on_quantized_body_on_gpu(tmp_path, bits):
    from peftx.runs.run import run

    raw = quantized_recipe("bert", bits, tmp_path)
    raw["train"].update(optimizer="paged_adamw8bit", gradient_checkpointing=True)
    result = run(validate_recipe(raw)).result
    assert result["status"] == "completed"
    assert result["memory"]["peak_cuda_allocated_bytes"] > 0
    assert len(result["history"]) == 2  # train -> eval -> train -> eval


@pytest.mark.parametrize("bits", BITS)
def test_dequantize_then_quantize_round_trips(bits):
    # how a quantized from-scratch body is saved (dequantized) and reloaded (quantized again)
    _, _, model, split = build(quantized_recipe("gpt2", bits))
    train_steps(model, split, 1)  # after a forward, 8-bit scales live in the layer's matmul state
    layers = quantized_modules(model)
    codes = {n: m.weight.data.clone() for n, m in layers.items()}
    dense = {n: dequantized_weight(m) for n, m in layers.items()}
    for n, m in layers.items():
        set_quantized_weight(m, dense[n])
        assert torch.equal(m.weight.data, codes[n]), n
        assert torch.allclose(dequantized_weight(m), dense[n], rtol=0, atol=0 if bits == "8bit" else 1e-3), n
