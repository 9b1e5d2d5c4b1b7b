"""What a run shows on the terminal: a header, a live progress bar, a summary. Nothing here decides
anything; it only prints."""

from __future__ import annotations

from typing import TYPE_CHECKING

from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn
from rich.table import Table

from peftx.model.budget import Budget, fmt_count
from peftx.spec.objective import format_metric
from peftx.training.points import EvalPoint, Point, TrainPoint

if TYPE_CHECKING:
    from peftx.runs.record import RunRecord


class RunDisplay:
    """Header, progress bar (loss, accuracy, examples/s, ETA) and summary of one run."""

    def __init__(self, console: Console | None = None, enabled: bool = True) -> None:
        self.console = console or Console(stderr=True)
        self.enabled = enabled
        self.progress: Progress | None = None
        self.task = None
        self.last: TrainPoint | None = None  # for the plain line printed at the next evaluation

    def header(
        self, name: str, provenance: dict, method: str, budget: Budget, notes: list[str], precision: str
    ) -> None:
        if not self.enabled:
            return
        src = provenance.get("name", provenance["source"])
        init = provenance.get("init") or ("pretrained" if provenance["pretrained"] else "scratch")
        kind = {"scratch": "from scratch", "self_pretrained": "self-pretrained"}.get(init, init)
        if provenance.get("body", "full") != "full":
            kind += f", body {provenance['body']}"
        self.console.print(
            f"[bold]{escape(name)}[/]: {provenance['family']} {escape(src)} ({kind}), method {method}, "
            f"precision {precision}"
        )
        self.console.print(
            f"parameters: {fmt_count(budget.trainable)} trainable of {fmt_count(budget.total)} "
            f"({budget.trainable_pct:.3f}%)"
        )
        for note in notes:
            self.console.print(f"[dim]{escape(note)}[/]")

    def message(self, text: str) -> None:
        if self.enabled:
            self.console.print(escape(text), highlight=False)

    def start(self, total_steps: int, completed: int = 0) -> None:
        """A progress bar over the run's steps (`completed`: where a resumed run starts)."""
        if not self.enabled:
            return
        self.progress = Progress(
            TextColumn("train"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("loss {task.fields[loss]}  val {task.fields[acc]}  {task.fields[speed]} ex/s"),
            TimeElapsedColumn(),
            TextColumn("ETA"),
            TimeRemainingColumn(),
            console=self.console,
        )
        if self.console.is_terminal:  # a log file gets plain lines (step), not the bar's last frame
            self.progress.start()
        self.task = self.progress.add_task(
            "train", total=total_steps, completed=completed, loss="-", acc="-", speed="-"
        )

    def step(self, point: Point) -> None:
        """Show a point of the training loop: a log step moves the bar, an evaluation sets its accuracy."""
        if self.progress is None:
            return
        if not self.console.is_terminal:  # logs get one plain line per evaluation instead of a live bar
            if isinstance(point, EvalPoint):
                last = self.last
                loss = _num(last.loss if last else None, ".3f")
                speed = _num(last.examples_per_s if last else None, ".1f")
                name, value = _primary(point)
                self.console.print(
                    f"step {point.step}: train loss {loss}, val {_short(name)} {format_metric(name, value)}, "
                    f"{speed} ex/s"
                )
            else:
                self.last = point
            return
        if isinstance(point, EvalPoint):
            name, value = _primary(point)
            self.progress.update(self.task, acc=f"{_short(name)} {format_metric(name, value, digits=1)}")
        else:
            self.progress.update(
                self.task,
                completed=point.step,
                loss=_num(point.loss, ".3f"),
                speed=_num(point.examples_per_s, ".0f"),
            )

    def stop(self) -> None:
        if self.progress is not None:
            if self.console.is_terminal:
                self.progress.stop()
            self.progress = None

    def summary(self, record: RunRecord, run_dir) -> None:
        if not self.enabled:
            return
        m, b, t = record.metrics, record.budget, record.timing
        table = Table(title="result", show_header=True)
        table.add_column("")
        table.add_column(f"test {m.primary}", justify="right")
        table.add_row("this run", format_metric(m.primary, m.value("test")))
        for name, value in record.baselines.items():
            table.add_row(f"baseline: {name.replace('_', ' ')}", format_metric(m.primary, value))
        self.console.print(table)
        procs = record.processes
        spread = f" over {procs.world_size} processes" if procs.world_size > 1 else ""
        self.console.print(
            f"trainable {fmt_count(b.trainable)} / {fmt_count(b.total)} parameters ({b.trainable_pct:.3f}%); "
            f"best validation {m.primary} {format_metric(m.primary, m.value('val'))} at step {m.selected_step}; "
            f"{t.train_examples_per_s:.1f} train examples/s{spread}; {t.wall_seconds:.0f} s"
        )
        self.console.print(f"written: {run_dir}/")


def _primary(point: EvalPoint) -> tuple[str, float | None]:
    """The evaluation's primary metric (the objective lists it first) and its value."""
    if not point.val_metrics:
        return "accuracy", point.val_accuracy
    return next(iter(point.val_metrics.items()))


def _short(name: str) -> str:
    return "acc" if name == "accuracy" else name


def _num(value: float | None, spec: str) -> str:
    """A logged number, or '-' where none was logged yet (or every step of the window was skipped)."""
    return "-" if value is None else format(value, spec)
