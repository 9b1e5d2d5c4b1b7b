"""The `peftx` command line: thin commands that parse, call one library function, and print.

User mistakes (`PeftxError`) print one line and exit with code 2; anything else is a bug and keeps
its traceback.

Each command imports what it calls inside its own function: `--help`, `--version`, a recipe's schema
errors, `recipe show` and `report` then answer without importing torch, transformers or peft, which
only the commands that build a model pay for (tests/test_cold_paths.py).
"""

from __future__ import annotations

import csv
import json
import sys
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.markup import escape

from peftx import __version__
from peftx.errors import PeftxError
from peftx.util.command_errors import err, print_error, user_errors, user_path
from peftx.util.echo import printable
from peftx.util.huge_pages import enable_huge_pages

app = typer.Typer(no_args_is_help=True, pretty_exceptions_enable=False)
recipe_app = typer.Typer(no_args_is_help=True, help="What a recipe may hold: every field, its type, default and help.")
app.add_typer(recipe_app, name="recipe")


def _version(value: bool) -> None:
    if value:
        print(f"peftx {__version__}")
        raise typer.Exit()


@app.callback()
def _root(version: Annotated[bool, typer.Option("--version", callback=_version, help="Print the version.")] = False):
    """Parameter-efficient fine-tuning of pretrained language models on non-language tasks."""


SetOption = Annotated[
    list[str] | None,
    typer.Option("--set", help="Override a recipe value: --set train.lr=3e-4 (repeatable; values are YAML)."),
]
ChangedWeightsOption = Annotated[
    bool,
    typer.Option(
        "--allow-changed-weights",
        help="Use the backbone although its weights' sha256 differs from the one the run recorded.",
    ),
]


@app.command()
@user_errors
def run(
    recipe: Annotated[Path, typer.Argument(help="Recipe YAML file.")],
    set_: SetOption = None,
    name: Annotated[str | None, typer.Option(help="Run name (default: the recipe's name).")] = None,
    overwrite: Annotated[
        bool, typer.Option(help="Replace an existing run of the same name (once this one has built).")
    ] = False,
    resume: Annotated[
        bool, typer.Option(help="Continue an unfinished run of the same name from its last checkpoint.")
    ] = False,
    allow_inexact: Annotated[
        bool,
        typer.Option(help="With --resume: go on with fresh random states where the checkpoint's are missing."),
    ] = False,
    allow_changed_weights: ChangedWeightsOption = False,
    quiet: Annotated[bool, typer.Option(help="No progress bar or summary.")] = False,
) -> None:
    """Train and evaluate a recipe; write runs/<name>/ (result.json, weights, resolved recipe).

    Exit codes: 0 done, 2 a mistake in the input (one line says which), 3 the run diverged,
    130 / 143 stopped by SIGINT / SIGTERM after a checkpoint (--resume continues it), 1 a bug."""
    from peftx.recipe import load_recipe
    from peftx.recipe.checks import check_global_batch
    from peftx.runs.display import RunDisplay
    from peftx.runs.run import run as run_recipe

    if overwrite and resume:
        raise PeftxError("--overwrite starts the run again and --resume continues it: choose one")
    if name is not None:
        from peftx.recipe.schema import check_run_name

        try:
            check_run_name(name)
        except ValueError as e:
            raise PeftxError(f"--name: {e}") from None
    overrides = list(set_ or []) + ([f"output.name={name}"] if name is not None else [])
    loaded = load_recipe(recipe, overrides)
    check_global_batch(loaded)  # before the run directory is made: the split's size is known without data
    run_recipe(
        loaded,
        overwrite=overwrite,
        resume=resume,
        display=RunDisplay(err, enabled=not quiet),
        allow_inexact=allow_inexact,
        allow_changed_weights=allow_changed_weights,
    )


@app.command()
@user_errors
def validate(
    recipes: Annotated[list[Path], typer.Argument(help="Recipe YAML files.")],
    set_: SetOption = None,
) -> None:
    """Check recipes (and sweep recipes, every point) without running them: the schema, the model built
    without weights (config overrides, layers, method, memory), the task's settings (exit 2 if any is
    invalid; every file is checked)."""
    from peftx.studies.sweep import load_sweep

    failed = 0
    for path in recipes:
        try:
            points = load_sweep(path, list(set_ or []))
            from peftx.runs.validate import check_recipes  # builds models (meta device): after the schema

            check_recipes([p.recipe for p in points], str(path))
            print(f"ok: {printable(str(path))}" + (f" ({len(points)} runs)" if len(points) > 1 else ""))
        except PeftxError as e:
            failed += 1
            print_error(e)
    if failed:
        raise typer.Exit(2)


