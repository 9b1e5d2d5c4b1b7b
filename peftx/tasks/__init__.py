"""Tasks. Each module registers its recipe config class under the task's name when imported."""

from peftx.spec.input_spec import ContinuousSpec, SymbolVocab
from peftx.tasks.base import SPLITS, TaskConfig, TaskData, TaskInfo
from peftx.tasks.listops import task as _listops  # noqa: F401  (registration)
from peftx.tasks.protein import task as _protein  # noqa: F401
from peftx.tasks.registry import TASKS
from peftx.tasks.sequences import task as _sequences  # noqa: F401
from peftx.tasks.timeseries import task as _timeseries  # noqa: F401
from peftx.tasks.vision import task as _vision  # noqa: F401

__all__ = ["SPLITS", "TASKS", "ContinuousSpec", "SymbolVocab", "TaskConfig", "TaskData", "TaskInfo"]
