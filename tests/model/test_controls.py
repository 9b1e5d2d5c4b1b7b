"""The claims' controls on tiny models of every family: shuffled weights (`model.init: shuffled`), body
ablations (`model.body`), the counter agreeing with the real models, and contradictory recipes refused
in one line."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from peftx.model.ablation import expected_body_parameters, ffn_width
from peftx.model.budget import model_budget
from peftx.model.loading import load_backbone
from peftx.recipe import validate_recipe
from peftx.training.builder import MetaCounter, build_model, recipe_budget
from tests.support.bad_inputs import assert_one_line, invoke, write
from tests.support.helpers import build, changed, on_device, snapshot
from tests.support.tiny import TINY, tiny_model, tiny_recipe

ABLATIONS = ("none", "attention1", "block1")


def _saved_tiny(family: str, path) -> str:
    """A tiny random model of `family` saved as a local directory: a 'pretrained' checkpoint to shuffle."""
    bb = load_backbone(TINY[family]["source"], pretrained=False, overrides=TINY[family]["config_overrides"])
    bb.model.save_pretrained(path)
    return str(path)


def _backbone(raw: dict) -> dict[str, torch.Tensor]:
    recipe = validate_recipe(raw | {"method": {"name": "frozen"}})  # no adapter weights in the backbone
    model, _ = build_model(recipe, recipe.task.describe(), "fp32")
    return {n: p.detach().clone() for n, p in model.backbone.named_parameters()}


def test_shuffled_weights_keep_each_tensor_multiset_and_move_its_entries(family, tmp_path):
    source = _saved_tiny(family, tmp_path / "ckpt")
    model = {"family": family, "source": source}
    pre = _backbone(tiny_recipe(family, model=model | {"init": "pretrained"}))
    shuffled = _backbone(tiny_recipe(family, model=model | {"init": "shuffled"}))
    again = _backbone(tiny_recipe(family, model=model | {"init": "shuffled"}))
    other_seed = _backbone(tiny_recipe(family, model=model | {"init": "shuffled"}, seed=1))
    assert pre.keys() == shuffled.keys()
    moved = 0
    for name, p in pre.items():
        s = shuffled[name]
        assert torch.equal(p.flatten().sort().values, s.flatten().sort().values), name  # same multiset
        if p.unique().numel() > 1:  # a constant tensor (a fresh norm's ones) looks the same however shuffled
            assert not torch.equal(p, s), name
            moved += 1
        assert torch.equal(s, again[name]), name  # the run's seed fixes the permutation (a reload matches)
    assert moved > 0
    assert any(not torch.equal(shuffled[n], other_seed[n]) for n in pre)


def test_shuffling_keeps_tied_embeddings_tied(tmp_path):
    source = _saved_tiny("t5", tmp_path / "ckpt")
    recipe = validate_recipe(tiny_recipe("t5", model={"family": "t5", "source": source, "init": "shuffled"}))
    model, provenance = build_model(recipe, recipe.task.describe(), "fp32")
    bb = model.backbone
    assert bb.shared.weight is bb.encoder.embed_tokens.weight
    assert provenance["init"] == "shuffled" and provenance["shuffled_tensors"] > 0


@pytest.mark.parametrize("body", ABLATIONS)
def test_ablated_model_has_the_documented_parameters_and_the_counter_agrees(family, body):
    recipe, _, model, _ = build(tiny_recipe(family, model=tiny_model(family, body=body)))
    full, _ = build_model(validate_recipe(tiny_recipe(family)), recipe.task.describe(), "fp32")
    width = full.family.hidden_size(full.backbone.config)
    fresh = sum(p.numel() for n, p in model.backbone.named_parameters() if n.startswith("layer."))
    assert fresh == expected_body_parameters(body, width, ffn_width(full.family, full.backbone))
    embed = full.backbone.get_input_embeddings().weight
    real = model_budget(model)
    # what is left of the body: its token embedding (the input layer looks symbols up in it), frozen
    assert real.by_role["token_embedding"] == {"trainable": 0, "frozen": embed.numel()}
    assert real.trainable == fresh + sum(p.numel() for p in model.head.parameters())
    assert real.by_group.get("body", {}).get("trainable", 0) == fresh
    assert recipe_budget(recipe).to_dict() == real.to_dict()  # meta device, field by field
    counter = MetaCounter(recipe)
    frozen = validate_recipe(tiny_recipe(family, model=tiny_model(family, body=body), method={"name": "frozen"}))
    assert counter.count(frozen.method).to_dict() == real.to_dict()  # no method adapts an ablated body


@pytest.mark.parametrize("body", ABLATIONS)
def test_ablated_model_trains_only_its_fresh_layer_and_head(family, body):
    _, _, model, split = build(tiny_recipe(family, model=tiny_model(family, body=body)))
    batch = on_device(split.collate(list(range(16))), model)
    y = batch.pop("labels")
    before = snapshot(model)
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable == {n for n in before if n.startswith(("backbone.layer.", "head."))}
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=5e-2, weight_decay=0.0)
    model.eval()  # no dropout: the same batch gives a loss that must fall
    losses = []
    for _ in range(20):
        loss = F.cross_entropy(model(**batch), y)
        loss.backward()
        opt.step()
        opt.zero_grad()
        losses.append(loss.item())
    assert losses[-1] < losses[0] - 0.1
    assert changed(before, model) == trainable


def test_ablated_body_with_a_trainable_input_trains_the_kept_embedding():
    raw = tiny_recipe(
        "bert", model=tiny_model("bert", body="none"), input={"name": "pretrained_vocab", "trainable": True}
    )
    _, _, model, _ = build(raw)
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable == {"backbone.embeddings.word_embeddings.weight", "head.1.weight", "head.1.bias"}


def test_ablated_mean_pooling_ignores_padding():
    _, _, model, split = build(tiny_recipe("gpt2", model=tiny_model("gpt2", body="attention1")))
    model.eval()
    one = split.collate([0])
    one.pop("labels")
    padded = {k: F.pad(v, (0, 5)) for k, v in one.items()}  # five more padding positions
    with torch.no_grad():
        assert torch.allclose(model(**one), model(**padded), atol=1e-5)


BAD = [
    (
        {"pretrained": False, "init": "shuffled"},
        "model: init: shuffled starts from the checkpoint's weights but pretrained is false",
    ),
    (
        {"pretrained": True, "init": "self_pretrained"},
        "model: init: self_pretrained starts from random weights but pretrained is true",
    ),
    (
        {"init": "pretrained", "self_pretrain": {"steps": 3}},
        "model: self_pretrain configures init: self_pretrained, and init is pretrained",
    ),
    ({"pretrained": False, "init": "self_pretrained", "body": "none"}, "model: body: none removes the body"),
    (
        {"body": "attention1", "pooling": "cls"},
        "model: pooling: 'cls' is the full body's; body: attention1 pools by the mean",
    ),
    (
        {"init": "shuffled", "quantization": "8bit"},
        "model: quantization: 8bit applies to whole pretrained or scratch bodies",
    ),
    ({"init": "warm"}, "model.init: Input should be 'pretrained', 'scratch', 'shuffled' or 'self_pretrained'"),
    ({"body": "half"}, "model.body: Input should be 'full', 'none', 'attention1' or 'block1'"),
]


@pytest.mark.parametrize("model, message", BAD, ids=[m for _, m in BAD])
def test_contradictory_controls_exit_2_with_one_line(tmp_path, model, message):
    raw = tiny_recipe("bert")
    raw["model"] = {k: v for k, v in raw["model"].items() if k != "pretrained"} | model
    path = write(tmp_path / "bad.yaml", raw)
    assert_one_line(invoke("validate", path), path, message)


def test_pretrained_false_is_init_scratch_and_both_read_back():
    old = validate_recipe(tiny_recipe("bert"))  # the tiny models say pretrained: false
    assert (old.model.init, old.model.pretrained) == ("scratch", False)
    raw = tiny_recipe("bert")
    raw["model"] = {k: v for k, v in raw["model"].items() if k != "pretrained"} | {"init": "self_pretrained"}
    new = validate_recipe(raw)
    assert new.model.pretrained is False and new.model.self_pretrain is not None  # defaults filled in
    assert validate_recipe(new.to_dict()) == new  # a resolved recipe (both fields written) reads back
