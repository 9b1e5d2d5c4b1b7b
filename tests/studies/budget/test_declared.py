"""Budgets from declared shapes equal the meta-device count, parameter by parameter and field by field,
for every family and method of the default table (and the knob values a target search visits), so the
fast count and the built model cannot drift apart."""

from __future__ import annotations

import json

import pytest

from peftx.methods import METHODS
from peftx.model.sources import CONFIG_DIR, STANDARD_CONFIGS
from peftx.recipe import validate_recipe
from peftx.studies.budget.declared import DeclaredCounter, declared_budget
from peftx.studies.budget.table import DEFAULT_METHODS, DEFAULT_MODELS
from peftx.training.builder import MetaCounter

# One source per shipped configuration file (aliases name the same file).
SHIPPED = sorted({file: source for source, file in sorted(STANDARD_CONFIGS.items())}.values())
# Settings beyond each method's defaults: the knob values a target search visits, and the options that
# change what a method adds (DoRA, other targets, the prefix MLP, extra trained roles).
VARIANTS = [
    {"name": "lora", "r": 1},
    {"name": "lora", "r": 5, "use_dora": True, "targets": ["key_value", "feed_forward_out"]},
    {"name": "prefix", "length": 3, "reparam_hidden": 7},
    {"name": "prompt", "length": 7, "init": "random"},
    {"name": "ia3", "targets": ["attention", "feed_forward"]},
    {"name": "frozen", "preset": "ln_only", "train_roles": ["bias", "position_embedding"]},
    {"name": "layers", "top": 2},
    {"name": "layers", "layers": [0, -1]},
    {"name": "lora", "train_roles": ["layer_norm"]},
]


def recipe(source: str, **sections):
    raw = {"model": {"source": source}, "task": {"name": "listops"}, "method": {"name": "frozen"}}
    return validate_recipe(raw | {"train": {"steps": 10}} | sections)


def counters(source: str, **sections) -> tuple[MetaCounter, DeclaredCounter]:
    r = recipe(source, **sections)
    declared = DeclaredCounter.of(r)
    assert declared is not None, f"{source}: declared shapes should cover this recipe"
    return MetaCounter(r), declared


@pytest.mark.parametrize("source", SHIPPED)
def test_declared_shapes_are_the_built_backbone(source):
    """Names (in order), shapes, attention heads and full-precision modules of every shipped config."""
    meta, _ = counters(source)
    declared = meta.family.declare(json.loads((CONFIG_DIR / STANDARD_CONFIGS[source]).read_text()))
    backbone = meta.base.backbone
    built = {}
    for name, p in backbone.named_parameters():
        module = backbone.get_submodule(name.rpartition(".")[0])
        stored_in_out = type(module).__name__ == "Conv1D"  # GPT-2 stores (in, out)
        built[name] = tuple(p.shape)[::-1] if stored_in_out and name.endswith(".weight") else tuple(p.shape)
    assert list(built) == list(declared.params) and built == declared.params
    heads = {n: meta.family.attention_shape(m) for n, m in backbone.named_modules() if n in declared.attention}
    assert heads == declared.attention and len(heads) == len(declared.attention)
    assert set(getattr(backbone, "_keep_in_fp32_modules", None) or ()) == set(declared.keep_fp32)


@pytest.mark.parametrize("source", DEFAULT_MODELS)
def test_default_table_counts_equal_the_meta_count(source):
    meta, declared = counters(source)
    for spec in [{"name": m} for m in DEFAULT_METHODS] + VARIANTS:
        cls = METHODS.get(spec["name"])
        knob = cls.budget_knob
        if knob is not None and knob.default is not None and set(spec) == {"name"}:
            spec = spec | {knob.field: knob.default}  # as the table names it (layers: top=1)
        method = cls.model_validate(spec)
        assert declared.count(method).to_dict() == meta.count(method).to_dict(), (source, spec)
    for method in (METHODS.get("layers").model_validate({"top": 1}), METHODS.get("prompt").model_validate({})):
        assert method.knob_limit(declared.base) == method.knob_limit(meta.base)


DIGITS = {"name": "vision", "dataset": "digits"}
OTHER_SECTIONS = [
    ("gpt2", {"input": {"name": "learned"}}),
    ("facebook/bart-base", {"input": {"name": "learned_from_vocab"}}),
    ("facebook/bart-base", {"model": {"source": "facebook/bart-base", "pooling": "encoder_mean"}}),
    ("t5-small", {"model": {"source": "t5-small", "pooling": "encoder_mean"}}),
    ("offline", {"task": DIGITS, "input": {"name": "linear", "framing": "learned"}}),
    ("gpt2", {"task": DIGITS, "input": {"name": "linear"}}),
    ("offline", {"task": DIGITS | {"mode": "pixels", "greyscale": True}, "input": {"name": "pixel_vocab"}}),
]


@pytest.mark.parametrize(("source", "sections"), OTHER_SECTIONS)
def test_inputs_tasks_and_poolings_count_as_built(source, sections):
    meta, declared = counters(source, **sections)
    for spec in ({"name": "prefix"}, {"name": "layers", "top": 3}, {"name": "frozen"}, {"name": "full"}):
        method = METHODS.get(spec["name"]).model_validate(spec)
        assert declared.count(method).to_dict() == meta.count(method).to_dict(), (source, sections, spec)


@pytest.mark.parametrize(
    "sections",
    [
        {"model": {"source": "gpt2", "config_overrides": {"n_layer": 2}}},  # shapes differ from the file
        {"model": {"source": "gpt2", "quantization": "8bit"}},
        {"model": {"source": "gpt2"}, "method": {"name": "peft", "tuner": "loha"}},  # no formula here
    ],
)
def test_what_declared_shapes_do_not_cover_is_counted_on_the_meta_device(sections):
    assert declared_budget(recipe("gpt2", **sections)) is None
