"""`run(recipe)`: load the task, build the model, train, test, write the run directory.

A run directory is touched only under its lock (`run_lock`), and only once the new run has built its
model and data: a recipe that fails to build leaves an old run of the same name as it was. A run that
stops early (killed, pre-empted, interrupted) continues from its last checkpoint with `resume=True`.
"""

from __future__ import annotations

import json
import shutil
import time
from collections.abc import Callable
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from accelerate import PartialState
from accelerate.utils import broadcast_object_list, parse_flag_from_env

from peftx.errors import Diverged, Interrupted, PeftxError
from peftx.model.budget import model_budget
from peftx.model.loading import load_tokenizer
from peftx.model.memory import model_memory
from peftx.recipe import dump_recipe, result_defining
from peftx.runs.directory import fresh_run_dir, plan_run_dir, run_lock
from peftx.runs.display import RunDisplay
from peftx.runs.record import (
    RECIPE,
    BudgetRecord,
    EvalPoint,
    Metrics,
    MetricsLog,
    Processes,
    RunRecord,
    Timing,
    TrainPoint,
    save_weights,
)
from peftx.runs.task_file import write_task_description
from peftx.runs.trackers import hyperparameters, make_trackers
from peftx.training.align import align_input, reference
from peftx.training.checkpoints import (
    CHECKPOINTS,
    Checkpoints,
    checkpoint_step,
    latest_checkpoint,
    read_progress,
    terminate_as_interrupt,
)
from peftx.training.evaluation import evaluate
from peftx.training.loop import total_steps, train
from peftx.training.session import open_session
from peftx.util.env import peak_memory, reset_peak_memory, versions

if TYPE_CHECKING:
    from peftx.recipe import RecipeBase

SPLITS = ("train", "validation", "test")


@dataclass
class RunResult:
    run_dir: Path
    record: RunRecord

    @property
    def result(self) -> dict:
        """The record as plain data, exactly as result.json holds it."""
        return json.loads(self.record.model_dump_json())


def first_difference(a: dict, b: dict, prefix: str = "") -> str | None:
    """The first dotted key whose value differs between two recipes (as plain data), or None."""
    for key in sorted(set(a) | set(b)):
        va, vb = a.get(key), b.get(key)
        if isinstance(va, dict) and isinstance(vb, dict):
            found = first_difference(va, vb, f"{prefix}{key}.")
            if found:
                return found
        elif va != vb:
            return f"{prefix}{key} ({json.dumps(va)} in the run, {json.dumps(vb)} now)"
    return None


def _decide(run_dir: Path, recipe: RecipeBase, overwrite: bool, resume: bool) -> tuple[str, str | None, int | None]:
    """The main process's reading of the run directory: (plan, checkpoint to resume from, its step)."""
    plan, old = plan_run_dir(run_dir, overwrite, resume)
    if plan == "resume":
        differs = first_difference(result_defining(old.recipe), result_defining(recipe.to_dict()))
        if differs:
            raise PeftxError(f"{run_dir}: cannot resume with another recipe: {differs}; use --overwrite to start again")
        ckpt = latest_checkpoint(run_dir)
        if ckpt is None:  # stopped before its first checkpoint: nothing to keep
            return "replace", None, None
        return plan, str(ckpt), checkpoint_step(ckpt)
    return plan, None, None


