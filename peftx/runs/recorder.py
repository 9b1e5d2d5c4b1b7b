"""The life of one run's record (`RunRecorder`): started (new or resumed), a point at every log step and
evaluation, finished or failed. result.json follows the run as it goes, for anyone watching it, and
metrics.jsonl gets one line per point.

Only the main process writes; every process keeps the record, which the run returns. This module holds
what a run writes and when; what the files hold is `peftx.runs.record`'s.
"""

from __future__ import annotations

import contextlib
import shutil
import time
from pathlib import Path
from typing import TYPE_CHECKING

from peftx.errors import Diverged, Interrupted, PeftxError
from peftx.model.memory import model_memory
from peftx.recipe import dump_recipe
from peftx.runs.directory import RunDirDecision, fresh_run_dir
from peftx.runs.record import (
    RECIPE,
    BudgetRecord,
    Metrics,
    MetricsLog,
    Processes,
    RunRecord,
    Timing,
    check_same_backbone,
)
from peftx.runs.task_file import write_task_description
from peftx.runs.weights import save_weights
from peftx.training.checkpoints import CHECKPOINTS, read_progress
from peftx.training.points import EvalPoint, TrainPoint
from peftx.util.env import peak_memory, versions
from peftx.util.files import storage_problem

if TYPE_CHECKING:
    from peftx.model.budget import Budget
    from peftx.recipe import RecipeBase
    from peftx.training.job import TrainOutcome
    from peftx.training.session import Session


