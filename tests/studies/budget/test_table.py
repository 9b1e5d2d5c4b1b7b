"""Budget tables: target matching on real models, the rows' settings and groups, and the row cache."""

from __future__ import annotations

import subprocess
import sys

import pytest
import yaml

import peftx.studies.budget.table as bt
from peftx.recipe import validate_recipe
from peftx.studies.budget import BudgetRequest, Target, budget_table, model_budget
from peftx.training.builder import build_model, recipe_budget
from tests.studies.budget.conftest import write_recipe

KNOB_METHODS = {"lora": "r", "prefix": "length", "prompt": "length", "layers": "top"}


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
        "import sys; from pathlib import Path; from peftx.studies.budget import budget_command; "
        f"print(budget_command(recipe=Path({str(path)!r}), methods=['prefix'], fmt='markdown').text); "
        "assert 'torch' not in sys.modules, 'torch imported'"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert "| gpt2 | prefix | length=16 |" in out.stdout
