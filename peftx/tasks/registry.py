"""The task registry: name -> the task's recipe config class (whose `load()` builds the data)."""

from peftx.registry import Registry
from peftx.tasks.base import TaskConfig

TASKS: Registry[type[TaskConfig]] = Registry("task", "peftx.tasks")