class RunRecorder:
    """The record of one run, from its start to its end, and the files that follow it.

    Args:
        run_dir: the run directory.
        recipe: the run's recipe.
        writes: whether this process writes the files (the main process); the others only keep the
            record in memory.

    Attributes:
        record: the run record (None until `start`).
    """

    def __init__(self, run_dir: Path, recipe: RecipeBase, writes: bool) -> None:
        self.run_dir = run_dir
        self.recipe = recipe
        self.writes = writes
        self.metrics = MetricsLog(run_dir)
        self.record: RunRecord | None = None
        self._t0 = time.perf_counter()

    @property
    def seconds(self) -> float:
        """Wall time since the recorder was made (the run's start)."""
        return time.perf_counter() - self._t0

    def fail_before_start(self, error: BaseException) -> None:
        """A new run that failed before training (building its model or data): a run directory whose
        record says why. It blocks no rerun (`plan_run_dir` replaces it)."""
        if not self.writes:
            return
        seconds, recipe = self.seconds, self.recipe
        record = RunRecord(
            name=recipe.run_name,
            recipe=recipe.to_dict(),
            seed=recipe.seed,
            precision=recipe.train.precision,
            versions=versions(),
            started=RunRecord.now(),
            status="interrupted" if isinstance(error, Interrupted | KeyboardInterrupt) else "failed",
            error=str(error) if isinstance(error, PeftxError) else f"{type(error).__name__}: {error}",
            timing=Timing(wall_seconds=seconds),
        )
        with fresh_run_dir(self.run_dir):
            record.write(self.run_dir)
            (self.run_dir / RECIPE).write_text(dump_recipe(recipe))

    def start(self, session: Session, budget: Budget, truncated: dict[str, int], decision: RunDirDecision) -> RunRecord:
        """Begin the record once everything is built: a new one, or the resumed run's with its progress as
        its checkpoint holds it; then write the run directory (a new run replaces an old one only now,
        and puts it back if writing fails).

        Args:
            session: the built session (its task loaded).
            budget: the model's parameter budget.
            truncated: examples cut to the model's length, by split.
            decision: what the run does with its directory ('new', 'replace' or 'resume').

        Returns:
            The record, as written.
        """
        recipe, task = self.recipe, session.task
        if decision.plan == "resume":
            record = self._resumed(decision)
            changed = check_same_backbone(record, session.provenance, decision.allow_changed_weights, self.run_dir)
            if changed:
                task.notes.append(f"resumed over changed backbone weights ({changed})")
        else:
            record = RunRecord(
                name=recipe.run_name,
                recipe=recipe.to_dict(),
                seed=recipe.seed,
                precision=session.precision,
                versions=versions(),
                started=RunRecord.now(),
            )
        record.backbone = session.provenance
        record.budget = BudgetRecord.model_validate(budget.to_dict())
        record.baselines = task.baselines
        record.data_notes = task.notes
        if truncated:
            record.truncated = truncated
        self.record = record
        if self.writes:
            self._write_start(session, resumed=decision.plan == "resume")
        return record

    def _resumed(self, decision: RunDirDecision) -> RunRecord:
        record = RunRecord.read(self.run_dir)
        record.status, record.error = "running", None
        # result.json may have gone further than the checkpoint, or not as far: the checkpoint decides
        record.history, record.train_log = read_progress(decision.checkpoint)
        record.resumed.append({"from_step": decision.step, "at": RunRecord.now()})
        record.recipe = self.recipe.to_dict()  # equal up to result-neutral fields (threads, trackers ...)
        return record

    def _write_start(self, session: Session, resumed: bool) -> None:
        if resumed:
            self.metrics.rewrite([*self.record.train_log, *self.record.history])
            self.save()
            (self.run_dir / RECIPE).write_text(dump_recipe(self.recipe))
            return
        with fresh_run_dir(self.run_dir):  # an old run is replaced only now, and put back if this fails
            self.save()
            (self.run_dir / RECIPE).write_text(dump_recipe(self.recipe))
            write_task_description(self.run_dir, session.task.info, session.model)  # task.json: inputs, outputs

    def save(self) -> None:
        """Write result.json as the record stands (the main process)."""
        if self.writes:
            self.record.write(self.run_dir)

    def aligned(self, summary: dict) -> None:
        """The input.align stage's summary (`AlignOutcome.to_dict`)."""
        self.record.align = summary
        self.save()

    def step(self, point: TrainPoint) -> None:
        """A log step: into the training log and metrics.jsonl (result.json waits for the next evaluation)."""
        self.record.train_log.append(point)
        if self.writes:
            self.metrics.append(point)

    def evaluation(self, point: EvalPoint) -> None:
        """An evaluation: into the history and metrics.jsonl, and result.json written."""
        self.record.history.append(point)
        if self.writes:
            self.metrics.append(point)
        self.save()

    def finish(self, outcome: TrainOutcome, test: dict, session: Session, load_peak: dict[str, int]) -> RunRecord:
        """Complete the record: the loop's outcome, the test metrics, timings, processes and memory; on
        the main process write the weights and result.json, then remove the checkpoints.

        Args:
            outcome: what the training loop returned.
            test: the test split's metrics on the selected weights (`Objective.metrics`).
            session: the run's session (its model holds the selected weights).
            load_peak: the peak memory of loading the task and the model.

        Returns:
            The completed record.
        """
        record, accelerator = self.record, session.accelerator
        unwrapped = accelerator.unwrap_model(session.model)
        record.status = "completed"
        record.history, record.train_log = list(outcome.history), list(outcome.train_log)
        record.skipped_steps = outcome.skipped_steps
        objective = session.task.info.objective
        record.metrics = Metrics(
            test_accuracy=test.get("accuracy"),
            test_loss=test["loss"],
            val_accuracy=outcome.best.val_accuracy,
            selected_step=outcome.best.step,
            selection=self.recipe.train.select,
            primary=objective.primary,
            direction=objective.direction,
            test={k: v for k, v in test.items() if k != "loss"},
            val=dict(outcome.best.val_metrics),
        )
        record.timing = _timing(outcome, self.seconds, record.align)
        record.processes = Processes(
            world_size=outcome.world_size,
            per_process_batch=outcome.per_process_batch,
            global_batch=outcome.global_batch,
            backend=str(accelerator.state.backend) if accelerator.num_processes > 1 else None,
        )
        record.memory = (
            peak_memory()
            | load_peak
            | model_memory(unwrapped)
            | {"optimizer_state_bytes": outcome.optimizer_state_bytes}
        )
        if self.writes:
            save_weights(unwrapped, self.run_dir, whole_backbone=not self.recipe.model.pretrained)
            self.save()
            # the weights are written: the checkpoints (optimizer state too) have served their purpose
            shutil.rmtree(self.run_dir / CHECKPOINTS, ignore_errors=True)
        return record

    def fail(self, error: BaseException) -> None:
        """A started run that stopped: diverged, interrupted (SIGINT, SIGTERM) or failed, and why."""
        if not self.writes or self.record is None:
            return
        record = self.record
        if isinstance(error, Diverged):
            record.status, record.error = "diverged", f"{error} (non-finite numbers are written as null)"
        elif isinstance(error, Interrupted | KeyboardInterrupt):
            record.status = "interrupted"
            record.error = str(error) or "KeyboardInterrupt"
        elif storage_problem(error) is not None:
            step = record.train_log[-1].step if record.train_log else 0
            record.status = "failed"
            record.error = f"{storage_problem(error)} after step {step}; make room, then --resume"
        else:
            record.status, record.error = "failed", f"{type(error).__name__}: {error}"
        record.memory = peak_memory()
        record.timing = Timing(wall_seconds=self.seconds)
        with contextlib.suppress(OSError):  # the disk that stopped the run may not take the record either
            self.save()


def _timing(outcome: TrainOutcome, wall_seconds: float, align: dict | None) -> Timing:
    train_seconds = max(outcome.train_seconds, 1e-9)
    return Timing(
        wall_seconds=wall_seconds,
        align_seconds=align["seconds"] if align else None,
        train_seconds=outcome.train_seconds,
        eval_seconds=outcome.eval_seconds,
        steps=outcome.steps,
        cap=outcome.cap,
        stopped=outcome.stopped,
        train_examples_per_s=outcome.train_examples / train_seconds,
        train_tokens_per_s=outcome.train_tokens / train_seconds,
    )
