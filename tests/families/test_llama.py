"""Every method on the llama family's tiny Llama, Qwen2 and Mistral models: exactly the intended
parameters train, training moves the logits, and prefix tuning reaches every attention layer through
grouped-query attention."""

from __future__ import annotations

import copy
import math

import pytest
import torch

from peftx.export.exporter import export_run
from peftx.recipe import validate_recipe
from peftx.runs.run import run
from peftx.training.builder import recipe_budget
from tests.export.test_export import assert_same_logits
from tests.model.test_budget import real_budget
from tests.support.helpers import build, fixed_logits, snapshot, train_steps
from tests.support.tiny import LLAMA_SHAPED, tiny_recipe

CASES = {
    "full": {"name": "full"},
    "lora": {"name": "lora", "r": 2},
    "frozen": {"name": "frozen"},
    "bitfit": {"name": "bitfit"},
    "ia3": {"name": "ia3"},
    "prefix": {"name": "prefix", "length": 2},
    "prefix_mlp": {"name": "prefix", "length": 2, "reparam_hidden": 8},
    "prompt": {"name": "prompt", "length": 2},
    "layers": {"name": "layers", "top": 1},
}


def llama_recipe(arch: str, method: dict, **extra) -> dict:
    model = {"family": "llama", "pretrained": False, **copy.deepcopy(LLAMA_SHAPED[arch]), **extra}
    return tiny_recipe("bert", model=model, method=method)


def intended(case: str, arch: str, infos: dict) -> set[str]:
    """The parameters each case must train, from the method's definition."""
    has_bias = arch == "qwen2"  # Qwen2's q/k/v biases; Llama and Mistral have none

    def pick(i) -> bool:
        match case:
            case "full":
                return True
            case "lora" | "ia3":
                return i.role == "adapter"
            case "frozen":  # fpt: layer norms, position embeddings (none: rotary) and the input layer
                return i.role in ("layer_norm", "position_embedding", "input")
            case "bitfit":  # no bias at all: the RMSNorm scales instead, as on T5
                return i.group == "body" and (i.is_bias if has_bias else i.role == "layer_norm")
            case "prefix" | "prefix_mlp":
                return i.role == "prefix"
            case "prompt":
                return i.role == "prompt"
            case "layers":
                return i.group == "body" and i.layer == 1

    return {n for n, i in infos.items() if i.role == "head" or pick(i)}


@pytest.mark.parametrize("arch", LLAMA_SHAPED)
@pytest.mark.parametrize("case", CASES)
def test_every_method_trains_the_intended_parameters_and_moves_the_logits(case, arch):
    _, _, model, split = build(llama_recipe(arch, CASES[case]))
    infos = model.param_infos()
    assert {n for n, p in model.named_parameters() if p.requires_grad} == intended(case, arch, infos)
    before_params, before = snapshot(model), fixed_logits(model, split)
    model.train()
    train_steps(model, split, 3, weight_decay=0.0)
    assert not torch.allclose(fixed_logits(model, split), before)
    frozen = {n for n, p in model.named_parameters() if not p.requires_grad}
    assert all(torch.equal(before_params[n], p) for n, p in model.named_parameters() if n in frozen)


@pytest.mark.parametrize("pooling", ["last", "mean"])
def test_prefix_reaches_every_layer_with_grouped_query_attention(pooling):
    _, _, model, split = build(llama_recipe("llama", CASES["prefix"], pooling=pooling))
    prefix = next(m for n, m in model.named_modules() if n.endswith("prefix") or type(m).__name__.startswith("Prefix"))
    shapes = getattr(prefix, "shapes", None)
    assert shapes == [(2, 8), (2, 8)]  # 2 key-value heads of width 8, one site per layer
    base = fixed_logits(model, split)
    with torch.no_grad():
        for p in prefix.parameters():
            p.add_(torch.randn_like(p))
    assert not torch.allclose(fixed_logits(model, split), base)


@pytest.mark.parametrize("arch", LLAMA_SHAPED)
@pytest.mark.parametrize("method", [{"name": "lora", "r": 2}, {"name": "ia3"}])
def test_lora_and_ia3_export_and_reload_in_plain_peft(tmp_path, arch, method):

    raw = llama_recipe(arch, method)
    raw["output"] = {"dir": str(tmp_path / "runs")}
    run_dir = run(validate_recipe(raw)).run_dir
    out = export_run(run_dir, tmp_path / "export")
    assert out.adapter and out.base is None  # from scratch: the body travels
    assert_same_logits(run_dir, out.out_dir)


@pytest.mark.parametrize("arch", LLAMA_SHAPED)
@pytest.mark.parametrize("case", ["lora", "ia3", "prefix", "full", "bitfit"])
def test_meta_budget_equals_counting_the_real_model(arch, case):

    recipe = validate_recipe(llama_recipe(arch, CASES[case]))
    real, model = real_budget(recipe)
    assert real.trainable == sum(p.numel() for p in model.parameters() if p.requires_grad)
    assert recipe_budget(recipe) == real


@pytest.mark.parametrize(
    "source, body",
    [("smollm2-135m", 134_515_008), ("qwen2.5-0.5b", 494_032_768), ("llama-3.2-1b", 1_235_814_400)],
)
def test_budget_of_the_standard_configs_counts_the_real_models(source, body):

    raw = tiny_recipe("bert", method={"name": "full"})
    raw["model"] = {"family": "llama", "source": source, "pretrained": False}
    budget = recipe_budget(validate_recipe(raw))
    assert budget.total - budget.by_group["head"]["trainable"] == body  # the published parameter counts


@pytest.mark.parametrize("arch", LLAMA_SHAPED)
def test_lora_trains_in_bf16_with_frozen_weights_stored_in_bf16(tmp_path, arch):
    """`precision: auto` picks bf16 where the hardware has it (GPUs, AVX512-BF16 and AMX CPUs): the
    llama family trains there with a bf16 frozen body, finite losses and fp32 trained weights."""
    raw = llama_recipe(arch, CASES["lora"])
    raw["train"] = {**raw["train"], "precision": "bf16", "steps": 4}
    raw["output"] = {"dir": str(tmp_path / "runs")}
    result = run(validate_recipe(raw))
    record = result.record
    assert record.status == "completed" and record.precision == "bf16"
    assert all(math.isfinite(t.loss) for t in record.train_log)
    _, _, model, _ = build(raw)
    dtypes = {p.dtype for n, p in model.named_parameters() if not p.requires_grad and "norm" not in n}
    assert dtypes == {torch.bfloat16}
    assert {p.dtype for p in model.parameters() if p.requires_grad} == {torch.float32}