def run(
    recipe: RecipeBase,
    overwrite: bool = False,
    display: RunDisplay | None = None,
    resume: bool = False,
    on_start: Callable[[str], None] | None = None,
) -> RunResult:
    """Train and evaluate one recipe; write `<output.dir>/<run name>/` (from the main process only).

    Args:
        recipe: a validated recipe.
        overwrite: replace an existing run of the same name (once this one has built its model and data).
        display: terminal output (None: quiet; other processes than the main one never print).
        resume: continue an unfinished run of the same name from its last checkpoint (a run with none
            starts again; a completed run is returned as it is; no run: a new one).
        on_start: called with 'new', 'replace' or 'resume' once the run holds its directory's lock.

    Returns:
        The run directory and the record written to its result.json.

    Raises:
        PeftxError: the run directory may not be written (exists, locked, not a run directory), or the
            recipe cannot be built.
        Diverged: the loss or gradient norm became non-finite (recorded as status 'diverged').
        Interrupted: SIGINT or SIGTERM; a checkpoint was written (status 'interrupted').
    """
    display = display or RunDisplay(enabled=False)
    run_dir = Path(recipe.output.dir) / recipe.run_name
    launch = PartialState(cpu=parse_flag_from_env("ACCELERATE_USE_CPU"))  # as the Accelerator will see it
    main = launch.is_main_process
    if not main:
        display = RunDisplay(enabled=False)
    with ExitStack() as stack:
        decision: list = [None, None, None, None]  # plan, checkpoint, its step, the main process's error
        if main:
            try:
                stack.enter_context(run_lock(run_dir))
                decision[:3] = _decide(run_dir, recipe, overwrite, resume)
            except PeftxError as e:
                decision[3] = str(e)
                if launch.num_processes == 1:
                    raise
        if launch.num_processes > 1:  # the others must not wait for a run that will not start
            broadcast_object_list(decision)
        plan, ckpt, ckpt_step, error = decision
        if error:
            raise PeftxError(error)
        if plan == "completed":
            record = RunRecord.read(run_dir)
            display.message(f"{run_dir}: already completed; nothing to resume")
            return RunResult(run_dir=run_dir, record=record)
        if on_start is not None:
            on_start(plan)
        stack.enter_context(terminate_as_interrupt())
        return _run(recipe, run_dir, plan, Path(ckpt) if ckpt else None, ckpt_step, display)


