"""Tasks by kind: ``register_task`` adds one, ``create_task`` builds the one a config names."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

from fedmed.config.schema import TaskConfig, TaskKind

if TYPE_CHECKING:
    from fedmed.tasks.base import Task

_TASKS: dict[TaskKind, type[Task]] = {}


def register_task(kind: TaskKind) -> Callable[[type[Task]], type[Task]]:
    """Register a Task subclass for ``kind``; a second one for the same kind is a programming error."""

    def decorate(cls: type[Task]) -> type[Task]:
        if kind in _TASKS:
            raise ValueError(f"task {kind!s} is already registered (by {_TASKS[kind].__name__})")
        _TASKS[kind] = cls
        return cls

    return decorate


def create_task(config: TaskConfig) -> Task:
    """The task object for a config's ``task`` section."""
    return _TASKS[config.kind](config)


def available_tasks() -> list[str]:
    return sorted(str(kind) for kind in _TASKS)
