"""Recipes on tiny models for the budget tests, and one small table (t5, three methods) they share."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from peftx.studies.budget import BudgetRequest, BudgetRow, budget_table
from peftx.studies.budget.table import FROM_RECIPE
from tests.support.tiny import tiny_recipe


def write_recipe(tmp_path: Path, family: str, method: dict | None = None) -> Path:
    """A tiny recipe of `family` written to a file (without a method section when `method` is None)."""
    raw = tiny_recipe(family, tmp_path)
    if method is None:
        del raw["method"]
    else:
        raw["method"] = method
    path = tmp_path / f"tiny_{family}.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


@pytest.fixture(scope="package")
def rows(tmp_path_factory) -> list[BudgetRow]:
    tmp = tmp_path_factory.mktemp("table")
    path = write_recipe(tmp, "t5")
    req = BudgetRequest(recipe=path, models=[FROM_RECIPE], methods=["lora:r=2", "frozen:preset=ln_only", "full"])
    return budget_table(req, use_cache=False)
