"""Recipes: every shipped recipe validates; mistakes give one line naming the file and key."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from peftx.errors import PeftxError
from peftx.recipe import dump_recipe, load_recipe, validate_recipe
from peftx.studies.sweep import load_sweep
from tests.support.tiny import tiny_recipe

RECIPES_DIR = Path(__file__).parents[2] / "recipes"
RECIPES = sorted(RECIPES_DIR.rglob("*.yaml"))


def test_recipes_exist():
    assert any(p.name == "listops_lora.yaml" for p in RECIPES)


@pytest.mark.parametrize("path", RECIPES, ids=lambda p: str(p.relative_to(RECIPES_DIR)))
def test_shipped_recipe_validates_and_documents_its_command(path):
    points = load_sweep(path)  # a plain recipe is one point; a sweep recipe validates every point
    assert points and all(p.recipe.name for p in points)
    first = path.read_text().splitlines()[0]
    command = "peftx sweep " if len(points) > 1 else "peftx run "
    rel = "recipes/" + path.relative_to(RECIPES_DIR).as_posix()
    assert first.startswith("# Run: " + command) and rel in first


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
        (
            lambda r: r["model"].update(family="falcon"),
            r"model: unknown family 'falcon' \(valid: bart, bert, gpt2, llama, t5\)",
        ),
        (lambda r: r["train"].update(epochs=2), r"train: give exactly one of steps or epochs"),
        (lambda r: r.pop("method"), r"method: required key is missing"),
        (lambda r: r["task"].update(preset="huge"), r"task\.preset: Input should be 'cpu', 'lra', 'lra512' or 'tiny'"),
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


def test_a_sweep_recipe_is_not_run_as_one(tmp_path):
    raw = tiny_recipe("bert", tmp_path)
    raw["seed"] = [0, 1]
    with pytest.raises(PeftxError, match=r"holds grid axes \(seed\); run it with `peftx sweep"):
        load_recipe(write(tmp_path, raw))


def test_name_defaults_to_file_stem(tmp_path):
    raw = tiny_recipe("bert", tmp_path)
    del raw["name"]
    assert load_recipe(write(tmp_path, raw)).run_name == "r"


def test_validate_recipe_leaves_its_argument_unchanged():
    raw = tiny_recipe("bert")
    raw["method"] = "lora"  # shorthand, expanded inside validation
    before = yaml.safe_dump(raw)
    validate_recipe(raw)
    assert yaml.safe_dump(raw) == before


def test_a_list_of_plugin_names_is_a_sweep_axis_not_a_crash(tmp_path):
    raw = tiny_recipe("bert", tmp_path)
    raw["method"] = {"name": ["lora", "full"]}
    points = load_sweep(write(tmp_path, raw))
    assert [p.recipe.method.name for p in points] == ["lora", "full"]
    with pytest.raises(PeftxError, match=r"holds grid axes \(method.name\); run it with `peftx sweep"):
        load_recipe(write(tmp_path, raw))
    with pytest.raises(PeftxError, match="method.name: expected one method name"):
        validate_recipe(raw)


def test_result_neutral_fields_come_from_the_schema():
    from peftx.recipe import result_defining, result_neutral_keys

    keys = result_neutral_keys()
    assert {"train.threads", "output.dir", "output.name", "name"} <= set(keys)
    assert "train.lr" not in keys and "seed" not in keys
    a = validate_recipe(tiny_recipe("bert")).to_dict()
    b = validate_recipe({**tiny_recipe("bert"), "train": {**tiny_recipe("bert")["train"], "threads": 1}}).to_dict()
    assert a != b and result_defining(a) == result_defining(b)
    c = validate_recipe({**tiny_recipe("bert"), "train": {**tiny_recipe("bert")["train"], "lr": 1.0}}).to_dict()
    assert result_defining(a) != result_defining(c)


def test_a_run_recorded_before_a_field_existed_computed_as_the_field_s_earlier_value():
    """`train.skip_unpooled_rows` came later: a recorded recipe without it ran every row, so it matches a
    recipe that switches it off (resumable, done in a sweep) and not the new default."""
    from peftx.recipe import result_defining

    new = validate_recipe(tiny_recipe("bert")).to_dict()
    old = {**new, "train": {k: v for k, v in new["train"].items() if k != "skip_unpooled_rows"}}
    off = validate_recipe(
        {**tiny_recipe("bert"), "train": {**tiny_recipe("bert")["train"], "skip_unpooled_rows": False}}
    )
    assert result_defining(old) == result_defining(off.to_dict())
    assert result_defining(old) != result_defining(new)
    assert result_defining(new)["train"]["skip_unpooled_rows"] is True


@pytest.mark.parametrize("seed", [-1, 2**32])
def test_seed_out_of_range_is_one_line(seed):
    with pytest.raises(PeftxError, match="seed"):
        validate_recipe({**tiny_recipe("bert"), "seed": seed})


def test_recipe_show_prints_every_field_with_its_help():
    from peftx.recipe.fields import section_docs

    docs = dict(section_docs())
    train = {f.key: f for f in docs["train"]}
    assert train["train.lr"].type == "number" and train["train.lr"].default == "0.0005" and train["train.lr"].help
    assert "does not change results" in train["train.threads"].help
    assert "method: lora" in docs and any(f.key == "method.r" for f in docs["method: lora"])
    undocumented = [
        f.key for title in ("recipe (top level)", "model", "train", "output") for f in docs[title] if not f.help
    ]
    assert undocumented == []
    with pytest.raises(PeftxError, match="unknown recipe section 'trian'"):
        section_docs("trian")


@pytest.mark.parametrize(
    "train, message",
    [
        ({"lr": float("inf")}, "train.lr"),
        ({"lr": float("nan")}, "train.lr"),
        ({"warmup": 1e30}, "train: warmup: .* steps is longer than the run"),
        ({"warmup": 2.5}, "neither a fraction"),
    ],
)
def test_numbers_that_cannot_train_are_refused(train, message):
    raw = tiny_recipe("bert")
    raw["train"] = {**raw["train"], **train}
    with pytest.raises(PeftxError, match=message):
        validate_recipe(raw)
