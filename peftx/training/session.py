"""One place that turns a recipe into what runs it: precision (resolved once), the accelerator, the
task, the model and its splits (one padding rule). `run`, `Predictor` (predict, evaluate) and the
benchmark scripts all start here, so none can wire them differently."""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import TYPE_CHECKING

import datasets
from accelerate import Accelerator
from accelerate.state import AcceleratorState
from accelerate.utils import set_seed

from peftx.errors import PeftxError
from peftx.training.batching import Split, make_split, pad_multiple
from peftx.training.builder import build_model
from peftx.util.env import resolve_precision

if TYPE_CHECKING:
    from peftx.model.task_model import PeftxModel
    from peftx.recipe import RecipeBase
    from peftx.tasks.base import TaskData, TaskInfo


@dataclass
class Session:
    """A recipe made concrete on this machine (model built, not yet trained or prepared).

    Attributes:
        precision: 'fp32' or 'bf16', resolved from `train.precision` once.
        task: the loaded task data (None when only its description was needed).
        provenance: where the backbone came from, for the run record.
    """

    recipe: RecipeBase
    precision: str
    accelerator: Accelerator
    info: TaskInfo
    model: PeftxModel
    provenance: dict
    task: TaskData | None = None

    @property
    def pad_multiple(self) -> int:
        return pad_multiple(self.recipe.train, self.accelerator.device)

    def split(self, ds: datasets.Dataset) -> Split:
        """Any dataset of the task's input kind, collated as training and evaluation feed the model."""
        model = self.accelerator.unwrap_model(self.model)
        info = self.task.info if self.task is not None else self.info  # a loaded task's fitted objective
        return make_split(ds, info.input_spec, model.specials, model.max_length, self.pad_multiple, info.objective)

    def splits(self, names: tuple[str, ...] | list[str]) -> dict[str, Split]:
        """The task's named splits, collated (the session must have loaded the task)."""
        if self.task is None:
            raise RuntimeError("this session did not load its task")
        return {n: self.split(self.task.splits[n]) for n in names}

    def load_task(self) -> TaskData:
        """Load the task's data (once) as the recipe's task section describes it."""
        if self.task is None:
            self.task = self.recipe.task.load()
        return self.task


def make_accelerator(precision: str, grad_accum: int = 1, log_with: list | None = None) -> Accelerator:
    """An Accelerator for one run.

    Accelerate keeps its state per process; runs that follow each other in one process (sweeps, tests,
    predict after train) may differ in precision, so the per-run part of the state is reset first. The
    distributed part (PartialState) is kept.

    The loop steps the learning-rate schedule itself, once per optimizer step: accelerate's prepared
    scheduler would step once per process (it assumes each process's loader holds 1/N of the epoch's
    batches, and a schedule built for the single-process step count).

    Args:
        precision: 'bf16' (autocast) or 'fp32'.
        grad_accum: micro-batches per optimizer step (`train.grad_accum`).
        log_with: the trackers accelerate logs to (`peftx.runs.trackers.make_trackers`).

    Returns:
        The accelerator, its state fresh for this run.
    """
    AcceleratorState._reset_state(reset_partial_state=False)
    return Accelerator(
        mixed_precision="bf16" if precision == "bf16" else "no",
        gradient_accumulation_steps=grad_accum,
        step_scheduler_with_optimizer=False,
        log_with=log_with or None,
    )


def check_launch(accelerator: Accelerator) -> None:
    """Refuse a launch whose processes do not form one group (each would run the whole recipe alone,
    all racing for one run directory).

    Raises:
        PeftxError: the launcher started several processes, accelerate sees one.
    """
    launched = int(os.environ.get("WORLD_SIZE", "1"))
    if launched != accelerator.num_processes:
        raise PeftxError(
            f"launched {launched} processes but they do not form one group (accelerate sees "
            f"{accelerator.num_processes}); on CPUs launch with `ACCELERATE_USE_CPU=true torchrun "
            "--nproc_per_node N -m peftx run ...`"
        )


def open_session(recipe: RecipeBase, load_task: bool = True, log_with: list | None = None) -> Session:
    """Resolve precision, make the accelerator, seed, load the task and build the model.

    Args:
        load_task: load the task's data (training, evaluation); False: only its description (predict).
        log_with: the accelerator's trackers (`peftx.runs.trackers.make_trackers`).

    Raises:
        PeftxError: the recipe cannot be built here (missing weights or data, a bad launch).
    """
    precision = resolve_precision(recipe.train.precision)
    accelerator = make_accelerator(precision, recipe.train.grad_accum, log_with)
    check_launch(accelerator)
    set_seed(recipe.seed)
    task = recipe.task.load() if load_task else None
    info = task.info if task is not None else recipe.task.describe()
    model, provenance = build_model(recipe, info, precision)
    return Session(recipe, precision, accelerator, info, model, provenance, task)
