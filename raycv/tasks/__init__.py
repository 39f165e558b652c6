"""The tasks raycv knows, by name. Explicit on purpose: grep for a task name and you find it here.

Importing this package is cheap (no torch, no Ray): the command line lists tasks and reads their
cards (tasks/cards.py) before it decides whether anything heavy must load.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

from raycv.errors import RaycvError

if TYPE_CHECKING:
    from raycv.tasks.base import Task

TASK_MODULES = {
    "captcha": "raycv.tasks.captcha",
    "textrec": "raycv.tasks.textrec",
    "classify": "raycv.tasks.classify",
    "detect": "raycv.tasks.detect",
    "boxreg": "raycv.tasks.boxreg",
    "segment": "raycv.tasks.segment",
    "superres": "raycv.tasks.superres",
    "inpaint": "raycv.tasks.inpaint",
    "compress_ae": "raycv.tasks.compress_ae",
    "dcgan": "raycv.tasks.dcgan",
    "search": "raycv.tasks.search",
}


def get_task(name: str) -> Task:
    if name not in TASK_MODULES:
        raise RaycvError(f"unknown task {name!r}; valid tasks: {', '.join(sorted(TASK_MODULES))}")
    return importlib.import_module(TASK_MODULES[name]).TASK