@app.command()
@user_errors
def predict(
    run_dir: Annotated[Path, typer.Argument(help="A finished run directory.")],
    inputs: Annotated[Path, typer.Argument(help="One input per line, or a TSV with a Source column ('-': stdin).")],
    allow_changed_weights: ChangedWeightsOption = False,
) -> None:
    """Reload a trained run and print one prediction per input (TSV: input, prediction[, target])."""
    from peftx.runs.predict import predict_path

    preds = predict_path(run_dir, inputs, allow_changed_weights)
    csv.writer(sys.stdout, delimiter="\t", lineterminator="\n").writerows(preds.rows())
    if preds.accuracy is not None:
        err.print(f"accuracy against Target: {100 * preds.accuracy:.2f}% ({len(preds.labels)} inputs)")


@app.command()
@user_errors
def evaluate(
    run_dir: Annotated[Path, typer.Argument(help="A finished run directory.")],
    split: Annotated[
        list[str] | None, typer.Option(help="train | validation | test (repeatable; default: test).")
    ] = None,
    set_: SetOption = None,
    json_out: Annotated[bool, typer.Option("--json", help="Print JSON instead of lines.")] = False,
    allow_changed_weights: ChangedWeightsOption = False,
) -> None:
    """Reload a trained run and score it on its task's splits (its objective's metrics, loss), as trained or rebuilt
    with --set changes."""
    from peftx.runs.predict import Predictor, score_lines

    predictor = Predictor(run_dir, list(set_ or []), allow_changed_weights)
    scores = predictor.evaluate(split or ["test"])
    if json_out:
        print(json.dumps({"run": str(run_dir), "overrides": predictor.overrides, "splits": scores}, indent=1))
    else:
        print("\n".join(score_lines(scores, predictor.record)))


@app.command()
@user_errors
def export(
    run_dir: Annotated[Path, typer.Argument(help="A finished run directory.")],
    out_dir: Annotated[Path, typer.Argument(help="Directory to write (must not exist, or be empty).")],
    overwrite: Annotated[bool, typer.Option(help="Replace a non-empty OUT_DIR.")] = False,
    push_to_hub: Annotated[
        str | None, typer.Option("--push-to-hub", metavar="REPO", help="Also upload to this hub repository.")
    ] = None,
    private: Annotated[bool, typer.Option(help="With --push-to-hub: create the repository private.")] = False,
    allow_changed_weights: ChangedWeightsOption = False,
) -> None:
    """Write a run as plain peft / transformers files (adapter or body, input layer and head, task.json,
    a loading snippet, a model card)."""
    from peftx.export.exporter import export_run
    from peftx.export.hub import check_hub
    from peftx.export.hub import push_to_hub as push

    if push_to_hub:
        check_hub(push_to_hub)  # before minutes of exporting
    out_dir = user_path(out_dir, "OUT_DIR")
    done = export_run(run_dir, out_dir, overwrite=overwrite, allow_changed_weights=allow_changed_weights)
    for name in done.files:
        print(f"written: {printable(str(out_dir / name))}")
    if push_to_hub:
        print(f"pushed: {push(done.out_dir, push_to_hub, private)}")


StorageOption = Annotated[
    str | None,
    typer.Option(
        help="The sweeps' Optuna storage: a database URL (sqlite:///f.db, postgresql://..., mysql://...) that "
        "workers on many machines share, or a journal file (default: optuna-journal.log in each sweep's directory)."
    ),
]
HeartbeatOption = Annotated[
    int, typer.Option(min=1, help="Seconds between a running trial's heartbeats; 3 missed: its worker is dead.")
]


