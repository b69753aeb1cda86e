"""Loading the task families and looking tasks up by name.

The families register their tasks with ``@register_task`` (bench.tasks.base) when imported;
:func:`load_tasks` imports them. Optional families whose module is absent from a checkout are
skipped; the det/seg modules import without mm* installed (their tasks then fail to build).
"""

from __future__ import annotations

import importlib
from collections.abc import Callable

from bench.core.errors import ConfigError
from bench.tasks.base import TASKS, Task

FAMILIES = (
    "bench.tasks.classification",
    "bench.tasks.vit",
    "bench.tasks.imagefolder",
    "bench.tasks.detection",
    "bench.tasks.segmentation",
)


def load_tasks() -> dict[str, Callable[..., Task]]:
    for i, module in enumerate(FAMILIES):
        try:
            importlib.import_module(module)
        except ModuleNotFoundError as err:
            if i > 0 and err.name and err.name.startswith(module):
                continue  # optional family not present in this checkout
            raise
    return TASKS


def get_task(name: str, model: str | None = None, data: str | None = None) -> Task:
    tasks = load_tasks()
    if name not in tasks:
        raise ConfigError("task", f"unknown task '{name}'; allowed: {', '.join(sorted(tasks))}")
    return tasks[name](model=model, data=data) if data is not None else tasks[name](model=model)
