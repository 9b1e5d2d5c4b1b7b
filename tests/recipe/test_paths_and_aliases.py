"""Paths as a shell reads them (`~`, `$VAR`) in every path a user gives, output paths included; YAML
aliases counted before they are expanded, so an alias bomb is refused at once in one short line."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from peftx.cli import app, user_path
from peftx.errors import PeftxError
from peftx.recipe import load_recipe, validate_recipe
from peftx.recipe.load import MAX_YAML_NODES, parse_yaml
from peftx.util.echo import MESSAGE_CHARS
from peftx.util.user_paths import expand_path
from tests.support.tiny import tiny_recipe

runner = CliRunner()

BOMB = "name: bomb\n" + "a: &a [" + ",".join(['"lol"'] * 9) + "]\n"
for _prev, _name in zip("abcdefgh", "bcdefghi"):
    BOMB += f"{_name}: &{_name} [" + ",".join([f"*{_prev}"] * 9) + "]\n"


@pytest.fixture
def home(tmp_path, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.setenv("PEFTX_TEST_DIR", str(tmp_path / "var"))
    monkeypatch.delenv("PEFTX_UNSET_VAR", raising=False)
    return tmp_path


def test_expand_path_reads_tilde_and_variables_and_refuses_unset_ones(home):
    assert expand_path("~/runs") == home / "home" / "runs"
    assert expand_path("$PEFTX_TEST_DIR/runs") == home / "var" / "runs"
    assert expand_path("${PEFTX_TEST_DIR}/x") == home / "var" / "x"
    assert expand_path("runs/a") == Path("runs/a")
    with pytest.raises(ValueError, match=r"\$PEFTX_UNSET_VAR is not set"):
        expand_path("$PEFTX_UNSET_VAR/runs")
    with pytest.raises(ValueError, match="no user"):
        expand_path("~no_such_user_peftx/runs")


def test_output_dir_and_data_paths_are_expanded_in_recipes(home):
    raw = tiny_recipe("bert")
    raw["output"] = {"dir": "~/runs"}
    assert validate_recipe(raw).output.dir == home / "home" / "runs"
    raw["output"] = {"dir": "$PEFTX_TEST_DIR/runs"}
    assert validate_recipe(raw).output.dir == home / "var" / "runs"
    raw["task"] = {"name": "listops", "data_dir": "$PEFTX_TEST_DIR/lra"}
    assert validate_recipe(raw).task.data_dir == home / "var" / "lra"
    (home / "home").mkdir()
    (home / "home" / "t.csv").write_text("sequence,label\na b,0\nb a,1\n")
    raw["task"] = {"name": "sequences", "data_files": {"train": "~/t.csv"}}
    assert validate_recipe(raw).task.data_files == {"train": home / "home" / "t.csv"}
    raw = tiny_recipe("bert")
    raw["output"] = {"dir": "$PEFTX_UNSET_VAR/runs"}
    with pytest.raises(PeftxError, match=r"output.dir: .*\$PEFTX_UNSET_VAR is not set"):
        validate_recipe(raw, "r.yaml")


def test_a_run_with_output_dir_under_home_writes_there_not_in_a_folder_named_tilde(home, monkeypatch):
    monkeypatch.chdir(home)
    raw = tiny_recipe("bert")
    raw["output"] = {"dir": "~/runs"}
    raw["train"]["steps"] = 1
    path = home / "r.yaml"
    path.write_text(yaml.safe_dump(raw))
    result = runner.invoke(app, ["run", str(path), "--quiet"])
    assert result.exit_code == 0, result.output
    assert (home / "home" / "runs" / "tiny_bert" / "result.json").exists()
    assert not (home / "~").exists()


def test_command_line_output_paths_are_expanded(home):
    assert user_path(Path("~/out"), "OUT_DIR") == home / "home" / "out"
    assert user_path(Path("$PEFTX_TEST_DIR/out"), "--out") == home / "var" / "out"
    with pytest.raises(PeftxError, match=r"^OUT_DIR: \$PEFTX_UNSET_VAR/x: environment variable"):
        user_path(Path("$PEFTX_UNSET_VAR/x"), "OUT_DIR")
    result = runner.invoke(app, ["report", str(home), "--out", "$PEFTX_UNSET_VAR/r"])
    assert result.exit_code == 2 and "--out: $PEFTX_UNSET_VAR/r: environment variable" in result.stderr
    assert not (Path.cwd() / "$PEFTX_UNSET_VAR").exists()


def test_alias_bomb_is_refused_at_once_in_one_short_line(tmp_path):
    path = tmp_path / "bomb.yaml"
    path.write_text(BOMB)
    start = time.perf_counter()
    with pytest.raises(PeftxError) as e:
        load_recipe(path)
    assert time.perf_counter() - start < 0.5
    message = str(e.value)
    assert "\n" not in message and len(message) < 200
    assert f"aliases expand to more than {MAX_YAML_NODES:,} values" in message and "bomb.yaml:" in message

    result = runner.invoke(app, ["validate", str(path)])
    assert result.exit_code == 2 and result.stderr.strip().count("\n") == 0 and len(result.stderr) < 200
    over = runner.invoke(app, ["validate", str(path), "--set", "train.lr=" + BOMB.replace("\n", " ")])
    assert over.exit_code == 2 and len(over.stderr) < MESSAGE_CHARS + 100


def test_aliases_that_refer_to_themselves_are_refused(tmp_path):
    path = tmp_path / "loop.yaml"
    path.write_text("name: x\nmodel: &m\n  extra: *m\n")
    with pytest.raises(PeftxError, match=r"loop.yaml:\d+: invalid YAML: an alias refers to a node that contains it"):
        load_recipe(path)


def test_ordinary_aliases_and_merge_keys_still_work():
    data = parse_yaml("base: &b {lr: 1.0e-3, steps: 4}\ntrain:\n  <<: *b\n  steps: 8\nseeds: &s [0, 1]\nalso: *s\n")
    assert data["train"] == {"lr": 1e-3, "steps": 8} and data["also"] == [0, 1]
    wide = "a: &a [" + ",".join(["1"] * 1000) + "]\nb: [" + ",".join(["*a"] * 50) + "]\n"
    assert len(parse_yaml(wide)["b"]) == 50  # 50,000 values: within the limit
