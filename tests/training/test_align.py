"""input.align: the alignment stage trains the input layer alone towards the pretrained model's own
embedding distribution, then any method trains as usual."""

from __future__ import annotations

import pytest
import torch
import yaml
from typer.testing import CliRunner

from peftx.cli import app
from peftx.recipe import validate_recipe
from peftx.runs.run import run
from peftx.training.align import align_input, reference
from peftx.training.session import open_session
from tests.support.tiny import FAMILY_NAMES, tiny_recipe

OBJECTIVES = [
    "mmd",
    "moments",
    pytest.param(
        "sinkhorn",
        marks=pytest.mark.skipif(__import__("importlib").util.find_spec("geomloss") is None, reason="needs geomloss"),
    ),
]


def aligned(family: str, tmp_path, **align) -> dict:
    raw = tiny_recipe(family, tmp_path)
    raw["input"] = {"name": "learned", "init_std": 0.5, "align": {"steps": 40, "lr": 5e-2, "points": 256, **align}}
    return raw


@pytest.mark.parametrize("objective", OBJECTIVES)
def test_alignment_loss_falls_and_only_the_input_layer_moves(tmp_path, objective):
    recipe = validate_recipe(aligned("bert", tmp_path, objective=objective))
    session = open_session(recipe)
    model = session.model
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    split = session.split(session.task.splits["train"])
    ref = reference(recipe.input.align, model, None, recipe.seed)
    assert ref.provenance["source"] == "vocab" and ref.vectors.shape[1] == 32
    out = align_input(model, split, recipe.input.align, ref, recipe.seed, session.accelerator)
    assert out.after < 0.7 * out.before, out
    assert len(out.log) == 20 and out.seconds > 0
    moved = {n for n, p in model.named_parameters() if not torch.equal(p, before[n])}
    assert moved == {"input.embed.weight"}


@pytest.mark.parametrize("family", FAMILY_NAMES)
def test_alignment_then_lora_runs_on_every_family(tmp_path, family):
    result = run(validate_recipe(aligned(family, tmp_path, steps=10)))
    record = result.record
    assert record.completed and record.align["steps"] == 10
    assert record.align["after"] < record.align["before"]
    assert record.timing.align_seconds == record.align["seconds"] > 0
    assert "input" in record.budget.by_role and record.budget.by_role["input"]["trainable"] > 0


def test_without_align_there_is_no_stage(tmp_path):
    record = run(validate_recipe({**tiny_recipe("bert", tmp_path), "input": {"name": "learned"}})).record
    assert record.align is None and record.timing.align_seconds is None


def test_text_reference_with_pooled_features(tmp_path):
    text = tmp_path / "ref.txt"
    text.write_text("The cat sat on the mat.\nA second line of plain English text.\n\nAnd a third one here.\n")
    raw = tiny_recipe("bert", tmp_path)
    raw["model"] = {"source": "offline", "config_overrides": {"num_hidden_layers": 1}}
    raw["input"] = {
        "name": "learned",
        "align": {"steps": 20, "lr": 1e-2, "reference": "text", "text": str(text), "features": "pooled"},
    }
    record = run(validate_recipe(raw)).record
    ref = record.align["reference"]
    assert ref["source"] == "text" and ref["lines"] == 3 and ref["features"] == "pooled" and len(ref["sha256"]) == 64
    assert record.align["after"] < record.align["before"]


@pytest.mark.parametrize(
    "align, message",
    [
        ({"reference": "text"}, "give a text file exactly when reference is text"),
        ({"features": "pooled"}, "features: pooled needs sequences"),
        ({"objective": "ot"}, "objective"),
        ({"steps": 0}, "steps"),
    ],
)
def test_bad_align_sections_are_one_line(tmp_path, align, message):
    raw = aligned("bert", tmp_path, **align)
    path = tmp_path / "r.yaml"
    path.write_text(yaml.safe_dump(raw))
    out = CliRunner().invoke(app, ["validate", str(path)])
    assert out.exit_code == 2 and message in out.output and "input.align" in out.output, out.output


def test_a_frozen_input_layer_cannot_be_aligned(tmp_path):
    raw = aligned("bert", tmp_path)
    raw["input"]["trainable"] = False
    path = tmp_path / "r.yaml"
    path.write_text(yaml.safe_dump(raw))
    out = CliRunner().invoke(app, ["validate", str(path)])
    assert out.exit_code == 2 and "only a trainable input layer can be aligned" in out.output
