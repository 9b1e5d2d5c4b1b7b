"""Input adapters on every family: shapes, trainability, budget role, save -> reload, what they
export, errors, and third-party adapters found through the `peftx.inputs` entry point group."""

from __future__ import annotations

import sys
import textwrap

import pytest
import torch
from accelerate.utils import set_seed
from torch import nn

from peftx.errors import PeftxError
from peftx.export import template
from peftx.inputs import INPUTS, InputContext, exported_input
from peftx.recipe import validate_recipe
from peftx.runs.task_file import task_description
from peftx.runs.weights import load_weights, save_weights
from peftx.spec.input_spec import ContinuousSpec, SymbolVocab
from peftx.studies.budget import model_budget
from peftx.training.batching import BOS, VALUE
from peftx.training.builder import build_model
from tests.support.helpers import build, changed, snapshot, train_steps
from tests.support.tiny import FAMILY_NAMES, tiny_recipe

LISTOPS = {"name": "listops", "preset": "tiny"}
PATCHES = {"name": "vision", "dataset": "digits", "patch": 2, "n_train": 256, "n_test": 64, "n_val": 64}
PIXELS = {**PATCHES, "mode": "pixels"}
# adapter section -> (task, parameters the adapter itself adds per hidden unit, role it trains)
CASES = {
    "learned": ({"name": "learned"}, LISTOPS, 3 + 15, "input"),
    "learned_from_vocab": ({"name": "learned_from_vocab"}, LISTOPS, 3 + 15, "input"),
    "linear": ({"name": "linear"}, PATCHES, 4 + 1, "input"),
    "pixel_vocab": ({"name": "pixel_vocab", "levels": 16}, PIXELS, 0, None),
    # the other settings of each option, on one family
    "learned_frozen": ({"name": "learned", "trainable": False}, LISTOPS, 3 + 15, None),
    "linear_learned_framing": ({"name": "linear", "framing": "learned", "trainable": False}, PATCHES, 4 + 1 + 3, None),
    "pixel_vocab_trained": ({"name": "pixel_vocab", "levels": 16, "trainable": True}, PIXELS, 0, "token_embedding"),
}
ALL_FAMILIES = ("learned", "learned_from_vocab", "linear", "pixel_vocab")
TABLE = [(c, f) for c in CASES for f in (FAMILY_NAMES if c in ALL_FAMILIES else ("bert",))]


def recipe_for(case: str, family: str, tmp_path=None) -> dict:
    section, task, _, _ = CASES[case]
    return tiny_recipe(family, tmp_path, input=dict(section), task=dict(task))


@pytest.mark.parametrize("case, family", TABLE)
def test_adapter_shapes_trainability_budget_and_reload(tmp_path, case, family):
    _, _, own, role = CASES[case]
    _, _, model, split = build(recipe_for(case, family))
    hidden = model.family.hidden_size(model.backbone.config)
    batch = split.collate(list(range(6)))
    labels = batch.pop("labels")
    embeds = model.input(batch)
    assert embeds.shape == (*batch["input_ids"].shape, hidden)
    assert model(**batch).shape == (6, 10)

    infos = model.param_infos()
    budget = model_budget(model).by_role
    assert budget.get("input", {"trainable": 0, "frozen": 0}) == {
        "trainable": own * hidden if role == "input" else 0,
        "frozen": own * hidden if role != "input" else 0,
    }
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert {infos[n].role for n in trainable} == {"adapter", "head"} | ({role} if role else set())

    before = snapshot(model)
    train_steps(model, split, 2)
    moved = {infos[n].role for n in changed(before, model)}
    assert moved <= {"adapter", "head", role} and ((role in moved) if role else True)

    # save -> rebuild under another seed -> load: the same predictions, so everything random was saved
    model.eval()
    with torch.no_grad():
        expected = model(**batch)
    save_weights(model, tmp_path, whole_backbone=True)
    recipe = validate_recipe(recipe_for(case, family))
    set_seed(1234)
    again, _ = build_model(recipe, recipe.task.describe())
    load_weights(again, tmp_path)
    again.eval()
    with torch.no_grad():
        assert torch.allclose(again(**batch), expected, atol=1e-6)
    assert labels.shape == (6,)


# adapter case -> the kind of layer it exports as (pretrained_vocab: the recipes' default input)
EXPORT_KINDS = {
    "pretrained_vocab": "table",
    "learned": "table",
    "learned_from_vocab": "table",
    "linear": "linear",
    "linear_learned_framing": "linear",
    "pixel_vocab": "intensity_bins",
}


@pytest.mark.parametrize("case", list(EXPORT_KINDS))
def test_what_an_adapter_exports_the_template_rebuilds_exactly(case):
    """Each built-in adapter's export, rebuilt by the exported template's layer of its kind (plain
    torch, no peftx), embeds a batch exactly as the adapter does."""
    raw = tiny_recipe("bert") if case == "pretrained_vocab" else recipe_for(case, "bert")
    _, task, model, split = build(raw)
    batch = split.collate(list(range(6)))
    with torch.no_grad():
        exported = exported_input(model.input, task.info.input_spec)
        assert exported.kind == EXPORT_KINDS[case]
        index = task_description(task.info, model)["index_space"]
        layer = template.INPUT_KINDS[exported.kind](exported.tensors, exported.settings, index)
        assert torch.equal(layer(batch["input_ids"], batch.get("values")), model.input(batch))


class IndexTimesTwo(nn.Module):
    """A layer that says nothing about its export: index i -> a vector filled with 2i."""

    def forward(self, batch):
        return batch["input_ids"].float().unsqueeze(-1).expand(-1, -1, 4) * 2  # (batch, seq, 4)


