"""`peftx budget`: the target matcher, tables in every format, emitted recipes, the row cache, and the
command line's errors."""

from __future__ import annotations

import csv
import io
import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from rich.console import Console
from typer.testing import CliRunner

import peftx.budget_table as bt
from peftx.budget import model_budget, recipe_budget
from peftx.budget_format import render, render_csv, render_json, render_markdown
from peftx.budget_table import BudgetRequest, budget_table
from peftx.budget_target import Target, largest_within, parse_target
from peftx.build import build_model
from peftx.cli import app
from peftx.errors import PeftxError
from peftx.recipe import load_recipe, validate_recipe
from tests.conftest import tiny_recipe

runner = CliRunner()
LORA_RECIPE = Path(__file__).parent.parent / "recipes" / "listops_lora.yaml"
KNOB_METHODS = {"lora": "r", "prefix": "length", "prompt": "length", "layers": "top"}


def write_recipe(tmp_path: Path, family: str, method: dict | None = None) -> Path:
    raw = tiny_recipe(family, tmp_path)
    if method is None:
        del raw["method"]
    else:
        raw["method"] = method
    path = tmp_path / f"tiny_{family}.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


# ---- the search -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "f, bound, low, high, expected",
    [
        (lambda k: 1000 + 37 * k, 1000 + 37 * 13 + 5, 1, 1024, 13),  # affine: the usual budget
        (lambda k: 1000 + 37 * k, 1000 + 37 * 13, 1, 1024, 13),  # exactly on a value: it fits
        (lambda k: 10 * k * k, 4000, 1, 1024, 20),  # convex
        (lambda k: [0, 5, 5, 5, 9, 30][k], 8, 1, 5, 3),  # plateaus (layers of equal size)
        (lambda k: 100 + k, 50, 1, 1024, None),  # even the smallest is over
        (lambda k: k, 5000, 1, 1024, 1024),  # everything fits: the largest
        (lambda k: k, 5, 3, 2, None),  # empty range
    ],
)
def test_largest_within_finds_the_largest_fitting_knob(f, bound, low, high, expected):
    calls = []

    def g(k):
        calls.append(k)
        return f(k)

    assert largest_within(g, bound, low, high) == expected
    if expected is not None and expected < high:
        assert f(expected) <= bound < f(expected + 1)
    assert len(calls) <= 3 * (high - low).bit_length() + 4


def test_affine_budgets_take_four_counts():
    calls = []
    largest_within(lambda k: calls.append(k) or 5000 + 1536 * k, 5000 + 1536 * 77 + 100, 1, 1024)
    assert len(calls) <= 4


@pytest.mark.parametrize(
    "text, target",
    [
        ("2%", Target(2.0, True)),
        ("0.5 %", Target(0.5, True)),
        ("1.5M", Target(1.5e6, False)),
        ("150k", Target(1.5e5, False)),
        ("2e6", Target(2e6, False)),
        ("1234", Target(1234.0, False)),
    ],
)
def test_parse_target(text, target):
    assert parse_target(text) == target


@pytest.mark.parametrize("text", ["two", "2%%", "0%", "150%", "-1", "0.2", "1.5Q", ""])
def test_bad_target_is_one_line(text):
    with pytest.raises(PeftxError, match="--target") as e:
        parse_target(text)
    assert "\n" not in str(e.value)


# ---- matching a target on real models ------------------------------------------------------------


