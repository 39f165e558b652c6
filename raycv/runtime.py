"""Process set-up shared by the CLI, jobs, benchmarks and Ray workers: connecting to Ray, logs, memory."""

from __future__ import annotations

import ctypes
import functools
import logging
import os
import re
import sys

# glibc's mallopt parameters (malloc.h)
M_TRIM_THRESHOLD = -1
M_MMAP_THRESHOLD = -3


@functools.cache
def keep_array_memory_in_heap() -> None:
    """Serve allocations of up to 32 MB from the heap and keep up to 64 MB of freed heap, once per process.

    Image work allocates and frees multi-megabyte numpy temporaries per sample. Under glibc's adaptive defaults
    a fresh process returns them to the kernel and page-faults them back in: a synthesis worker's first 500
    detect scenes took 11.6 s, against 9.9 s once its heap had grown and 9.1 s with these settings from the
    start. Both must be set: a fixed trim threshold alone turns the adaptive mmap threshold off, so every
    temporary is mmapped (17 s). A no-op where the C library has no mallopt (macOS)."""
    mallopt = getattr(ctypes.CDLL(None), "mallopt", None)
    if mallopt is not None:
        mallopt(M_MMAP_THRESHOLD, 32 << 20)
        mallopt(M_TRIM_THRESHOLD, 64 << 20)


def interactive() -> bool:
    """Progress bars only for a person at a terminal; logs (CI, `ray job logs`) get one line per epoch."""
    return sys.stderr.isatty()


# Lines Ray's processes send to the driver (log_to_driver) that tell a raycv user nothing to act on.
# Matched per line, so everything else a worker prints, tracebacks included, still reaches the user.
RAY_NOISE = (
    # Empty lines: Ray Train echoes each print into its log with the newline kept, and the progress bar of
    # train.py (ray.experimental.tqdm_ray) prints its state every second, so each second added a blank line.
    r"^$",
    # Ray Data, in Ray Train's data coordinators: a line per dataset and epoch, and its advice to turn on
    # the ingest progress bars that train.py turns off on purpose.
    r"Dataset \S+ execution finished in ",
    r"Progress bars disabled\. To enable, set ",
    # Ray Train itself passes Ray Data an option Ray Data deprecates: the warning and its source line.
    r"`ExecutionOptions\.exclude_resources` is deprecated",
    r"^\s*self\.exclude_resources = exclude_resources$",
    # Ray core's advice to the author of an actor class, for Ray Train's own PreemptionWatcher.
    r"has constructor arguments in the object store and max_restarts > 0",
    # The GCS failing to kill an actor that had already exited, e.g. when Serve or Tune stop.
    r"Failed to kill actor .*KillActor RPC failed",
    # serve.shutdown killing Serve's controller while its own graceful shutdown call is still pending.
    r"Task ServeController\.graceful_shutdown failed\. There are infinite retries remaining",
    # Ray Train freeing a run's resources once its controller is gone: after every Tune trial, stopped or done.
    r"Detected that the Ray Train controller actor \(\w+\) is dead\. Cleaning up placement group",
    # The raylet counting worker processes against the CPUs: Tune's trial drivers ask 0.01 CPU on purpose (tune.py).
    r"PYTHON worker processes have been started on node: .* the maximum expected startup concurrency",
)
# Ray 2.60 turns token authentication on for every local Ray that ray.init starts and says so each time.
# Auth stays on; only the notice goes.
TOKEN_AUTH_LOGGER = "ray._private.authentication.authentication_token_setup"


def init_ray(verbose: bool = False, **kwargs) -> None:
    """Join the cluster at RAY_ADDRESS (as under `ray job submit`) or start a local Ray with `kwargs` for
    ray.init. Quiet unless `verbose`: Ray's INFO logs, its token-auth notice and the lines in RAY_NOISE
    are hidden; warnings, errors and tracebacks are not."""
    import ray

    if ray.is_initialized():
        return
    if not verbose:
        quiet_ray_logs()
    if kwargs.get("address") is None and "RAY_ADDRESS" not in os.environ:  # a new local Ray
        # "local", not None: with None, ray.init joins the address in <temp dir>/ray/ray_current_cluster,
        # which every `ray start` writes and a killed one leaves behind, and then refuses num_cpus.
        kwargs["address"] = "local"
        kwargs["runtime_env"] = {"worker_process_setup_hook": f"{__name__}.{use_own_cluster.__name__}",
                                 **(kwargs.get("runtime_env") or {})}
    ray.init(logging_level=logging.INFO if verbose else logging.WARNING, **kwargs)


def use_own_cluster() -> None:
    """Run in every worker of a local Ray that init_ray started: Ray's address look-ups find this Ray.

    Ray Train's PlacementGroupCleaner asks the state API, without an address, whether a run's controller
    died. Without RAY_ADDRESS that searches the machine for Ray instances, and fails with a traceback
    ("Found multiple active Ray instances") once a second raycv command has started its own Ray; the
    placement groups of a run whose controller dies are then never freed."""
    import ray

    os.environ.setdefault("RAY_ADDRESS", ray.get_runtime_context().gcs_address)


def quiet_ray_logs() -> None:
    # Imported first: ray.data configures its loggers on first import, which would undo the level set here.
    import ray.data  # noqa: F401
    from ray._private import ray_logging

    logging.getLogger(TOKEN_AUTH_LOGGER).setLevel(logging.ERROR)
    # Ray Data logs each dataset's start, plan and end at INFO, and its progress too without a terminal.
    logging.getLogger("ray.data").setLevel(logging.WARNING)
    # Its progress-bar module only gives advice on the bars, at WARNING: that operator names get shortened to
    # fit a terminal, or that the bars are off (forwarded from workers, those lines are in RAY_NOISE).
    logging.getLogger("ray.data._internal.progress").setLevel(logging.ERROR)
    # Its warning that no CPU is free when a dataset starts on the driver. raycv checks a run's layout before
    # Ray starts (a CPU left to decode, or the data cached), so such a dataset waits a moment, never forever.
    logging.getLogger("ray.data.dataset").addFilter(
        lambda record: "does not have any available CPUs" not in record.getMessage())
    # Ray's own filter for forwarded lines is RAY_DEDUP_LOGS_SKIP_REGEX, read once, when ray is imported
    # (before this runs): the user's pattern is kept and RAY_NOISE added, on the driver's deduplicators of
    # forwarded stdout and stderr. RAY_DEDUP_LOGS=0 turns them off, and so shows every line.
    skip = re.compile("|".join(filter(None, [os.environ.get("RAY_DEDUP_LOGS_SKIP_REGEX"), *RAY_NOISE])))
    for deduplicator in (ray_logging.stdout_deduplicator, ray_logging.stderr_deduplicator):
        deduplicator.skip_re = skip
