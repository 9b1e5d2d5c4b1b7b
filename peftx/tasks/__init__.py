"""Tasks. Each module registers its recipe config class under the task's name when imported."""

from peftx.input_spec import ContinuousSpec, SymbolVocab
from peftx.tasks import listops, protein, sequences, vision  # noqa: F401  (registration)
from peftx.tasks.base import TaskConfig, TaskData, TaskInfo
from peftx.tasks.registry import TASKS

__all__ = ["TASKS", "ContinuousSpec", "SymbolVocab", "TaskConfig", "TaskData", "TaskInfo"]
