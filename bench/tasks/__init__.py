"""Tasks: specs (data) and runtimes (bench/tasks/spec.py), one family per file, and the registry.

Families are imported on first use, never at import of this package. A family module has
`tasks(options) -> Iterable[Task]`; installed packages add families under the entry-point group
`negguide.tasks` (an object with the same `tasks(options)`, or such a function).
"""
from __future__ import annotations

import importlib
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Iterable

from negguide.bench.tasks.spec import (
    Conditioning,
    Denoiser,
    Judgement,
    RunProtocol,
    Task,
    TaskRuntime,
)
from negguide.methods.errors import BenchError
from negguide.methods.registry import Registry

TASK_GROUP = "negguide.tasks"
FAMILIES = ("gmm", "gmm_prompts", "mnist_latent", "mnist", "cifar10", "t2i")


@dataclass(frozen=True)
class TaskOptions:
    """Settings that change which tasks exist: the text-to-image prompt file (None: the default)."""

    prompts: Path | None = None


def _family_tasks(family: object, options: TaskOptions) -> Iterable[Task]:
    make = getattr(family, "tasks", family)
    if not callable(make):
        raise BenchError(f"task family {family!r} has no tasks(options) function")
    for task in make(options):
        if not isinstance(task, Task):
            raise BenchError(f"task family {family!r} yielded {type(task).__name__}, not a negguide Task")
        yield task


@lru_cache(maxsize=8)
def catalog(options: TaskOptions = TaskOptions()) -> Registry[Task]:
    """The registry of every task under `options`."""
    def builtins() -> Iterable[tuple[str, Task]]:
        for family in FAMILIES:
            module = importlib.import_module(f"negguide.bench.tasks.{family}")
            yield from ((task.name, task) for task in _family_tasks(module, options))

    def from_plugin(loaded: object, entry_name: str) -> Iterable[tuple[str, Task]]:
        return ((task.name, task) for task in _family_tasks(loaded, options))

    return Registry("task", TASK_GROUP, builtins, from_plugin, "bench list tasks")


def get_task(name: str, options: TaskOptions = TaskOptions()) -> Task:
    return catalog(options).get(name)


def all_tasks(options: TaskOptions = TaskOptions()) -> dict[str, Task]:
    return catalog(options).all()


__all__ = ["Conditioning", "Denoiser", "Judgement", "RunProtocol", "Task", "TaskOptions", "TaskRuntime", "all_tasks", "catalog", "get_task"]
