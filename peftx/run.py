"""`run(recipe)`: load the task, build the model, train, test, write the run directory."""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

from accelerate.utils import set_seed

from peftx.artifacts import RECIPE, RESULT, prepare_run_dir, save_weights, write_json
from peftx.budget import model_budget
from peftx.build import build_model
from peftx.data import Split, make_split
from peftx.display import RunDisplay
from peftx.env import peak_memory, reset_peak_memory, resolve_precision, versions
from peftx.memory import model_memory
from peftx.recipe import RecipeBase, TrainSection, dump_recipe
from peftx.speed import pad_multiple
from peftx.tasks.base import TaskData
from peftx.train import evaluate, make_accelerator, total_steps, train


@dataclass
class RunResult:
    run_dir: Path
    result: dict


def task_splits(task: TaskData, model, cfg: TrainSection, device, names) -> dict[str, Split]:
    """The task's named splits, collated for `model` as training and evaluation feed it."""
    multiple = pad_multiple(cfg, device)
    return {
        n: make_split(task.splits[n], task.info.input_spec, model.specials, model.max_length, multiple) for n in names
    }


def run(recipe: RecipeBase, overwrite: bool = False, display: RunDisplay | None = None) -> RunResult:
    """Train and evaluate one recipe; write `<output.dir>/<run name>/`.

    Args:
        recipe: a validated recipe.
        overwrite: replace an existing run directory of the same name.
        display: terminal output (None: quiet).

    Returns:
        The run directory and the result written to its result.json.

    Raises:
        PeftxError: the run directory exists (without `overwrite`) or the recipe cannot be built.
    """
    display = display or RunDisplay(enabled=False)
    precision = resolve_precision(recipe.train.precision)
    accelerator = make_accelerator(precision, recipe.train.grad_accum)
    main = accelerator.is_main_process
    run_dir = Path(recipe.output.dir) / recipe.run_name
    if main:
        prepare_run_dir(run_dir, overwrite)
        (run_dir / RECIPE).write_text(dump_recipe(recipe))
    result: dict = {
        "name": recipe.run_name,
        "status": "running",
        "recipe": recipe.to_dict(),
        "seed": recipe.seed,
        "precision": precision,
        "versions": versions(),
        "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }
    t_start = time.perf_counter()
    reset_peak_memory()
    try:
        set_seed(recipe.seed)
        task = recipe.task.load()
        model, provenance = build_model(recipe, task.info)
        load_peak = {f"load_{k}": v for k, v in peak_memory().items()}  # task data and model loading alone
        budget = model_budget(model)
        result.update(backbone=provenance, budget=budget.to_dict(), baselines=task.baselines, data_notes=task.notes)
        max_len = model.max_length
        splits = task_splits(task, model, recipe.train, accelerator.device, ("train", "validation", "test"))
        truncated = {n: s.collate.num_truncated() for n, s in splits.items() if s.collate.num_truncated()}
        if truncated:
            task.notes.append(f"truncated to {max_len} positions (first tokens kept): {truncated}")
            result["truncated"] = truncated
        if main:
            display.header(recipe.run_name, provenance, recipe.method.name, budget, task.notes, precision)
            write_json(run_dir / RESULT, result)
        display.start(total_steps(recipe.train, len(splits["train"])))
        history = result.setdefault("history", [])

        def on_step(step: int, info: dict) -> None:
            display.step(step, info)
            if "val_accuracy" in info:  # result.json follows the run, for anyone watching it
                history.append(info)
                write_json(run_dir / RESULT, result)

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
        result.update(
            status="completed",
            history=outcome.history,
            metrics={
                "test_accuracy": test["accuracy"],
                "test_loss": test["loss"],
                "val_accuracy": outcome.best["val_accuracy"],
                "selected_step": outcome.best["step"],
                "selection": recipe.train.select,
            },
            timing={
                "wall_seconds": time.perf_counter() - t_start,
                "train_seconds": outcome.train_seconds,
                "eval_seconds": outcome.eval_seconds,
                "steps": outcome.steps,
                "train_examples_per_s": outcome.train_examples / max(outcome.train_seconds, 1e-9),
                "train_tokens_per_s": outcome.train_tokens / max(outcome.train_seconds, 1e-9),
            },
            memory=peak_memory()
            | load_peak
            | model_memory(unwrapped)
            | {"optimizer_state_bytes": outcome.optimizer_state_bytes},
        )
        if main:
            save_weights(unwrapped, run_dir, whole_backbone=not recipe.model.pretrained)
            write_json(run_dir / RESULT, result)
            display.summary(result, run_dir)
        return RunResult(run_dir=run_dir, result=result)
    except BaseException as e:
        if main and run_dir.exists():
            result.update(
                status="interrupted" if isinstance(e, KeyboardInterrupt) else "failed",
                error=f"{type(e).__name__}: {e}",
                memory=peak_memory(),
                timing={"wall_seconds": time.perf_counter() - t_start},
            )
            write_json(run_dir / RESULT, result)
        raise