@app.command()
@user_errors
def sweep(
    recipes: Annotated[
        list[Path],
        typer.Argument(
            help="Recipes whose values may be lists (grid axes); several run as one queue.", metavar="RECIPE..."
        ),
    ],
    set_: SetOption = None,
    dry_run: Annotated[
        bool, typer.Option(help="Print the grid and each point's trainable budget; run nothing.")
    ] = False,
    overwrite: Annotated[bool, typer.Option(help="Redo finished points too.")] = False,
    workers: Annotated[
        int, typer.Option(min=1, help="Worker processes sharing the grid (one GPU each where there are enough).")
    ] = 1,
    quiet: Annotated[bool, typer.Option(help="No progress bars.")] = False,
    storage: StorageOption = None,
    heartbeat: HeartbeatOption = 60,
) -> None:
    """Run a grid of runs (models x methods x seeds x lr ...), or a search (`search:`), as an Optuna study
    named after the sweep; finished points are skipped, unfinished ones resume from their checkpoints.
    Any number of `peftx sweep` processes, on any machines sharing --storage, run one sweep together.
    Several recipes are one queue: a worker waiting on one sweep's tuning stage runs the next sweep's.

    Exit codes: 0 every point finished (diverged and pruned points are listed), 1 a point failed, 2 a
    mistake in the input, 130 / 143 stopped by SIGINT / SIGTERM."""
    from peftx.recipe.checks import check_global_batch
    from peftx.runs.display import RunDisplay
    from peftx.studies.sweep import load_sweeps

    points = load_sweeps(recipes, list(set_ or []))
    for point in points:
        try:
            check_global_batch(point.recipe)
        except PeftxError as e:
            raise PeftxError(f"{point.name}: {e}") from None
    if dry_run:
        _print_plan(points)
        return
    from peftx.studies.sweep_worker import run_sweep  # torch and the studies: only once points run
    from peftx.studies.workers import run_workers

    shared = {"storage": storage, "heartbeat": heartbeat}
    if workers > 1:
        if overwrite:
            raise PeftxError("--overwrite with --workers: each worker would redo every point; run one worker")
        raise typer.Exit(run_workers(recipes, list(set_ or []), workers, points, log=err.print, **shared))
    out = run_sweep(points, overwrite, lambda: RunDisplay(err, enabled=not quiet), log=err.print, **shared)
    if out.pruned:
        err.print(f"{len(out.pruned)} run(s) pruned: {', '.join(out.pruned)}")
    if out.diverged:
        err.print(f"[yellow]{len(out.diverged)} run(s) diverged:[/] {', '.join(out.diverged)}")
    if out.failed:
        err.print(f"[red]{len(out.failed)} run(s) failed:[/] {', '.join(out.failed)} (see their result.json)")
        raise typer.Exit(1)


def _print_plan(points: list) -> None:
    """`sweep --dry-run`'s table: each point's state and trainable budget."""
    from rich.table import Table

    from peftx.model.budget import fmt_count
    from peftx.studies.sweep_plan import plan

    table = Table(title=f"{len(points)} runs")
    for col in ("run", "state", "trainable", "total", "trainable %"):
        table.add_column(col, justify="left" if col in ("run", "state") else "right")
    for p in plan(points):
        table.add_row(p.name, p.state, fmt_count(p.trainable), fmt_count(p.total), f"{p.trainable_pct:.3f}")
    Console().print(table)


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
    from peftx.studies.budget import budget_command

    console = Console()
    if not console.is_terminal:  # a file or pipe: no need to squeeze the table into 80 columns
        console = Console(width=200)
    out = budget_command(
        models=_names(models),
        methods=_names(methods),
        task=task,
        recipe=recipe,
        overrides=list(set_ or []),
        target=target,
        fmt=format_,
        emit_dir=emit_recipes,
        use_cache=not no_cache,
        console=console,
    )
    sys.stdout.write(out.text)
    for path in out.written:
        err.print(f"written: {escape(printable(str(path)))}", highlight=False)


@app.command()
@user_errors
def report(
    runs: Annotated[Path, typer.Argument(help="Directory searched for result.json files.")],
    out: Annotated[Path | None, typer.Option(help="Where to write report.md and plots (default: RUNS).")] = None,
) -> None:
    """Markdown tables (mean ± SEM over distinct seeds, lr chosen on validation, one per task and data
    source) and PNG plots from result files; runs that did not complete are listed apart."""
    from peftx.studies.report.writer import write_report

    out = user_path(out, "--out") if out is not None else None
    unreadable: list[str] = []
    for path in write_report(runs, out, unreadable=unreadable):
        print(f"written: {printable(str(path))}")
    for line in unreadable:  # also listed in report.md
        err.print(f"unreadable: {escape(printable(line))}", highlight=False)


@recipe_app.command("show")
@user_errors
def recipe_show(
    section: Annotated[
        str | None,
        typer.Argument(help="model | task | input | method | train | output | recipe, or a plug-in: method.lora."),
    ] = None,
) -> None:
    """Print every field of a recipe section (the plug-ins registered now): type, default, help."""
    from peftx.recipe.fields import render_docs

    render_docs(section, Console() if Console().is_terminal else Console(width=160))


def main() -> None:
    """The `peftx` command. Usage mistakes (a missing argument, an unknown option, a bad value) are
    printed as one line, exit code 2, like every other mistake in the input."""
    enable_huge_pages()  # before any command imports torch, which reads it once
    try:
        code = app(standalone_mode=False)
    except Exception as e:  # typer's vendored click exceptions: matched by what they offer, not by a private path
        if not (hasattr(e, "format_message") and hasattr(e, "exit_code")):
            raise
        ctx = getattr(e, "ctx", None)
        where = ctx.command_path if ctx is not None else "peftx"
        print_error(PeftxError(f"{where}: {e.format_message()} (see {where} --help)"))
        sys.exit(e.exit_code)
    sys.exit(code if isinstance(code, int) else 0)
