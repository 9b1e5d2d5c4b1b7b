"""The one counter: meta-device budgets equal counting the real model (every family x every method,
input layers, the offline MiniLM, quantized weights), memory estimates, and the method knobs."""

from __future__ import annotations

import importlib.util

import pytest
import torch

from peftx.methods import METHODS
from peftx.recipe import validate_recipe
from peftx.studies.budget import MEMORY_SCHEMES, Budget, memory, model_budget
from peftx.training.builder import MetaCounter, build_model, recipe_budget
from tests.model.test_loading import HAS_OFFLINE
from tests.support.tiny import tiny_recipe

METHOD_CASES = {
    "full": {"name": "full"},
    "lora": {"name": "lora", "r": 3},
    "prefix": {"name": "prefix", "length": 3},
    "prompt": {"name": "prompt", "length": 5},
    "ia3": {"name": "ia3"},
    "bitfit": {"name": "bitfit"},
    "frozen": {"name": "frozen"},
    "layers": {"name": "layers", "top": 1},
    "peft": {"name": "peft", "tuner": "vera", "config": {"r": 4}},  # VeRA: one tuner peft has for every family
}
# other settings that change what a method adds or trains, on one family each
VARIANTS = {
    "prefix_mlp_t5": ("t5", {"method": {"name": "prefix", "length": 2, "reparam_hidden": 8}}),
    "prefix_encoder_only_bart": ("bart", {"method": {"name": "prefix", "length": 2}, "pooling": "encoder_mean"}),
    "dora_with_layer_norms": (
        "gpt2",
        {"method": {"name": "lora", "r": 2, "use_dora": True, "train_roles": ["layer_norm"]}},
    ),
    "layers_by_index_t5": ("t5", {"method": {"name": "layers", "layers": [0, -1]}}),
    "learned_input_trained": (
        "bert",
        {"method": {"name": "frozen", "preset": "head_only"}, "input": {"name": "learned"}},
    ),
    "linear_input_vision": (
        "bart",
        {
            "method": {"name": "lora", "r": 2},
            "input": {"name": "linear"},
            "task": {"name": "vision", "dataset": "digits", "patch": 2},
        },
    ),
}


def real_budget(recipe) -> tuple[Budget, torch.nn.Module]:
    model, _ = build_model(recipe, recipe.task.describe())
    return model_budget(model), model


def recipe_of(family: str, method: dict, **extra) -> object:
    raw = tiny_recipe(family, method=method)
    if "pooling" in extra:
        raw["model"]["pooling"] = extra.pop("pooling")
    raw.update(extra)
    return validate_recipe(raw)


@pytest.mark.parametrize("method", METHOD_CASES)
def test_meta_budget_equals_counting_the_real_model(family, method):
    recipe = recipe_of(family, METHOD_CASES[method])
    real, model = real_budget(recipe)
    params = list(model.parameters())
    assert real.total == sum(p.numel() for p in params)
    assert real.trainable == sum(p.numel() for p in params if p.requires_grad)
    assert recipe_budget(recipe) == real  # every field: total, trainable, by role, by group, quantizable


@pytest.mark.parametrize("case", VARIANTS)
def test_meta_budget_equals_real_for_other_settings(case):
    family, sections = VARIANTS[case]
    recipe = recipe_of(family, **sections)
    assert recipe_budget(recipe) == real_budget(recipe)[0]


def test_one_meta_counter_serves_every_method_of_a_model(family):
    """Methods that add no modules share one built model; the counts stay those of fresh models."""
    counter = MetaCounter(recipe_of(family, {"name": "full"}))
    for method in ("layers", "bitfit", "lora", "frozen", "full", "prompt", "bitfit"):
        recipe = recipe_of(family, METHOD_CASES[method])
        assert counter.count(recipe.method) == recipe_budget(recipe), method


def test_meta_model_has_no_storage_and_ties_shared_embeddings():
    recipe = validate_recipe(tiny_recipe("t5", method={"name": "full"}) | {"model": {"source": "t5-base"}})
    counter = MetaCounter(recipe)
    model = counter.model(recipe.method)
    assert all(p.is_meta for p in model.parameters())
    assert model.backbone.encoder.embed_tokens.weight is model.backbone.shared.weight
    assert counter.count(recipe.method).total == 222_903_552 + 768 * 10 + 10  # T5Model of t5-base + head


