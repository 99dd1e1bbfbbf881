"""Tasks: binary, multi-label and multi-class classification, segmentation (fedmed.tasks.base says what a task owns)."""

from fedmed.tasks import binary, multiclass, multilabel, segmentation  # noqa: F401  (each registers itself)
from fedmed.tasks.base import Metric, SiteEvaluation, Task
from fedmed.tasks.registry import available_tasks, create_task, register_task

__all__ = ["Metric", "SiteEvaluation", "Task", "available_tasks", "create_task", "register_task"]
