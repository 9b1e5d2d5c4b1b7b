"""Broken recipes at every entry point that reads one (validate, run, sweep, budget): one line, exit 2.
`peftx validate` fails every recipe that `run` would fail on before its first training step."""

from __future__ import annotations

import copy

import pytest
import yaml

from peftx.errors import PeftxError
from peftx.recipe import load_recipe
from peftx.recipe.load import parse_yaml
from tests.support.bad_inputs import assert_one_line, invoke, write
from tests.support.tiny import tiny_recipe

GOOD = yaml.safe_dump(tiny_recipe("bert"), sort_keys=False)

# (name, file content, what the one line must hold besides the file)
BROKEN_FILES = [
    ("non_utf8", b"name: \xff\xfe x\n", ":1: not UTF-8 text (byte 0xff"),
    ("latin1_line3", GOOD.encode()[:60] + b"\n# caf\xe9\n", ": not UTF-8 text"),
    ("binary", b"\x00\x01\x02\x03", ":1: binary data (a NUL byte)"),
    ("utf16_no_bom", GOOD.encode("utf-16-le"), ":1: binary data"),
    ("empty", b"", ": empty recipe"),
    ("only_comments", b"# nothing\n", ": empty recipe"),
    ("top_level_list", b"- model\n- task\n", ": a recipe is a mapping of sections, got list"),
    ("top_level_scalar", b"42\n", ": a recipe is a mapping of sections, got int"),
    ("duplicate_key", (GOOD + "seed: 3\n").encode(), "invalid YAML: duplicate key 'seed' (first at line"),
    ("duplicate_nested", b"train: {lr: 1, lr: 2}\n", ":1: invalid YAML: duplicate key 'lr'"),
    ("tab_indent", b"train:\n\tlr: 1\n", ":2: invalid YAML: found character '\\t'"),
    ("unclosed", b"train: {lr: 1\nmodel: [", "invalid YAML"),
    ("control_char", b"name: a\x07b\n", "invalid YAML: unacceptable character #x0007"),
    ("deep_nesting", b"a: " + b"[" * 5000 + b"]" * 5000 + b"\n", "invalid YAML"),
]


@pytest.mark.parametrize("name, content, message", BROKEN_FILES, ids=[c[0] for c in BROKEN_FILES])
@pytest.mark.parametrize("command", ["validate", "run", "sweep", "budget"])
def test_broken_recipe_file_is_one_line_at_every_entry_point(tmp_path, command, name, content, message):
    path = write(tmp_path / f"{name}.yaml", content)
    args = {"budget": ["budget", "--recipe", path], "sweep": ["sweep", path, "--dry-run"]}.get(command, [command, path])
    line = assert_one_line(invoke(*args), path, message)
    assert "Traceback" not in line


def test_utf16_with_bom_reads_as_text(tmp_path):
    path = write(tmp_path / "r.yaml", GOOD.encode("utf-16"))
    assert load_recipe(path).train.steps == 4


def test_missing_and_folder_recipes(tmp_path):
    assert_one_line(invoke("validate", tmp_path / "nope.yaml"), "nope.yaml: no such recipe file")
    assert_one_line(invoke("run", tmp_path), f"{tmp_path}: is a folder, not a recipe file")


def test_validate_checks_every_file_even_after_a_broken_one(tmp_path):
    bad = write(tmp_path / "bad.yaml", b"\xff\xff")
    good = write(tmp_path / "good.yaml", tiny_recipe("bert", tmp_path))
    result = invoke("validate", bad, good, bad)
    assert result.exit_code == 2 and f"ok: {good}" in result.stdout
    assert result.stderr.count("error: ") == 2 and "Traceback" not in result.output


def test_yaml_12_numbers_in_files_and_overrides(tmp_path):
    assert parse_yaml("a: 1e-5\nb: 3E4\nc: 1.0e-3\nd: 10\ne: 1e\nf: .5") == {
        "a": 1e-5,
        "b": 3e4,
        "c": 1e-3,
        "d": 10,
        "e": "1e",
        "f": 0.5,
    }
    raw = tiny_recipe("bert", tmp_path)
    raw["model"]["config_overrides"]["layer_norm_eps"] = "PLACEHOLDER"
    text = yaml.safe_dump(raw).replace("PLACEHOLDER", "1e-7")
    path = write(tmp_path / "r.yaml", text)
    recipe = load_recipe(path, ["train.lr=1e-5", "train.steps=1e1", "seed=2e3"])
    assert recipe.train.lr == 1e-5 and recipe.train.steps == 10 and recipe.seed == 2000
    assert recipe.model.config_overrides["layer_norm_eps"] == 1e-7  # a float, not the string '1e-7'