@pytest.mark.skipif(not HAS_OFFLINE, reason="offline model package not installed")
@pytest.mark.parametrize("method", ["lora", "prompt", "layers"])
def test_meta_budget_equals_the_real_pretrained_offline_model(method):
    recipe = recipe_of("bert", METHOD_CASES[method], model={"source": "offline"})
    real, model = real_budget(recipe)
    assert model.backbone.embeddings.word_embeddings.weight.device.type == "cpu"
    assert recipe_budget(recipe) == real
    assert real.total - real.by_group["head"]["trainable"] - real.by_group.get("adapter", {}).get("trainable", 0) == (
        22_565_376
    )


@pytest.mark.skipif(importlib.util.find_spec("bitsandbytes") is None, reason="bitsandbytes not installed")
@pytest.mark.parametrize("bits", [4, 8])
def test_quantized_weights_count_as_parameters_not_bytes(bits):
    import bitsandbytes as bnb

    recipe = recipe_of("bert", {"name": "prompt", "length": 2})
    before, model = real_budget(recipe)
    linears = [(n, m) for n, m in model.backbone.named_modules() if type(m) is torch.nn.Linear]
    for name, lin in linears:
        parent, _, attr = name.rpartition(".")
        if bits == 4:
            q = bnb.nn.Linear4bit(lin.in_features, lin.out_features, compute_dtype=torch.float32)
        else:
            q = bnb.nn.Linear8bitLt(lin.in_features, lin.out_features, has_fp16_weights=False)
        q.load_state_dict(lin.state_dict())
        setattr(model.backbone.get_submodule(parent), attr, q.to("cpu"))  # quantizes here
        q.weight.requires_grad_(False)
        q.bias.requires_grad_(False)
    packed = model.backbone.encoder.layer[0].attention.self.query.weight
    assert (packed.numel() < 32 * 32) == (bits == 4)  # 4-bit weights are packed two to a byte
    assert model_budget(model) == before == recipe_budget(recipe)
    assert before.quantizable == sum(lin.weight.numel() for _, lin in linears)


def test_memory_estimates_follow_the_documented_formulas():
    b = Budget(total=1000, trainable=100, quantizable=600)
    assert memory(b, MEMORY_SCHEMES["fp32"]) == {"weights": 4000, "gradients": 400, "optimizer": 800, "total": 5200}
    assert memory(b, MEMORY_SCHEMES["bf16"])["total"] == 2000 + 200 + 400
    assert memory(b, MEMORY_SCHEMES["int8_weights"])["weights"] == 600 * 1 + 400 * 2
    assert memory(b, MEMORY_SCHEMES["adamw_8bit"])["optimizer"] == 200


def test_budget_round_trips_through_its_dict():
    b = recipe_budget(recipe_of("gpt2", METHOD_CASES["lora"]))
    assert Budget.from_dict(b.to_dict()) == b


def test_methods_declare_their_budget_knobs():
    knobs = {name: (k.field if (k := METHODS.get(name).budget_knob) else None) for name in METHODS.names()}
    assert knobs == {
        "bitfit": None,
        "frozen": None,
        "full": None,
        "ia3": None,
        "layers": "top",
        "lora": "r",
        "peft": None,
        "prefix": "length",
        "prompt": "length",
    }


def test_knob_limits_follow_the_model():
    bert = MetaCounter(recipe_of("bert", {"name": "full"})).base  # 2 layers, 128 positions
    t5 = MetaCounter(recipe_of("t5", {"name": "full"})).base  # 2 + 2 layers, unbounded positions
    layers = recipe_of("bert", {"name": "layers", "layers": [0]}).method
    prompt = recipe_of("bert", {"name": "prompt"}).method
    assert layers.knob_limit(bert) == 2 and layers.knob_limit(t5) == 4
    assert prompt.knob_limit(bert) == 64 and prompt.knob_limit(t5) == prompt.budget_knob.high
    assert layers.with_knob(2).top == 2 and layers.with_knob(2).layers is None


def test_t5_feed_forward_output_is_not_counted_as_quantizable():
    # transformers keeps T5's `wo` in full precision under bitsandbytes (`_keep_in_fp32_modules`)
    budget, model = real_budget(recipe_of("t5", {"name": "prompt", "length": 2}))
    linears = {n: m for n, m in model.backbone.named_modules() if type(m) is torch.nn.Linear}
    wo = sum(m.weight.numel() for n, m in linears.items() if n.endswith(".wo"))
    assert wo > 0
    assert budget.quantizable == sum(m.weight.numel() for m in linears.values()) - wo
