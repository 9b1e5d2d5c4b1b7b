"""`peftx budget` on the command line and as the library function it calls: emitted recipes, and
one-line errors."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from peftx.cli import app
from peftx.errors import PeftxError
from peftx.recipe import load_recipe
from peftx.studies.budget import budget_command
from peftx.training.builder import recipe_budget
from tests.studies.budget.conftest import write_recipe

runner = CliRunner()
LORA_RECIPE = Path(__file__).parents[3] / "recipes" / "listops_lora.yaml"


# ---- command line and emitted recipes --------------------------------------------------------------


def test_budget_command_emits_valid_recipes(tmp_path):
    path = write_recipe(tmp_path, "bart", {"name": "lora", "r": 4, "targets": ["attention"]})
    out_dir = tmp_path / "emitted"
    args = ["budget", "--recipe", str(path), "--methods", "lora,prefix,bitfit,full", "--target", "25%"]
    result = runner.invoke(app, [*args, "--format", "json", "--emit-recipes", str(out_dir)])
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    assert data["target"] == {"value": 25.0, "percent": True}
    fitting = [r for r in data["rows"] if r["status"] in ("match", "max", "fixed")]
    written = sorted(out_dir.glob("*.yaml"))
    assert [p.name for p in written] == sorted(f"listops_bart-base_{r['method']}.yaml" for r in fitting)
    assert "full" not in {r["method"] for r in fitting}
    for p, row in zip(written, sorted(fitting, key=lambda r: r["method"])):
        lines = p.read_text().splitlines()
        assert lines[0] == f"# Run: peftx run {(out_dir / p.name).as_posix()}"
        assert lines[1].startswith("# Written by: peftx budget --recipe") and "--target 25%" in lines[1]
        recipe = load_recipe(p)
        assert recipe.model.pretrained is False and recipe.model.config_overrides["d_model"] == 32
        assert recipe_budget(recipe).trainable == row["budget"]["trainable"]
    lora = load_recipe(out_dir / "listops_bart-base_lora.yaml").method
    assert lora.targets == ["attention"]  # the recipe's own settings stay


def test_emitted_hub_recipe_says_it_needs_the_hub(tmp_path):
    out_dir = tmp_path / "paper"
    methods = "prompt,prompt:length=4"
    result = runner.invoke(app, ["budget", "--model", "t5-small", "--methods", methods, "--emit-recipes", str(out_dir)])
    assert result.exit_code == 0, result.output
    text = (out_dir / "listops_t5-small_prompt.yaml").read_text()
    assert "Hugging Face hub" in text and "model.pretrained=false" in text
    assert load_recipe(out_dir / "listops_t5-small_prompt.yaml").model.pretrained is True
    assert load_recipe(out_dir / "listops_t5-small_prompt_length4.yaml").method.length == 4


@pytest.mark.parametrize(
    "args, message",
    [
        (["--models", "no-such-model-xyz", "--methods", "lora"], "no-such-model-xyz"),
        (["--models", "t5-small", "--methods", "lorax"], "unknown method 'lorax'"),
        (["--models", "t5-small", "--methods", "lora:r"], "expected name:key=value"),
        (["--models", "t5-small", "--methods", "lora:r=big"], "method.r"),
        (["--models", "t5-small", "--target", "lots"], "--target 'lots'"),
        (["--models", "t5-small", "--format", "xml"], "--format 'xml'"),
        (["--models", "t5-small", "--task", "sudoku"], "unknown task 'sudoku'"),
        (["--recipe", "missing.yaml"], "missing.yaml: no such recipe file"),
        (["--recipe", str(LORA_RECIPE), "--set", "seed=[0,1]"], "holds grid axes (seed)"),
        (["--models", ",", "--methods", "lora"], "at least one"),
    ],
)
def test_budget_command_errors_are_one_line(args, message):
    result = runner.invoke(app, ["budget", "--no-cache", *args])
    assert result.exit_code == 2, result.output
    assert message in result.stderr and result.stderr.strip().count("\n") == 0
    assert "Traceback" not in result.output


def test_the_command_prints_what_budget_command_returns(tmp_path):
    path = write_recipe(tmp_path, "gpt2")
    out = budget_command(recipe=path, methods=["lora", "bitfit"], fmt="csv", emit_dir=tmp_path / "emitted")
    assert out.text.splitlines()[0].startswith("model,family,method,setting") and len(out.text.splitlines()) == 3
    assert sorted(out.written) == sorted((tmp_path / "emitted").glob("*.yaml")) and len(out.written) == 2
    args = ["budget", "--recipe", str(path), "--methods", "lora,bitfit", "--format", "csv"]
    result = runner.invoke(app, [*args, "--emit-recipes", str(tmp_path / "again")])
    assert result.exit_code == 0, result.output
    assert result.stdout == out.text
    again = [tmp_path / "again" / p.name for p in out.written]  # in the rows' order
    assert sorted(again) == sorted((tmp_path / "again").glob("*.yaml"))
    assert result.stderr.replace("\n", "") == "".join(f"written: {p}" for p in again)  # stderr wraps at 80


def test_the_format_is_checked_before_anything_else():
    with pytest.raises(PeftxError, match="^--format 'xml': expected one of table, markdown, csv, json$"):
        budget_command(models=["no-such-model-xyz"], target="lots", fmt="xml")