@pytest.mark.parametrize(
    "override, message",
    [
        ("train.lr", "--set 'train.lr': expected KEY=VALUE"),
        ("=3", "expected KEY=VALUE"),
        ("train..lr=1", "expected KEY=VALUE"),
        ("train.lr={a: 1, a: 2}", "--set 'train.lr={a: 1, a: 2}': duplicate key 'a'"),
        ("train.lr.x=1", "--set 'train.lr.x=1': lr is not a section"),
        ("train.lr=.inf", "train.lr: Input should be a finite number"),
        ("method.r=1e400", "method.r: Input should be a finite number"),
        ("seed=-1", "seed: Input should be greater than or equal to 0"),
        ("seed=4294967296", "seed: Input should be less than or equal to 4294967295"),
        ("train.steps=1.5", "train.steps: Input should be a valid integer"),
    ],
)
def test_bad_set_is_one_line(tmp_path, override, message):
    path = write(tmp_path / "r.yaml", tiny_recipe("bert", tmp_path))
    assert_one_line(invoke("validate", path, "--set", override), message)
    assert_one_line(invoke("run", path, "--set", override), message)


def _mutated(mutate) -> dict:
    raw = tiny_recipe("bert")
    mutate(raw)
    return raw


def _overrides(**kw):
    return lambda r: r["model"]["config_overrides"].update(kw)


# Recipes the schema alone used to accept, that then crashed, hung or trained on nonsense.
WOULD_FAIL = [
    (
        "override_typo",
        _overrides(num_hidden_layer=3),
        "model.config_overrides.num_hidden_layer: not a field of BertConfig (did you mean 'num_hidden_layers'?)",
    ),
    ("override_type", _overrides(num_hidden_layers="two"), "model.config_overrides.num_hidden_layers: expected int"),
    ("override_list", _overrides(hidden_size=[1]), "model.config_overrides.hidden_size: expected int"),
    (
        "heads_do_not_divide",
        _overrides(num_attention_heads=5),
        "model.config_overrides: 'bert-base-uncased' cannot be "
        "built as configured (The hidden size (32) is not a multiple",
    ),
    ("zero_layers", _overrides(num_hidden_layers=0), "model.config_overrides.num_hidden_layers: 0; sizes and layer"),
    ("negative_width", _overrides(intermediate_size=-4), "model.config_overrides.intermediate_size: -4"),
    ("two_positions", _overrides(max_position_embeddings=2), "model: 2 input positions"),
    ("prompt_longer_than_positions", lambda r: r.update(method={"name": "prompt", "length": 200}), "model: -72 input"),
    ("n_train_zero", lambda r: r["task"].update(n_train=0), "task.n_train: Input should be greater than or equal to 1"),
    ("n_val_negative", lambda r: r["task"].update(n_val=-1), "task.n_val: Input should be greater than or equal to 1"),
    ("seed_too_big", lambda r: r.update(seed=2**33), "seed: Input should be less than or equal to 4294967295"),
    (
        "min_above_max",
        lambda r: r["task"].update(min_length=50, max_length=10),
        "task: min_length 50 and max_length 10 leave no length between them",
    ),
    (
        "min_beyond_longest",
        lambda r: r["task"].update(min_length=300, max_length=400),
        "task: min_length 300: no expression is longer (max_depth 4 and max_args 4 allow at most 106)",
    ),
    (
        "warmup_1e30_epochs",
        lambda r: r["train"].update(warmup=1e30, steps=None, epochs=1),
        "train: warmup: 1e+30 steps is more than any run takes",
    ),
    (
        "warmup_longer_than_epochs",
        lambda r: r["train"].update(warmup=500, steps=None, epochs=1),
        "train.warmup: 500 steps is longer than the run (16 steps: 1 epoch(s) of 256 examples in batches of 16)",
    ),
    ("sha256_not_hex", lambda r: r["model"].update(sha256="ab"), "model.sha256: expected a sha256 digest"),
    ("sha256_from_scratch", lambda r: r["model"].update(sha256="a" * 64), "model: sha256 pins pretrained weights"),
    (
        "override_key_not_a_name",
        lambda r: r["model"].update(config_overrides={"num-layers": 2}),
        "model.config_overrides: 'num-layers' is not a config field name",
    ),
    (
        "missing_data_dir",
        lambda r: r["task"].update(data_dir="/nonexistent/lra"),
        "task.data_dir: /nonexistent/lra: no",
    ),
]


