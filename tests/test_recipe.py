"""Recipes: every shipped recipe validates; mistakes give one line naming the file and key."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from peftx.errors import PeftxError
from peftx.recipe import dump_recipe, load_recipe, validate_recipe
from tests.conftest import tiny_recipe

RECIPES = sorted((Path(__file__).parent.parent / "recipes").rglob("*.yaml"))


def test_recipes_exist():
    assert any(p.name == "listops_lora.yaml" for p in RECIPES)


@pytest.mark.parametrize("path", RECIPES, ids=lambda p: str(p.relative_to(p.parents[1])))
def test_shipped_recipe_validates_and_documents_its_command(path):
    recipe = load_recipe(path)
    assert recipe.name
    first = path.read_text().splitlines()[0]
    assert first.startswith("# Run: peftx ") and str(path.relative_to(path.parents[1])).replace("\\", "/") in first


def write(tmp_path, raw) -> Path:
    path = tmp_path / "r.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


@pytest.mark.parametrize(
    "mutate, message",
    [
        (lambda r: r["train"].update(lrr=1), r"r\.yaml: train\.lrr: unknown key \(did you mean 'lr'\?\)"),
        (lambda r: r["train"].update(lr="fast"), r"train\.lr: Input should be a valid number"),
        (lambda r: r["method"].update(r="big"), r"method\.r: Input should be a valid integer"),
        (lambda r: r["method"].update(rank=4), r"method\.rank: unknown key"),
        (lambda r: r["method"].update(name="lorax"), r"method\.name: unknown method 'lorax' \(valid: .*lora"),
        (lambda r: r["task"].update(name="sudoku"), r"task\.name: unknown task 'sudoku' \(valid: .*listops"),
        (lambda r: r.update(input={"name": "pixels"}), r"input\.name: unknown input adapter 'pixels'"),
        (lambda r: r["model"].update(family="llama"), r"model: unknown family 'llama' \(valid: bart, bert, gpt2, t5\)"),
        (lambda r: r["train"].update(epochs=2), r"train: give exactly one of steps or epochs"),
        (lambda r: r.pop("method"), r"method: required key is missing"),
        (lambda r: r["task"].update(preset="huge"), r"task\.preset: Input should be 'cpu', 'lra' or 'tiny'"),
        (lambda r: r["model"].update(pooling="max"), r"model: pooling 'max' is not one of bert's: cls, mean"),
    ],
)
def test_bad_recipe_names_file_and_key(tmp_path, mutate, message):
    raw = tiny_recipe("bert", tmp_path)
    mutate(raw)
    with pytest.raises(PeftxError, match=message) as e:
        load_recipe(write(tmp_path, raw))
    assert "\n" not in str(e.value)


def test_missing_file_and_bad_yaml(tmp_path):
    with pytest.raises(PeftxError, match="nope.yaml: no such recipe file"):
        load_recipe(tmp_path / "nope.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("train: {lr: 1\nmodel: [")
    with pytest.raises(PeftxError, match=r"bad\.yaml:\d+: invalid YAML"):
        load_recipe(bad)


def test_overrides_are_typed_and_validated(tmp_path):
    path = write(tmp_path, tiny_recipe("bert", tmp_path))
    recipe = load_recipe(path, ["train.lr=3e-4", "method.r=16", "seed=7", "task.n_train=100"])
    assert recipe.train.lr == 3e-4 and recipe.method.r == 16 and recipe.seed == 7 and recipe.task.n_train == 100
    with pytest.raises(PeftxError, match="train.lr: Input should be a valid number"):
        load_recipe(path, ["train.lr=fast"])
    with pytest.raises(PeftxError, match="expected KEY=VALUE"):
        load_recipe(path, ["train.lr"])
    with pytest.raises(PeftxError, match="train.nope: unknown key"):
        load_recipe(path, ["train.nope=1"])


def test_defaults_resolved_and_round_trip(tmp_path):
    recipe = load_recipe(write(tmp_path, tiny_recipe("bert", tmp_path)))
    assert recipe.input.name == "pretrained_vocab"  # the task's default input adapter
    again = validate_recipe(yaml.safe_load(dump_recipe(recipe)))
    assert again == recipe


def test_name_defaults_to_file_stem(tmp_path):
    raw = tiny_recipe("bert", tmp_path)
    del raw["name"]
    assert load_recipe(write(tmp_path, raw)).run_name == "r"
