"""The llama family's other architectures, tiny Qwen2 (biases on q/k/v) and Mistral: every method trains
exactly the intended parameters and moves the logits, on 8-bit and 4-bit bodies too, in bf16, exports to
plain peft, and is counted on the meta device as built. The tiny Llama itself is in the family x method
x precision tables (`tests.support.tiny.FAMILY_NAMES`). Prefix tuning reaches every attention layer
through grouped-query attention, and `peftx budget` counts the real checkpoints' sizes."""

from __future__ import annotations

import copy
import json
import math
from pathlib import Path

import pytest
import torch
from transformers import AutoConfig, AutoModel

import peftx.model
from peftx.export.exporter import export_run
from peftx.model.quantization import is_quantized
from peftx.recipe import validate_recipe
from peftx.runs.run import run
from peftx.studies.budget import budget_command
from peftx.training.builder import recipe_budget
from peftx.training.evaluation import infer
from peftx.training.session import make_accelerator
from tests.export.test_export import assert_same_logits
from tests.model.test_budget import real_budget
from tests.model.test_loading import LLAMA_SIZES
from tests.support.helpers import build, changed, fixed_logits, snapshot, train_steps
from tests.support.tiny import LLAMA_SHAPED, tiny_recipe

CONFIGS = Path(peftx.model.__file__).parent / "configs"
ARCHS = [a for a in LLAMA_SHAPED if a != "llama"]  # llama: in the tables over FAMILY_NAMES
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


@pytest.mark.parametrize("arch", ARCHS)
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


@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("method", [{"name": "lora", "r": 2}, {"name": "ia3"}])
def test_lora_and_ia3_export_and_reload_in_plain_peft(tmp_path, arch, method):

    raw = llama_recipe(arch, method)
    raw["output"] = {"dir": str(tmp_path / "runs")}
    run_dir = run(validate_recipe(raw)).run_dir
    out = export_run(run_dir, tmp_path / "export")
    assert out.adapter and out.base is None  # from scratch: the body travels
    assert_same_logits(run_dir, out.out_dir)


@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("case", ["lora", "ia3", "prefix", "full", "bitfit"])
def test_meta_budget_equals_counting_the_real_model(arch, case):

    recipe = validate_recipe(llama_recipe(arch, CASES[case]))
    real, model = real_budget(recipe)
    assert real.trainable == sum(p.numel() for p in model.parameters() if p.requires_grad)
    assert recipe_budget(recipe) == real


@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("bits", ["8bit", "4bit"])
def test_lora_trains_on_a_quantized_body_through_eval(arch, bits):
    method = {"name": "lora", "r": 2, "train_roles": ["bias"] if arch == "qwen2" else []}
    _, _, model, split = build(llama_recipe(arch, method, quantization=bits))
    infos = model.param_infos()
    quantized = {n for n, p in model.named_parameters() if is_quantized(p)}
    assert quantized and all(infos[n].role in ("attention", "feed_forward") for n in quantized)
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    biases = {n for n in trainable if infos[n].is_bias and infos[n].group == "body"}
    assert trainable == {n for n, i in infos.items() if i.role in ("adapter", "head")} | biases
    assert len(biases) == (3 * 2 if arch == "qwen2" else 0)  # Qwen2: q, k, v in both layers
    before = snapshot(model)
    losses = train_steps(model, split, 1)
    infer(model, split, 128, make_accelerator("fp32"))  # an eval forward under inference_mode
    losses += train_steps(model, split, 1)
    assert all(math.isfinite(x) for x in losses)
    moved = changed(before, model)
    assert moved <= trainable and biases <= moved and any(infos[n].role == "adapter" for n in moved)


# `peftx budget`'s names for the standard configs shipped in peftx/model/configs/
SHIPPED = {
    "smollm2-135m": "SmolLM2-135M",
    "smollm2-360m": "SmolLM2-360M",
    "qwen2.5-0.5b": "Qwen2.5-0.5B",
    "llama-3.2-1b": "Llama-3.2-1B",
    "llama-3.1-8b": "Llama-3.1-8B",
}


def test_budget_command_counts_what_transformers_builds_from_the_shipped_configs():
    """`peftx budget --models smollm2-135m,qwen2.5-0.5b,llama-3.2-1b --methods lora,ia3,prefix,full` (and
    SmolLM2-360M, Llama-3.1-8B): each row equals transformers' own model, built from the shipped config
    on the meta device, plus the head and what the method adds, counted from that model's layers."""
    out = budget_command(models=list(SHIPPED), methods=["lora", "ia3", "prefix", "full"], fmt="json", use_cache=False)
    rows = {(r["model"], r["method"]): r["budget"] for r in json.loads(out.text)["rows"]}
    assert len(rows) == 4 * len(SHIPPED)
    for name, file in SHIPPED.items():
        fields = json.loads((CONFIGS / f"{file}.json").read_text())
        config = AutoConfig.for_model(**fields)
        with torch.device("meta"):
            body = AutoModel.from_config(config)
        count = sum(p.numel() for p in body.parameters())
        assert count == LLAMA_SIZES[name]  # the published size of the checkpoint
        linear = {n.rsplit(".", 1)[-1]: m for n, m in body.named_modules() if isinstance(m, torch.nn.Linear)}
        per_layer = {n: (m.in_features, m.out_features) for n, m in linear.items()}  # the same in every layer
        layers, head = config.num_hidden_layers, config.hidden_size * 10 + 10  # ListOps: 10 classes
        kv_width = config.num_key_value_heads * (config.hidden_size // config.num_attention_heads)
        added = {
            "lora": layers * sum(8 * (i + o) for i, o in per_layer.values()),  # r=8 on every projection
            "ia3": layers * (per_layer["k_proj"][1] + per_layer["v_proj"][1] + per_layer["down_proj"][0]),
            "prefix": layers * 2 * 16 * kv_width,  # keys and values, 16 positions, the key-value heads
            "full": 0,
        }
        for method, extra in added.items():
            budget = rows[name, method]
            assert budget["total"] == count + head + extra, (name, method)
            assert budget["trainable"] == (count + head if method == "full" else head + extra), (name, method)


@pytest.mark.parametrize("arch", ARCHS)
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