@pytest.mark.parametrize("name, mutate, message", WOULD_FAIL, ids=[c[0] for c in WOULD_FAIL])
def test_validate_fails_what_run_would_fail_on(tmp_path, name, mutate, message):
    path = write(tmp_path / "r.yaml", _mutated(mutate))
    assert_one_line(invoke("validate", path), f"{path}: {message}")


def test_validate_refuses_a_model_beyond_this_machines_memory(tmp_path):
    raw = tiny_recipe("bert", tmp_path)
    raw["model"] = {"source": "bert-base-uncased", "pretrained": False}
    raw["method"] = {"name": "lora", "r": 200_000}  # ~33 billion trained parameters, ~500 GB with AdamW
    line = assert_one_line(invoke("validate", write(tmp_path / "r.yaml", raw)), "method: lora on 'bert-base-uncased'")
    assert "GB for weights, gradients and optimizer state" in line and "this machine has" in line


def test_memory_estimate_follows_dtype_optimizer_and_method(monkeypatch):
    from peftx.recipe import validate_recipe
    from peftx.runs import validate as check

    def need(**train):
        raw = tiny_recipe("bert")
        raw["train"].update(train)
        return check.check_recipe(validate_recipe(raw))

    fp32, lion = need(), need(optimizer="lion8bit")
    assert fp32.trainable == lion.trainable > 0
    # AdamW keeps 8 bytes per fp32 trained parameter, the 8-bit optimizers 2
    assert fp32.memory_bytes - lion.memory_bytes == 6 * fp32.trainable
    monkeypatch.setattr(check, "machine_memory", lambda: fp32.memory_bytes - 1)
    with pytest.raises(PeftxError, match="needs at least"):
        need()


def test_a_sweep_is_checked_point_by_point_naming_the_point(tmp_path):
    raw = tiny_recipe("bert", tmp_path)
    raw["method"] = [{"name": "lora", "r": 4}, {"name": "prompt", "length": 200}]
    line = assert_one_line(invoke("validate", write(tmp_path / "s.yaml", raw)), "s.yaml [prompt-length200]: model:")
    assert "input positions" in line


@pytest.mark.parametrize(
    "mutate, message",
    [
        (lambda r: r.update(seed=[]), "s.yaml: seed: an empty list gives an empty sweep"),
        (lambda r: r.update(grid=[1]), "s.yaml: grid: expected a mapping"),
        (lambda r: r.update(grid={"train.lr": 3}), "s.yaml: grid: expected a mapping"),
        (lambda r: r.update(output=[{"dir": "a"}]), "s.yaml: output: a list here is no grid axis"),
        (lambda r: r.update(name=["a", "b"]), "s.yaml: name: a list here is no grid axis"),
        (lambda r: r.update(method=[{"name": "lora"}, 3]), "s.yaml [3]: method: expected a mapping"),
        (lambda r: r.update(seed=[0, "x"]), "s.yaml [seed=x]: seed: Input should be a valid integer"),
    ],
)
def test_malformed_sweeps_are_one_line(tmp_path, mutate, message):
    raw = tiny_recipe("bert", tmp_path)
    mutate(raw)
    path = write(tmp_path / "s.yaml", raw)
    assert_one_line(invoke("sweep", path, "--dry-run"), message)
    assert_one_line(invoke("validate", path), message)


def test_budget_on_a_sweep_recipe_says_what_to_do(tmp_path):
    raw = tiny_recipe("bert", tmp_path)
    raw["train"] = copy.deepcopy(raw["train"]) | {"lr": [1e-3, 1e-4]}
    path = write(tmp_path / "s.yaml", raw)
    assert_one_line(invoke("budget", "--recipe", path), "s.yaml: holds grid axes (train.lr)")


def test_budget_on_the_paper_grid_is_one_line():
    assert_one_line(invoke("budget", "--recipe", "recipes/paper/listops.yaml"), "holds grid axes (model,")


def test_safety_fields_never_make_a_finished_run_stale():
    from peftx.recipe import result_defining, validate_recipe

    new = validate_recipe(tiny_recipe("bert")).to_dict()
    old = {
        **new,
        "model": {k: v for k, v in new["model"].items() if k not in ("trust_remote_code", "allow_pickle", "sha256")},
    }
    allowed = validate_recipe(
        tiny_recipe("bert", model={**tiny_recipe("bert")["model"], "allow_pickle": True})
    ).to_dict()
    assert result_defining(old) == result_defining(new) == result_defining(allowed)
