"""The `peftx` command line: thin commands that parse, call one library function, and print.

User mistakes (`PeftxError`) print one line and exit with code 2; anything else is a bug and keeps
its traceback.
"""

from __future__ import annotations

import csv
import functools
import json
import sys
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.markup import escape

from peftx.errors import PeftxError

app = typer.Typer(
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
    help="Parameter-efficient fine-tuning of pretrained language models on non-language tasks.",
)
err = Console(stderr=True)


def user_errors(fn):
    """Turn a PeftxError into `error: <message>` and exit code 2."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except PeftxError as e:
            err.print(f"[red]error:[/] {escape(str(e))}", highlight=False, soft_wrap=True)
            raise typer.Exit(2) from None

    return wrapper


SetOption = Annotated[
    list[str] | None,
    typer.Option("--set", help="Override a recipe value: --set train.lr=3e-4 (repeatable; values are YAML)."),
]


@app.command()
@user_errors
def run(
    recipe: Annotated[Path, typer.Argument(help="Recipe YAML file.")],
    set_: SetOption = None,
    name: Annotated[str | None, typer.Option(help="Run name (default: the recipe's name).")] = None,
    overwrite: Annotated[bool, typer.Option(help="Replace an existing run directory of the same name.")] = False,
    quiet: Annotated[bool, typer.Option(help="No progress bar or summary.")] = False,
) -> None:
    """Train and evaluate a recipe; write runs/<name>/ (result.json, weights, resolved recipe)."""
    from peftx.display import RunDisplay
    from peftx.recipe import load_recipe
    from peftx.run import run as run_recipe

    overrides = list(set_ or []) + ([f"output.name={name}"] if name else [])
    loaded = load_recipe(recipe, overrides)
    run_recipe(loaded, overwrite=overwrite, display=RunDisplay(err, enabled=not quiet))


@app.command()
@user_errors
def validate(
    recipes: Annotated[list[Path], typer.Argument(help="Recipe YAML files.")],
    set_: SetOption = None,
) -> None:
    """Check recipes (and sweep recipes, every point) without running them (exit 2 if any is invalid)."""
    from peftx.sweep import load_sweep

    failed = 0
    for path in recipes:
        try:
            points = load_sweep(path, list(set_ or []))
            print(f"ok: {path}" + (f" ({len(points)} runs)" if len(points) > 1 else ""))
        except PeftxError as e:
            failed += 1
            err.print(f"[red]error:[/] {escape(str(e))}", highlight=False, soft_wrap=True)
    if failed:
        raise typer.Exit(2)


@app.command()
@user_errors
def predict(
    run_dir: Annotated[Path, typer.Argument(help="A finished run directory.")],
    inputs: Annotated[Path, typer.Argument(help="One input per line, or a TSV with a Source column ('-': stdin).")],
) -> None:
    """Reload a trained run and print one prediction per input (TSV: input, prediction[, target])."""
    from peftx.predict import Predictor

    if str(inputs) == "-":
        text = sys.stdin.read()
    elif inputs.is_file():
        text = inputs.read_text()
    else:
        raise PeftxError(f"{inputs}: no such file")
    lines = [line for line in text.splitlines() if line.strip()]
    targets = None
    if lines and lines[0].split("\t")[0] == "Source":
        rows = list(csv.DictReader(lines, delimiter="\t"))
        lines = [r["Source"] for r in rows]
        targets = [r.get("Target") for r in rows] if "Target" in rows[0] else None
    predictor = Predictor(run_dir)
    preds = predictor.predict(lines)
    out = csv.writer(sys.stdout, delimiter="\t", lineterminator="\n")
    out.writerow(["input", "prediction"] + (["target"] if targets else []))
    for i, (line, pred) in enumerate(zip(lines, preds)):
        out.writerow([line, pred] + ([targets[i]] if targets else []))
    if targets:
        acc = sum(p == t for p, t in zip(preds, targets)) / max(len(preds), 1)
        err.print(f"accuracy against Target: {100 * acc:.2f}% ({len(preds)} inputs)")


@app.command()
@user_errors
def evaluate(
    run_dir: Annotated[Path, typer.Argument(help="A finished run directory.")],
    split: Annotated[
        list[str] | None, typer.Option(help="train | validation | test (repeatable; default: test).")
    ] = None,
    set_: Annotated[
        list[str] | None,
        typer.Option(
            "--set",
            help="Rebuild with a changed recipe value, e.g. --set model.quantization=8bit: the same trained "
            "weights on an 8-bit body (repeatable).",
        ),
    ] = None,
    json_out: Annotated[bool, typer.Option("--json", help="Print JSON instead of lines.")] = False,
) -> None:
    """Reload a trained run and score it on its task's splits (accuracy, loss), as trained or rebuilt
    with --set changes."""
    from peftx.predict import Predictor

    predictor = Predictor(run_dir, list(set_ or []))
    scores = predictor.evaluate(split or ["test"])
    if json_out:
        print(json.dumps({"run": str(run_dir), "overrides": predictor.overrides, "splits": scores}, indent=1))
        return
    recorded = {"test": "test_accuracy", "validation": "val_accuracy"}
    metrics = predictor.result.get("metrics", {})
    for name, s in scores.items():
        line = f"{name}: accuracy {100 * s['accuracy']:.2f}%, loss {s['loss']:.4f} ({s['examples']} examples)"
        if name in recorded and recorded[name] in metrics:
            line += f"; at training: {100 * metrics[recorded[name]]:.2f}%"
        print(line)


@app.command()
@user_errors
def sweep(
    recipe: Annotated[Path, typer.Argument(help="Recipe whose values may be lists (grid axes).")],
    set_: SetOption = None,
    dry_run: Annotated[
        bool, typer.Option(help="Print the grid and each point's trainable budget; run nothing.")
    ] = False,
    overwrite: Annotated[bool, typer.Option(help="Redo finished points too.")] = False,
    quiet: Annotated[bool, typer.Option(help="No progress bars.")] = False,
) -> None:
    """Run a grid of runs (models x methods x seeds x lr ...); finished points are skipped on rerun."""
    from rich.table import Table

    from peftx.display import RunDisplay, fmt_count
    from peftx.sweep import load_sweep, point_state, run_sweep

    points = load_sweep(recipe, list(set_ or []))
    if dry_run:
        from peftx.budget import recipe_budget

        table = Table(title=f"{len(points)} runs")
        for col in ("run", "state", "trainable", "total", "trainable %"):
            table.add_column(col, justify="left" if col in ("run", "state") else "right")
        for p in points:
            b = recipe_budget(p.recipe)
            table.add_row(p.name, point_state(p), fmt_count(b.trainable), fmt_count(b.total), f"{b.trainable_pct:.3f}")
        Console().print(table)
        return
    failed = run_sweep(points, overwrite, lambda: RunDisplay(err, enabled=not quiet), log=err.print)
    if failed:
        err.print(f"[red]{len(failed)} run(s) failed:[/] {', '.join(failed)} (see their result.json)")
        raise typer.Exit(1)


def _names(text: str | None) -> list[str] | None:
    return None if text is None else [t.strip() for t in text.split(",") if t.strip()]


@app.command()
@user_errors
def budget(
    models: Annotated[
        str | None,
        typer.Option(
            "--models",
            "--model",
            help="Comma-separated sources: hub ids, 'offline', local model directories "
            "(default: bert-base-uncased,gpt2,t5-small,t5-base,facebook/bart-base,offline; with --recipe: its model).",
        ),
    ] = None,
    methods: Annotated[
        str | None,
        typer.Option(
            "--methods",
            "--method",
            help="Comma-separated methods, with settings as name:key=value (lora:r=16,frozen:preset=ln_only) "
            "(default: lora,prefix,prompt,ia3,bitfit,frozen,layers,full; with --recipe: its method).",
        ),
    ] = None,
    task: Annotated[
        str | None, typer.Option(help="Task whose inputs and classes size the input layer and head (default: listops).")
    ] = None,
    recipe: Annotated[
        Path | None, typer.Option(help="Recipe to start from: its model, task, input, method and train sections.")
    ] = None,
    set_: SetOption = None,
    target: Annotated[
        str | None,
        typer.Option(help="Trainable budget, e.g. 2% or 1.5M: each method's largest setting within it."),
    ] = None,
    format_: Annotated[str, typer.Option("--format", help="table | markdown | csv | json")] = "table",
    emit_recipes: Annotated[
        Path | None, typer.Option(help="Write a recipe per row (within the target) into this directory.")
    ] = None,
    no_cache: Annotated[
        bool, typer.Option("--no-cache", help="Recount every row instead of reusing cached rows.")
    ] = False,
) -> None:
    """Trainable parameters and training memory of models x methods, counted without weights."""
    from peftx.budget_format import FORMATS, render
    from peftx.budget_format import emit_recipes as write_recipes
    from peftx.budget_table import BudgetRequest, budget_table, parse_target

    if format_ not in FORMATS:
        raise PeftxError(f"--format {format_!r}: expected one of {', '.join(FORMATS)}")
    req = BudgetRequest(
        models=_names(models),
        methods=_names(methods),
        task=task,
        recipe=recipe,
        overrides=list(set_ or []),
        target=parse_target(target) if target is not None else None,
    )
    rows = budget_table(req, use_cache=not no_cache)
    console = Console()
    if not console.is_terminal:  # a file or pipe: no need to squeeze the table into 80 columns
        console = Console(width=200)
    text = render(rows, format_, req.target, rows[0].recipe["task"]["name"], console)
    if text is not None:
        sys.stdout.write(text)
    if emit_recipes is not None:
        for path in write_recipes(rows, emit_recipes, req.command(emit_recipes), req.target):
            err.print(f"written: {escape(str(path))}", highlight=False)


@app.command()
@user_errors
def report(
    runs: Annotated[Path, typer.Argument(help="Directory searched for result.json files.")],
    out: Annotated[Path | None, typer.Option(help="Where to write report.md and plots (default: RUNS).")] = None,
) -> None:
    """Markdown table (mean ± SEM over seeds, lr chosen on validation) and PNG plots from result files."""
    from peftx.report import write_report

    for path in write_report(runs, out):
        print(f"written: {path}")


def main() -> None:
    app()
