"""What verbs read and write besides checkpoints: one split of a dataset, the file --out names."""

from __future__ import annotations

from typing import TYPE_CHECKING

from raycv.errors import RaycvError

if TYPE_CHECKING:
    import ray.data

    from raycv.tasks.base import Task


def open_split(task: Task, data: str, split: str) -> ray.data.Dataset:
    """The split named `split` of the dataset at `data` (synthesized, or in the task's real format)."""
    from raycv.synth import open_dataset

    splits, _ = open_dataset(task, data)
    if split not in splits:
        raise RaycvError(f"dataset {data} has no split {split!r}; splits: {', '.join(splits)}")
    return splits[split]


def write_output(path: str, data: bytes) -> None:
    """`data` as the file at `path` (a verb's --out); one that cannot be written is a RaycvError."""
    try:
        with open(path, "wb") as file:
            file.write(data)
    except OSError as problem:
        raise RaycvError(f"cannot write --out {path}: {problem}") from None