@pytest.mark.parametrize("method", KNOB_METHODS)
def test_target_match_is_the_largest_knob_within_it(family, method, tmp_path):
    """The matched setting, counted on a real instantiated model, is within the target; one knob step
    more is over it."""
    path = write_recipe(tmp_path, family, {"name": method, KNOB_METHODS[method]: 1})
    probe = validate_recipe(yaml.safe_load(path.read_text()))
    k = 1 if method == "layers" else 2  # BERT and GPT-2 tiny have two layers
    at = {i: recipe_budget(probe.model_copy(update={"method": probe.method.with_knob(i)})) for i in (k, k + 1)}
    target = Target(float((at[k].trainable + at[k + 1].trainable) // 2), percent=False)  # between k and k + 1
    (row,) = budget_table(BudgetRequest(recipe=path, target=target), use_cache=False)
    assert row.status == "match" and row.knob == KNOB_METHODS[method] and row.setting.endswith(f"={k}")
    matched = validate_recipe(row.recipe)
    real, _ = build_model(matched, matched.task.describe())
    assert model_budget(real) == row.budget and row.budget.trainable <= target.value
    over = matched.model_copy(update={"method": matched.method.with_knob(k + 1)})
    real_over, _ = build_model(over, over.task.describe())
    assert model_budget(real_over).trainable == row.next["trainable"] > target.value


def test_percent_target_statuses(tmp_path):
    path = write_recipe(tmp_path, "bart")
    req = BudgetRequest(recipe=path, methods=["lora", "prompt", "ia3", "full", "layers"], target=Target(30.0, True))
    rows = {r.method: r for r in budget_table(req, use_cache=False)}
    lora = rows["lora"]
    assert lora.status == "match" and lora.budget.trainable_pct <= 30 < lora.next["trainable_pct"]
    # a prompt may take half of BART's 128 positions
    assert rows["prompt"].status == "max" and rows["prompt"].setting == "length=64" and rows["prompt"].next is None
    assert rows["ia3"].status == "fixed" and rows["full"].status == "over"
    tiny = BudgetRequest(recipe=path, methods=["lora", "layers"], target=Target(100.0, False))
    for row in budget_table(tiny, use_cache=False):  # nothing trains only 100 parameters: the smallest is shown
        assert row.status == "none" and row.setting in ("r=1", "top=1") and row.budget.trainable > 100


# ---- tables ---------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def rows(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("table")
    path = write_recipe(tmp, "t5")
    req = BudgetRequest(recipe=path, models=[bt.FROM_RECIPE], methods=["lora:r=2", "frozen:preset=ln_only", "full"])
    return budget_table(req, use_cache=False)


def test_rows_carry_settings_and_groups(rows):
    assert [(r.model, r.family, r.method, r.setting) for r in rows] == [
        ("t5-small", "t5", "lora", "r=2"),
        ("t5-small", "t5", "frozen", "preset=ln_only"),
        ("t5-small", "t5", "full", ""),
    ]
    lora, ln, full = (r.budget for r in rows)
    assert lora.trainable == lora.trainable_in("adapter") + lora.trainable_in("head")
    assert ln.trainable_in("body") == ln.by_role["layer_norm"]["trainable"]
    assert full.trainable == full.total and full.quantizable == 0


def test_csv_round_trips(rows):
    parsed = list(csv.DictReader(io.StringIO(render_csv(rows))))
    assert len(parsed) == len(rows)
    for line, row in zip(parsed, rows):
        assert (line["model"], line["method"], line["setting"]) == (row.model, row.method, row.setting)
        assert int(line["total"]) == row.budget.total and int(line["trainable"]) == row.budget.trainable
        assert int(line["trainable_adapter"]) == row.budget.trainable_in("adapter")
        assert float(line["trainable_pct"]) == pytest.approx(row.budget.trainable_pct)
        fp32 = [int(line[f"mem_fp32_{k}"]) for k in ("weights", "gradients", "optimizer")]
        assert fp32 == [4 * row.budget.total, 4 * row.budget.trainable, 8 * row.budget.trainable]
        assert int(line["mem_fp32_total"]) == sum(fp32)


def test_json_round_trips(rows):
    data = json.loads(render_json(rows, None, "listops"))
    assert data["target"] is None and set(data["memory_schemes"]) == {"fp32", "bf16", "int8_weights", "adamw_8bit"}
    for item, row in zip(data["rows"], rows, strict=True):
        assert bt.BudgetRow.from_dict({k: v for k, v in item.items() if k != "memory"} | {"recipe": row.recipe}) == row
        assert item["memory"]["bf16"]["weights"] == 2 * row.budget.total


def test_markdown_and_terminal_tables(rows):
    text = render_markdown(rows, Target(2.0, True), "listops")
    table = [line for line in text.splitlines() if line.startswith("|")]
    assert len(table) == 2 + len(rows) and len({line.count("|") for line in table}) == 1
    assert "within 2%?" in table[0]
    console = Console(file=io.StringIO(), width=250)
    assert render(rows, "table", None, "listops", console) is None
    assert "preset=ln_only" in console.file.getvalue()
    with pytest.raises(PeftxError, match="--format 'xml'"):
        render(rows, "xml", None, "listops")


# ---- cache ----------------------------------------------------------------------------------------


def test_cached_rows_are_reused_and_keys_follow_the_request(tmp_path, monkeypatch):
    path = write_recipe(tmp_path, "bert")
    req = BudgetRequest(recipe=path, methods=["lora", "bitfit"])
    first = budget_table(req)
    monkeypatch.setattr(bt, "compute_rows", lambda *a: pytest.fail("counted again"))
    assert budget_table(req) == first
    keys = {bt.row_key(r, bt.FROM_RECIPE, "lora") for r in (req, BudgetRequest(recipe=path, target=Target(2, True)))}
    path.write_text(path.read_text().replace("intermediate_size: 64", "intermediate_size: 48"))
    keys.add(bt.row_key(req, bt.FROM_RECIPE, "lora"))
    assert len(keys) == 3


def test_a_cached_table_prints_without_torch(tmp_path):
    path = write_recipe(tmp_path, "gpt2")
    budget_table(BudgetRequest(recipe=path, methods=["prefix"]))
    code = (
        "import sys; from pathlib import Path; from peftx.budget_table import BudgetRequest, budget_table; "
        "from peftx.budget_format import render_markdown; "
        f"rows = budget_table(BudgetRequest(recipe=Path({str(path)!r}), methods=['prefix'])); "
        "print(render_markdown(rows, None, 'listops')); assert 'torch' not in sys.modules, 'torch imported'"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert "| gpt2 | prefix | length=16 |" in out.stdout


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
