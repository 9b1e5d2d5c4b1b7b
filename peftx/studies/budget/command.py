"""What `peftx budget` does, as one function the command line and tests call: check the options,
count (or read from the cache) the table, render it, and write the recipes it was asked for."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import yaml

from peftx.errors import PeftxError
from peftx.studies.budget.format import check_format, emit_recipes, render
from peftx.studies.budget.table import BudgetRequest, budget_table
from peftx.studies.budget.target import parse_target

SECTIONS = ("model", "task", "input", "method", "train", "output", "seed")

if TYPE_CHECKING:
    from rich.console import Console


@dataclass
class BudgetOutput:
    """What `peftx budget` prints and writes."""

    text: str  # the table in the requested format
    written: list[Path] = field(default_factory=list)  # recipes written (--emit-recipes)


def _refuse_sweep(recipe: Path) -> None:
    """Refuse a sweep recipe (a whole section as a list, or a `grid:`): it counts as many models as it
    has points. Read without the schema (which imports torch: a cached table needs none); fields that
    are lists are refused where the recipe is validated."""
    try:
        raw = yaml.safe_load(Path(recipe).read_bytes())
    except Exception:  # unreadable or not YAML: reading the recipe for the table reports it in one line
        return
    if not isinstance(raw, dict):
        return
    axes = [k for k in SECTIONS if isinstance(raw.get(k), list)] + (["grid"] if "grid" in raw else [])
    if axes:
        raise PeftxError(
            f"{recipe}: holds grid axes ({', '.join(axes)}); count its points with `peftx sweep {recipe} --dry-run`, "
            "or pass a plain recipe"
        )


def budget_command(
    models: list[str] | None = None,
    methods: list[str] | None = None,
    task: str | None = None,
    recipe: Path | None = None,
    overrides: list[str] | None = None,
    target: str | None = None,
    fmt: str = "table",
    emit_dir: Path | None = None,
    use_cache: bool = True,
    console: Console | None = None,
) -> BudgetOutput:
    """A budget table as text, and the recipes of its rows if asked.

    Args:
        models: sources (hub ids, 'offline', local directories); None: the recipe's model, else the
            default models.
        methods: `name[:key=value...]`; None: the recipe's method, else the default methods.
        task: the task whose inputs and classes size the input layer and head; None: the recipe's,
            else listops.
        recipe: a recipe whose model, task, input, method and train sections rows start from.
        overrides: `key=value` changes to that recipe (or to the default template).
        target: a trainable budget such as "2%" or "1.5M": each method's largest setting within it.
        fmt: one of `FORMATS` (checked before anything is counted).
        emit_dir: write a recipe per row within the target (every row without one) here.
        use_cache: reuse cached rows (counted rows are cached either way).
        console: what the "table" format is laid out for (its width; styles where it is a terminal).

    Returns:
        The text to print and the recipes written.

    Raises:
        PeftxError: an unknown format, a bad target, an unknown model, method or task, or a recipe
            that does not validate.
    """
    check_format(fmt)
    if recipe is not None:
        _refuse_sweep(recipe)
    req = BudgetRequest(
        models=models,
        methods=methods,
        task=task,
        recipe=recipe,
        overrides=list(overrides or []),
        target=parse_target(target) if target is not None else None,
    )
    rows = budget_table(req, use_cache=use_cache)
    text = render(rows, fmt, req.target, rows[0].recipe["task"]["name"], console)
    written = [] if emit_dir is None else emit_recipes(rows, emit_dir, req.command(emit_dir), req.target)
    return BudgetOutput(text, written)
