"""Connecting to Ray the same way from the CLI, jobs and benchmarks."""

from __future__ import annotations

import logging
import sys


def interactive() -> bool:
    """Progress bars only for a person at a terminal; logs (CI, `ray job logs`) get one line per epoch."""
    return sys.stderr.isatty()


def init_ray(**kwargs) -> None:
    """Join the cluster at RAY_ADDRESS (as under `ray job submit`) or start a local Ray, quietly."""
    import ray

    if ray.is_initialized():
        return
    ray.init(logging_level=logging.WARNING, **kwargs)
    if not interactive():
        # Without a terminal, Ray Data logs every dataset's progress table at INFO level. Imported first:
        # ray.data configures its loggers on first import, which would undo the level set here.
        import ray.data  # noqa: F401

        logging.getLogger("ray.data").setLevel(logging.WARNING)