def _run(
    recipe: RecipeBase, run_dir: Path, plan: str, ckpt: Path | None, ckpt_step: int | None, display: RunDisplay
) -> RunResult:
    t_start = time.perf_counter()
    reset_peak_memory()
    try:
        trackers = make_trackers(recipe.output.trackers, run_dir, ckpt_step)
        session = open_session(recipe, load_task=False, log_with=trackers)  # the model first: fails early
        task = session.load_task()
        load_peak = {f"load_{k}": v for k, v in peak_memory().items()}  # task data and model loading alone
        splits = session.splits(SPLITS)
    except BaseException as e:
        if plan == "new" and PartialState().is_main_process:  # a record of the failure, blocking no rerun
            _record_failure(recipe, run_dir, e, time.perf_counter() - t_start)
        raise
    accelerator = session.accelerator
    main = accelerator.is_main_process
    model = session.model
    budget = model_budget(model)
    # everything is built: only now may the run directory change
    if plan == "resume":
        record = RunRecord.read(run_dir)
        record.status, record.error = "running", None
        history, train_log = read_progress(ckpt)  # result.json may have gone further, or not as far
        record.history = [EvalPoint.model_validate(h) for h in history]
        record.train_log = [TrainPoint.model_validate(t) for t in train_log]
        record.resumed.append({"from_step": ckpt_step, "at": RunRecord.now()})
        record.recipe = recipe.to_dict()  # equal up to result-neutral fields (threads, trackers ...)
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
    truncated = {n: s.collate.num_truncated() for n, s in splits.items() if s.collate.num_truncated()}
    if truncated:
        task.notes.append(f"truncated to {model.max_length} positions (first tokens kept): {truncated}")
        record.truncated = truncated
    metrics_log = MetricsLog(run_dir)
    if main:
        if plan == "resume":
            metrics_log.rewrite(
                [("train", t.model_dump()) for t in record.train_log]
                + [("eval", h.model_dump()) for h in record.history]
            )
            record.write(run_dir)
            (run_dir / RECIPE).write_text(dump_recipe(recipe))
        else:
            with fresh_run_dir(run_dir):  # an old run is replaced only now, and put back if this fails
                record.write(run_dir)
                (run_dir / RECIPE).write_text(dump_recipe(recipe))
                write_task_description(run_dir, session.info, session.model)  # task.json: vocabulary, labels
    accelerator.wait_for_everyone()  # other processes start once the directory is theirs to read

    def save() -> None:
        if main:
            record.write(run_dir)

    try:
        if recipe.output.trackers:
            accelerator.init_trackers(
                recipe.name or recipe.run_name,
                config=hyperparameters(recipe.to_dict()),
                init_kwargs={"wandb": {"name": recipe.run_name}, "mlflow": {"run_name": recipe.run_name}},
            )
        display.header(recipe.run_name, session.provenance, recipe.method.name, budget, task.notes, session.precision)
        if ckpt is not None:
            display.message(f"resuming from {ckpt}")
        elif recipe.input is not None and recipe.input.align is not None:
            record.align = _align(recipe, session, splits["train"], display)
            save()
        display.start(total_steps(recipe.train, len(splits["train"]), accelerator.num_processes), ckpt_step or 0)

        def on_step(step: int, info: dict) -> None:
            display.step(step, info)
            if "val_accuracy" in info:  # result.json follows the run, for anyone watching it
                record.history.append(EvalPoint.model_validate(info))
                metrics_log.append("eval", info)
                save()
            else:
                record.train_log.append(TrainPoint.model_validate(info))
                metrics_log.append("train", info)
            accelerator.log({k: v for k, v in info.items() if k != "step" and v is not None}, step=step)

        try:
            outcome = train(
                model,
                splits["train"],
                splits["validation"],
                recipe.train,
                recipe.seed,
                accelerator,
                on_step=on_step if main else None,
                checkpoints=Checkpoints(run_dir, accelerator, recipe.train.checkpoint_every),
                resume=ckpt,
            )
        finally:
            display.stop()
        test = evaluate(model, splits["test"], recipe.train, accelerator)
        unwrapped = accelerator.unwrap_model(model)
        record.status = "completed"
        record.history = [EvalPoint.model_validate(h) for h in outcome.history]
        record.train_log = [TrainPoint.model_validate(t) for t in outcome.train_log]
        record.skipped_steps = outcome.skipped_steps
        record.metrics = Metrics(
            test_accuracy=test["accuracy"],
            test_loss=test["loss"],
            val_accuracy=outcome.best["val_accuracy"],
            selected_step=outcome.best["step"],
            selection=recipe.train.select,
        )
        record.timing = Timing(
            wall_seconds=time.perf_counter() - t_start,
            align_seconds=record.align["seconds"] if record.align else None,
            train_seconds=outcome.train_seconds,
            eval_seconds=outcome.eval_seconds,
            steps=outcome.steps,
            cap=outcome.cap,
            stopped=outcome.stopped,
            train_examples_per_s=outcome.train_examples / max(outcome.train_seconds, 1e-9),
            train_tokens_per_s=outcome.train_tokens / max(outcome.train_seconds, 1e-9),
        )
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
        if main:
            save_weights(unwrapped, run_dir, whole_backbone=not recipe.model.pretrained)
            save()
            # the weights are written: the checkpoints (optimizer state too) have served their purpose
            shutil.rmtree(run_dir / CHECKPOINTS, ignore_errors=True)
            display.summary(record, run_dir)
        accelerator.wait_for_everyone()
        return RunResult(run_dir=run_dir, record=record)
    except BaseException as e:
        if main:
            if isinstance(e, Diverged):
                record.status, record.error = "diverged", f"{e} (non-finite numbers are written as null)"
            elif isinstance(e, Interrupted | KeyboardInterrupt):
                record.status = "interrupted"
                record.error = str(e) or "KeyboardInterrupt"
            else:
                record.status, record.error = "failed", f"{type(e).__name__}: {e}"
            record.memory = peak_memory()
            record.timing = Timing(wall_seconds=time.perf_counter() - t_start)
            save()
        raise
    finally:
        accelerator.end_training()


def _record_failure(recipe: RecipeBase, run_dir: Path, error: BaseException, seconds: float) -> None:
    """A new run that failed before training: a directory whose record says why (it blocks no rerun)."""
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
    with fresh_run_dir(run_dir):
        record.write(run_dir)
        (run_dir / RECIPE).write_text(dump_recipe(recipe))


def _align(recipe: RecipeBase, session, train_split, display: RunDisplay) -> dict:
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
