"""`run(recipe)`: load the task, build the model, train, test, write the run directory."""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from peftx.artifacts import (
    RECIPE,
    BudgetRecord,
    EvalPoint,
    Metrics,
    Processes,
    RunRecord,
    Timing,
    TrainPoint,
    check_run_dir,
    prepare_run_dir,
    save_weights,
)
from peftx.budget import model_budget
from peftx.display import RunDisplay
from peftx.env import peak_memory, reset_peak_memory, versions
from peftx.memory import model_memory
from peftx.recipe import dump_recipe
from peftx.session import open_session
from peftx.task_file import write_task_description
from peftx.train import Diverged, evaluate, total_steps, train

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


def run(recipe: RecipeBase, overwrite: bool = False, display: RunDisplay | None = None) -> RunResult:
    """Train and evaluate one recipe; write `<output.dir>/<run name>/` (from the main process only).

    Args:
        recipe: a validated recipe.
        overwrite: replace an existing run directory of the same name.
        display: terminal output (None: quiet; other processes than the main one never print).

    Returns:
        The run directory and the record written to its result.json.

    Raises:
        PeftxError: the run directory exists (without `overwrite`) or the recipe cannot be built.
    """
    display = display or RunDisplay(enabled=False)
    run_dir = Path(recipe.output.dir) / recipe.run_name
    check_run_dir(run_dir, overwrite)  # before minutes of loading
    t_start = time.perf_counter()
    reset_peak_memory()
    session = open_session(recipe, load_task=False)  # the model first: a recipe that cannot build fails early
    accelerator = session.accelerator
    main = accelerator.is_main_process
    if not main:
        display = RunDisplay(enabled=False)
    if main:
        prepare_run_dir(run_dir, overwrite)
        (run_dir / RECIPE).write_text(dump_recipe(recipe))
        write_task_description(run_dir, session.info, session.model)  # task.json: vocabulary, labels
    accelerator.wait_for_everyone()  # other processes start once the directory is theirs to read
    record = RunRecord(
        name=recipe.run_name,
        recipe=recipe.to_dict(),
        seed=recipe.seed,
        precision=session.precision,
        versions=versions(),
        started=RunRecord.now(),
    )

    def save() -> None:
        if main:
            record.write(run_dir)

    try:
        task = session.load_task()
        model = session.model
        load_peak = {f"load_{k}": v for k, v in peak_memory().items()}  # task data and model loading alone
        budget = model_budget(model)
        record.backbone = session.provenance
        record.budget = BudgetRecord.model_validate(budget.to_dict())
        record.baselines = task.baselines
        record.data_notes = task.notes
        splits = session.splits(SPLITS)
        truncated = {n: s.collate.num_truncated() for n, s in splits.items() if s.collate.num_truncated()}
        if truncated:
            task.notes.append(f"truncated to {model.max_length} positions (first tokens kept): {truncated}")
            record.truncated = truncated
        display.header(recipe.run_name, session.provenance, recipe.method.name, budget, task.notes, session.precision)
        save()
        display.start(total_steps(recipe.train, len(splits["train"]), accelerator.num_processes))

        def on_step(step: int, info: dict) -> None:
            display.step(step, info)
            if "val_accuracy" in info:  # result.json follows the run, for anyone watching it
                record.history.append(EvalPoint.model_validate(info))
                save()
            elif "loss" in info:
                record.train_log.append(TrainPoint.model_validate({**info, "step": step}))

        try:
            outcome = train(
                model,
                splits["train"],
                splits["validation"],
                recipe.train,
                recipe.seed,
                accelerator,
                on_step=on_step if main else None,
            )
        finally:
            display.stop()
        test = evaluate(model, splits["test"], recipe.train, accelerator)
        unwrapped = accelerator.unwrap_model(model)
        record.status = "completed"
        record.history = [EvalPoint.model_validate(h) for h in outcome.history]
        record.metrics = Metrics(
            test_accuracy=test["accuracy"],
            test_loss=test["loss"],
            val_accuracy=outcome.best["val_accuracy"],
            selected_step=outcome.best["step"],
            selection=recipe.train.select,
        )
        record.timing = Timing(
            wall_seconds=time.perf_counter() - t_start,
            train_seconds=outcome.train_seconds,
            eval_seconds=outcome.eval_seconds,
            steps=outcome.steps,
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
            display.summary(record, run_dir)
        accelerator.wait_for_everyone()
        return RunResult(run_dir=run_dir, record=record)
    except BaseException as e:
        if main and run_dir.exists():
            if isinstance(e, Diverged):
                record.status, record.error = "diverged", str(e)
            else:
                record.status = "interrupted" if isinstance(e, KeyboardInterrupt) else "failed"
                record.error = f"{type(e).__name__}: {e}"
            record.memory = peak_memory()
            record.timing = Timing(wall_seconds=time.perf_counter() - t_start)
            save()
        raise
