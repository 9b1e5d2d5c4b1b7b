"""`run(recipe)`: load the task, build the model, train, test, write the run directory.

A run goes through its phases in order: plan the directory (`agree_on_run_dir`) -> build (session,
task, splits) -> record its start (`RunRecorder.start`) -> align the input (optional) -> train -> test
-> record the end. A run directory is touched only under its lock (`run_lock`), and only once the new
run has built its model and data: a recipe that fails to build leaves an old run of the same name as
it was. A run that stops early (killed, pre-empted, interrupted) continues from its last checkpoint
with `resume=True`.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from contextlib import ExitStack
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING

from accelerate import PartialState
from accelerate.utils import parse_flag_from_env

from peftx.errors import Pruned
from peftx.model.budget import model_budget
from peftx.model.loading import load_tokenizer
from peftx.recipe.checks import check_global_batch
from peftx.runs.directory import RunDirDecision, agree_on_run_dir
from peftx.runs.display import RunDisplay
from peftx.runs.record import PrunedAt, RunRecord
from peftx.runs.recorder import RunRecorder
from peftx.runs.trackers import hyperparameters, make_trackers, tracker_values
from peftx.tasks.base import SPLITS
from peftx.training.align import align_input, reference
from peftx.training.batching import Split
from peftx.training.checkpoints import Checkpoints, terminate_as_interrupt
from peftx.training.evaluation import evaluate
from peftx.training.job import TrainJob, TrainOutcome
from peftx.training.loop import total_steps, train
from peftx.training.points import EvalPoint, Point
from peftx.training.self_pretrain import ensure_self_pretrained
from peftx.training.session import Session, open_session
from peftx.util.env import peak_memory, reset_peak_memory

if TYPE_CHECKING:
    from peftx.recipe import RecipeBase


@dataclass
class RunResult:
    run_dir: Path
    record: RunRecord

    @property
    def result(self) -> dict:
        """The record as plain data, exactly as result.json holds it."""
        return json.loads(self.record.model_dump_json())


@dataclass
class _Built:
    """What the build phase made: the session (model, task), the collated splits, and what building
    learnt about memory and truncation."""

    session: Session
    splits: dict[str, Split]
    load_peak: dict[str, int]  # task data and model loading alone
    truncated: dict[str, int]  # examples cut to the model's length, by split
    self_pretrain: dict | None = None  # the model.init: self_pretrained stage's record


def run(
    recipe: RecipeBase,
    overwrite: bool = False,
    display: RunDisplay | None = None,
    resume: bool = False,
    on_start: Callable[[str], None] | None = None,
    on_eval: Callable[[EvalPoint], None] | None = None,
    *,
    allow_inexact: bool = False,
    allow_changed_weights: bool = False,
) -> RunResult:
    """Train and evaluate one recipe; write `<output.dir>/<run name>/` (from the main process only).

    Args:
        recipe: a validated recipe.
        overwrite: replace an existing run of the same name (once this one has built its model and data).
        display: terminal output (None: quiet; other processes than the main one never print).
        resume: continue an unfinished run of the same name from its last checkpoint (a run with none
            starts again; a completed run is returned as it is; no run: a new one).
        on_start: called with 'new', 'replace' or 'resume' once the run holds its directory's lock.
        on_eval: called with each evaluation once it is recorded (main process); a sweep reports it to
            its study here, and raises `Pruned` to stop the run.
        allow_inexact: with `resume`, go on with fresh random states where the checkpoint's are missing
            or unreadable (else refused: the continuation would not be bit-identical).
        allow_changed_weights: with `resume`, go on although the backbone's weights changed since the run
            began (their sha256 differs from result.json's; else refused).

    Returns:
        The run directory and the record written to its result.json.

    Raises:
        PeftxError: the run directory may not be written (exists, locked, not a run directory), or the
            recipe cannot be built.
        Diverged: the loss or gradient norm became non-finite (recorded as status 'diverged').
        Interrupted: SIGINT or SIGTERM; a checkpoint was written (status 'interrupted').
        Pruned: `on_eval` stopped the run (status 'pruned', with the step and the reason).
    """
    display = display or RunDisplay(enabled=False)
    run_dir = Path(recipe.output.dir) / recipe.run_name
    launch = PartialState(cpu=parse_flag_from_env("ACCELERATE_USE_CPU"))  # as the Accelerator will see it
    if not launch.is_main_process:
        display = RunDisplay(enabled=False)
    with ExitStack() as stack:
        decision = agree_on_run_dir(stack, run_dir, recipe, overwrite, resume, launch)
        decision = replace(decision, allow_inexact=allow_inexact, allow_changed_weights=allow_changed_weights)
        if decision.plan == "completed":
            record = RunRecord.read(run_dir)
            display.message(f"{run_dir}: already completed; nothing to resume")
            return RunResult(run_dir=run_dir, record=record)
        if on_start is not None:
            on_start(decision.plan)
        stack.enter_context(terminate_as_interrupt())
        return _run(recipe, run_dir, decision, display, on_eval)


def _run(
    recipe: RecipeBase,
    run_dir: Path,
    decision: RunDirDecision,
    display: RunDisplay,
    on_eval: Callable[[EvalPoint], None] | None = None,
) -> RunResult:
    """The phases after the directory is planned: build, record the start, align, train, test, record."""
    recorder = RunRecorder(run_dir, recipe, writes=PartialState().is_main_process)
    reset_peak_memory()
    built = _build(recipe, run_dir, decision, recorder, display)
    session = built.session
    accelerator = session.accelerator
    budget = model_budget(session.model)
    recorder.start(session, budget, built.truncated, decision)  # only now may the directory change
    if built.self_pretrain is not None:
        recorder.record.self_pretrain = built.self_pretrain
        recorder.save()
    accelerator.wait_for_everyone()  # other processes start once the directory is theirs to read
    try:
        _start_trackers(recipe, session)
        notes = session.task.notes
        display.header(recipe.run_name, session.provenance, recipe.method.name, budget, notes, session.precision)
        if decision.checkpoint is not None:
            display.message(f"resuming from {decision.checkpoint}" + (f" ({decision.note})" if decision.note else ""))
        elif recipe.input is not None and recipe.input.align is not None:
            recorder.aligned(_align(recipe, session, built.splits["train"], display))
        outcome = _train(recipe, run_dir, built, decision, display, recorder, on_eval)
        test = evaluate(session.model, built.splits["test"], recipe.train, accelerator)
        record = recorder.finish(outcome, test, session, built.load_peak)
        if accelerator.is_main_process:
            display.summary(record, run_dir)
        accelerator.wait_for_everyone()
        return RunResult(run_dir=run_dir, record=record)
    except BaseException as e:
        recorder.fail(e)
        if isinstance(e, Pruned) and recorder.record is not None:  # final, like completed: not a failure
            recorder.record.status, recorder.record.error = "pruned", None
            recorder.record.pruned = PrunedAt(step=e.step, reason=e.reason)
            recorder.save()
        raise
    finally:
        accelerator.end_training()


def _build(
    recipe: RecipeBase, run_dir: Path, decision: RunDirDecision, recorder: RunRecorder, display: RunDisplay
) -> _Built:
    """The self-pretraining stage (model.init: self_pretrained; cached, so usually found made), trackers,
    the session (the model first: it fails early), the task data and its collated splits. A new run
    that fails here leaves a record of why, which blocks no rerun."""
    try:
        stage = ensure_self_pretrained(recipe, display.message) if recipe.model.init == "self_pretrained" else None
        trackers = make_trackers(recipe.output.trackers, run_dir, decision.step)
        session = open_session(recipe, load_task=False, log_with=trackers)
        task = session.load_task()
        session.model.fit_outputs(task.info.objective)  # built before the data was read
        load_peak = {f"load_{k}": v for k, v in peak_memory().items()}
        splits = session.splits(SPLITS)
        check_global_batch(recipe, len(splits["train"]))  # sizes known only once the data is read
    except BaseException as e:
        if decision.plan == "new":
            recorder.fail_before_start(e)
        raise
    truncated = {n: s.collate.num_truncated() for n, s in splits.items() if s.collate.num_truncated()}
    if truncated:
        task.notes.append(f"truncated to {session.model.max_length} positions (first tokens kept): {truncated}")
    return _Built(session, splits, load_peak, truncated, stage)


def _start_trackers(recipe: RecipeBase, session: Session) -> None:
    if recipe.output.trackers:
        session.accelerator.init_trackers(
            recipe.name or recipe.run_name,
            config=hyperparameters(recipe.to_dict()),
            init_kwargs={"wandb": {"name": recipe.run_name}, "mlflow": {"run_name": recipe.run_name}},
        )


def _train(
    recipe: RecipeBase,
    run_dir: Path,
    built: _Built,
    decision: RunDirDecision,
    display: RunDisplay,
    recorder: RunRecorder,
    on_eval: Callable[[EvalPoint], None] | None = None,
) -> TrainOutcome:
    """The training loop, its points shown, recorded and sent to the trackers as they come."""
    accelerator = built.session.accelerator
    display.start(total_steps(recipe.train, len(built.splits["train"]), accelerator.num_processes), decision.step or 0)

    def on_point(point: Point) -> None:
        display.step(point)
        if isinstance(point, EvalPoint):
            recorder.evaluation(point)
            if on_eval is not None:
                on_eval(point)
        else:
            recorder.step(point)
        accelerator.log(tracker_values(point), step=point.step)

    job = TrainJob(
        model=built.session.model,
        train_split=built.splits["train"],
        val_split=built.splits["validation"],
        config=recipe.train,
        seed=recipe.seed,
        accelerator=accelerator,
        checkpoints=Checkpoints(
            run_dir, accelerator, recipe.train.checkpoint_every, allow_inexact=decision.allow_inexact
        ),
        resume=decision.checkpoint,
    )
    try:
        return train(job, on_point if accelerator.is_main_process else None)
    finally:
        display.stop()


def _align(recipe: RecipeBase, session: Session, train_split: Split, display: RunDisplay) -> dict:
    """The input.align stage (before training proper; a resumed run's checkpoint already holds it)."""
    cfg = recipe.input.align
    tokenizer = None
    if cfg.reference == "text":
        tokenizer = load_tokenizer(recipe.model.source, recipe.model.pretrained, recipe.model.trust_remote_code)
    ref = reference(cfg, session.model, tokenizer, recipe.seed)
    outcome = align_input(session.model, train_split, cfg, ref, recipe.seed, session.accelerator)
    display.message(
        f"input.align ({cfg.objective}, {cfg.reference}): {outcome.before:.4g} -> {outcome.after:.4g} "
        f"in {outcome.steps} steps, {outcome.seconds:.1f} s"
    )
    return outcome.to_dict()