def test_a_layer_that_declares_no_export():
    """On symbols it exports as the table of its output for every index; on vectors it cannot."""
    exported = exported_input(IndexTimesTwo(), SymbolVocab(symbols=("a", "b"), version="t"))
    assert exported.kind == "table" and not exported.settings
    assert torch.equal(exported.tensors["table"], torch.arange(5.0).unsqueeze(-1).expand(5, 4) * 2)
    with pytest.raises(PeftxError, match="input: IndexTimesTwo has no plain export"):
        exported_input(IndexTimesTwo(), ContinuousSpec(dim=3))


def context(model, spec) -> InputContext:
    return InputContext(
        family=model.family,
        backbone=model.backbone,
        tokenizer=None,
        specials=model.specials,
        spec=spec,
        hidden_size=model.family.hidden_size(model.backbone.config),
    )


def test_learned_from_vocab_starts_where_pretrained_vocab_is(family):
    _, task, model, split = build(tiny_recipe(family))  # pretrained_vocab
    batch = split.collate(list(range(4)))
    fresh = INPUTS.get("learned_from_vocab")().build(context(model, task.info.input_spec))
    with torch.no_grad():
        assert torch.equal(fresh(batch), model.input(batch))
    assert all(p.requires_grad for p in fresh.parameters())  # its own table, apart from the backbone's


def test_linear_frames_with_the_models_own_special_tokens():
    _, _, model, split = build(recipe_for("linear", "bert"))
    batch = split.collate([0, 1])
    assert batch["input_ids"][0, 0] == BOS and (batch["input_ids"][0, 1:17] == VALUE).all()
    assert batch["values"].shape == (2, 24, 4) and batch["values"].max() <= 1.0
    with torch.no_grad():
        embeds = model.input(batch)
        cls = model.backbone.get_input_embeddings().weight[model.specials.bos]
    assert torch.equal(embeds[0, 0], cls) and torch.equal(embeds[1, 0], cls)


def test_pixel_vocab_maps_intensities_to_number_tokens():
    """With the offline MiniLM and 256 levels, pixel value v is embedded as the token "v"."""
    from peftx.model.sources import offline_model_dir

    try:
        offline_model_dir()
    except PeftxError:
        pytest.skip("offline model package not installed")
    raw = tiny_recipe("bert", input={"name": "pixel_vocab"}, task=dict(PIXELS))
    raw["model"] = {"source": "offline"}
    recipe = validate_recipe(raw)
    model, _ = build_model(recipe, recipe.task.describe())
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(offline_model_dir())
    values = torch.tensor([[[0.0], [0.0], [128 / 255], [1.0], [0.0]]])
    ids = torch.tensor([[BOS, VALUE, VALUE, VALUE, 2]])
    with torch.no_grad():
        out = model.input({"input_ids": ids, "values": values, "attention_mask": torch.ones_like(ids)})
    table = model.backbone.get_input_embeddings().weight
    for pos, text in ((0, "[CLS]"), (1, "0"), (2, "128"), (3, "255"), (4, "[SEP]")):
        assert torch.equal(out[0, pos], table[tok.convert_tokens_to_ids(text)]), text


@pytest.mark.parametrize(
    "section, task, message",
    [
        ({"name": "linear"}, LISTOPS, "linear needs a task with continuous inputs"),
        ({"name": "learned"}, PATCHES, "learned needs a task with discrete symbols"),
        ({"name": "learned_from_vocab"}, PATCHES, "learned_from_vocab needs a task with discrete symbols"),
        ({"name": "pixel_vocab"}, PATCHES, "pixel_vocab needs one intensity per position"),
        ({"name": "pixel_vocab", "levels": 200}, PIXELS, "200 symbols need as many tokens"),
    ],
)
def test_adapter_task_mismatch_is_a_user_error(section, task, message):
    with pytest.raises(PeftxError, match=message):
        build(tiny_recipe("bert", input=section, task=task))


PLUGIN = """
from typing import Literal

import torch
from torch import nn

from peftx.inputs import InputConfig
from peftx.inputs.registry import INPUTS


class Ones(nn.Module):
    def __init__(self, hidden):
        super().__init__()
        self.scale = nn.Parameter(torch.ones(hidden))

    def forward(self, batch):
        return torch.ones(*batch["input_ids"].shape, self.scale.numel()) * self.scale


class OnesConfig(InputConfig):
    name: Literal["toy_ones"] = "toy_ones"
    trainable: bool = True

    def build(self, ctx):
        return Ones(ctx.hidden_size)


INPUTS.register(OnesConfig)
"""


def test_third_party_adapter_found_through_entry_point(tmp_path, monkeypatch):
    (tmp_path / "peftx_toy_ones.py").write_text(textwrap.dedent(PLUGIN))
    dist = tmp_path / "peftx_toy_ones-0.1.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: peftx-toy-ones\nVersion: 0.1\n")
    (dist / "entry_points.txt").write_text("[peftx.inputs]\ntoy_ones = peftx_toy_ones\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setattr(INPUTS, "_entries", dict(INPUTS._entries))  # undone after the test
    monkeypatch.setattr(INPUTS, "_plugins_loaded", False)
    monkeypatch.delitem(sys.modules, "peftx_toy_ones", raising=False)

    assert "toy_ones" in INPUTS.names()
    _, _, model, split = build(tiny_recipe("bert", input={"name": "toy_ones"}))
    assert model_budget(model).by_role["input"] == {"trainable": 32, "frozen": 0}
    batch = split.collate([0, 1])
    batch.pop("labels")
    assert model(**batch).shape == (2, 10)
    monkeypatch.delitem(sys.modules, "peftx_toy_ones")
