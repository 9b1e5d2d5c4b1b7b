"""What a task hands to the rest of peftx: dataset splits, an input spec, labels and baselines.

This module is the tasks' interface, read whenever a recipe is: it imports neither `datasets`, numpy
nor torch (the objective's methods import torch when they compute; checks and baselines of loaded
splits are `peftx.tasks.splits`).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING

from pydantic import BaseModel, ConfigDict

from peftx.errors import PeftxError
from peftx.spec.input_spec import InputSpec
from peftx.spec.objective import Classification, LabelError, Objective, Regression

if TYPE_CHECKING:
    import datasets
    import numpy as np
    import torch

SPLITS = ("train", "validation", "test")  # every task's splits, by these names


@dataclass(frozen=True)
class TaskInfo:
    """What a model needs to know about a task's inputs and outputs, without loading its data.

    `objective` is what the model outputs and how it is scored (None: classification over `labels`);
    `labels` are its class, target or channel names.
    """

    input_spec: InputSpec
    labels: tuple[str, ...]
    parse: Callable[[str], list[int] | np.ndarray]
    """One line of user input -> symbol ids, or a (seq, dim) array of stored values (`peftx predict`)."""
    read_inputs: Callable[[Path], tuple[list[str], list[str] | None] | None] | None = None
    """A `peftx predict` file in the task's own data format -> (each input as `parse` reads it, the
    file's labels or None), or None for a file not in such a format; None: predict files are lines or
    a Source/Target TSV."""
    objective: Objective | None = None

    def __post_init__(self) -> None:
        if self.objective is None:
            object.__setattr__(self, "objective", Classification(tuple(self.labels)))

    @property
    def num_classes(self) -> int:
        return len(self.labels)


@dataclass
class TaskData:
    """Splits with columns (`tokens` or `values`) and `label`, plus what is needed to read them.

    On creation every split's labels are checked against the objective, and a regression objective
    takes its targets' scale from the training split (`Regression.fitted`).
    """

    splits: datasets.DatasetDict
    info: TaskInfo
    baselines: dict[str, float] = field(default_factory=dict)  # name -> test value of the primary metric
    notes: list[str] = field(default_factory=list)  # facts about the data worth logging

    def __post_init__(self) -> None:
        objective = self.info.objective
        if objective.kind == "classification":
            return  # labels checked by `check_splits`, with their place
        labels = {}
        for name, split in self.splits.items():
            if "label" not in split.column_names:
                continue
            try:
                labels[name] = objective.label_tensor(split["label"])
            except LabelError as e:
                raise PeftxError(f"{objective.kind} task: {name} split, {e}") from None
        if "train" in labels and isinstance(objective, Regression):
            self.info = replace(self.info, objective=objective.fitted(labels["train"]))
        if "train" in labels and "test" in labels and objective.kind in ("regression", "multilabel"):
            name, value = constant_baseline(objective, labels["train"], labels["test"])
            self.baselines.setdefault(name, value)


class TaskConfig(BaseModel):
    """Base of every task's recipe section; subclasses declare `name: Literal["..."] = "..."` (the
    registry key) and document each field with a docstring under it (its help text)."""

    model_config = ConfigDict(extra="forbid", frozen=True, use_attribute_docstrings=True)
    name: str

    def default_input(self) -> str:
        """The input adapter used when a recipe names none."""
        return "pretrained_vocab"

    def describe(self) -> TaskInfo:
        """Inputs and labels of the task (no data loaded)."""
        raise NotImplementedError

    def load(self) -> TaskData:
        """The task's train/validation/test splits, baselines and notes."""
        raise NotImplementedError

    def train_size(self) -> int | None:
        """Training examples, where the section alone tells (None: known only once loaded)."""
        return None


def constant_baseline(objective: Objective, train: torch.Tensor, test: torch.Tensor) -> tuple[str, float]:
    """The test value of the primary metric of one answer for every example, learnt from training
    labels: their mean (regression) or each label's frequency (multi-label). A model should beat it."""
    if objective.kind == "regression":
        outputs = train.mean(0, keepdim=True).expand(len(test), -1)
        return "mean_predictor", objective.metrics(outputs, test)[objective.primary]
    freq = train.mean(0, keepdim=True).clamp(1e-6, 1 - 1e-6)
    outputs = freq.logit().expand(len(test), -1)
    return "label_frequencies", objective.metrics(outputs, test)[objective.primary]
