"""Task names -> classes. Task modules register themselves with `@register_task("name")`.

To add a task: write ``envs/tasks/<module>.py`` with a decorated class and add the module to `TASK_MODULES`.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Mapping
from typing import Any, TypeVar

from crl.config import TaskConfig, load
from crl.envs.tasks.base import Task
from crl.errors import CRLError

TASKS: dict[str, type[Task]] = {}

T = TypeVar("T", bound=type[Task])

# Imported at the bottom of this file, so TASKS is complete once the registry is imported.
TASK_MODULES: tuple[str, ...] = (
    "crl.envs.tasks.arith",
    "crl.envs.tasks.compare",
    "crl.envs.tasks.gsm8k",
    "crl.envs.tasks.mmlu",
    "crl.envs.tasks.bbq",
    "crl.envs.tasks.harmbench",
    "crl.envs.tasks.xstest",
    "crl.envs.tasks.planted",
)


def register_task(name: str) -> Callable[[T], T]:
    """Class decorator: make a Task subclass available as ``task.name=<name>``."""

    def deco(cls: T) -> T:
        other = TASKS.get(name)
        if other is not None and other.__qualname__ != cls.__qualname__:
            raise CRLError(f"task name '{name}' is taken by {other.__qualname__}; pick another name")
        cls.name = name
        TASKS[name] = cls
        return cls

    return deco


def make_task(cfg: TaskConfig | Mapping[str, Any]) -> Task:
    """The task named by ``cfg.name``, configured by `cfg` (a TaskConfig, dict or Hydra DictConfig)."""
    cfg = load(TaskConfig, cfg, "task.")
    cls = TASKS.get(cfg.name)
    if cls is None:
        raise CRLError(f"task '{cfg.name}' is unknown; available: {', '.join(sorted(TASKS))}")
    return cls(cfg)


for _module in TASK_MODULES:
    importlib.import_module(_module)
