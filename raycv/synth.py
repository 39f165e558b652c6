"""The Ray Data synthesis driver, generic over tasks.

`ray.data.range(count)` is mapped to stored rows by the task's `synthesize_sample`. Every sample draws
from its own generator seeded by (seed, split, sample id), so the contents do not depend on how Ray
splits the range into blocks or how many workers run: one worker and fifty give the same bytes.
The dataset is written to a temporary folder and moved into place, and its manifest is written
last, so a half-written dataset is never read.
"""

from __future__ import annotations

import time
import uuid
import zlib
from typing import Any

import numpy as np
import ray
import ray.data

import raycv
from raycv import storage
from raycv.config import TrainConfig
from raycv.errors import RaycvError
from raycv.runtime import keep_array_memory_in_heap
from raycv.tasks import get_task
from raycv.tasks.base import Task

MANIFEST = "manifest.json"
MAX_BLOCK_SAMPLES = 512  # the most samples one synthesis block holds in memory (~90 MB of 300-px scenes)


def sample_generator(seed: int, split: str, sample_id: int) -> np.random.Generator:
    # Keyed by the split's name, not its position, so a val split is the same with or without train.
    return np.random.default_rng([seed, zlib.crc32(split.encode()), sample_id])


def _synthesize_batch(batch: dict[str, np.ndarray], task_name: str, seed: int, split: str,
                      params: dict[str, Any]) -> dict[str, np.ndarray]:
    keep_array_memory_in_heap()
    task = get_task(task_name)
    rows = [
        {"id": int(sample_id), **task.synthesize_sample(sample_generator(seed, split, int(sample_id)), params)}
        for sample_id in batch["id"]
    ]
    return {key: np.array([row[key] for row in rows], dtype=object if isinstance(rows[0][key], bytes) else None)
            for key in rows[0]}


def _synthesize_blocks(batch: dict[str, np.ndarray], bounds: np.ndarray, **kwargs) -> dict[str, np.ndarray]:
    """Synthesize blocks given by index: block i holds sample ids bounds[i] .. bounds[i + 1] - 1."""
    ids = np.concatenate([np.arange(bounds[i], bounds[i + 1]) for i in batch["id"]])
    return _synthesize_batch({"id": ids}, **kwargs)


def block_bounds(count: int, parallelism: int, max_block: int) -> np.ndarray:
    """Sample-id boundaries [0, ..., count] of the synthesis blocks, by guided self-scheduling: each block
    takes 1/parallelism of the samples not yet in a block, at most `max_block` (memory) and at least a small
    minimum, because Ray Data leaves a worker idle for ~0.15 s between two tasks.

    Equal blocks of 500 detect scenes (~10 s each) let the last worker finish up to a whole block after the
    first: a worker that starts late (Ray Data waits ~1 s before it grants the second CPU) or shares its core
    with Ray's own processes runs 5-10 % slower, and on 2 cores one CPU sat idle for the last 4.5 s of a 56 s
    run. Shrinking blocks let the faster workers take up that slack, so all finish within a small block."""
    min_block = min(64, max(16, count // (4 * parallelism)))
    bounds = [0]
    while bounds[-1] < count:
        remaining = count - bounds[-1]
        bounds.append(bounds[-1] + min(remaining, max_block, max(min_block, -(-remaining // parallelism))))
    return np.array(bounds)


def synthesize(task: Task, out: str, splits: dict[str, int], seed: int = 0, params: dict[str, Any] | None = None,
               workers: int | None = None, batch_size: int = MAX_BLOCK_SAMPLES,
               overwrite: bool = False) -> dict[str, Any]:
    """Write `splits` (name -> sample count) of the task's synthetic data under `out`; returns the manifest.
    Splits of size 0 are left out (a held-out test set is `{"train": 0, "val": 1000}` with another seed)."""
    params = {**task.synth_defaults, **(params or {})}
    unknown = sorted(set(params) - set(task.synth_defaults))
    if unknown:
        raise RaycvError(f"unknown {task.name} synth parameter(s) {', '.join(unknown)}; "
                         f"valid: {', '.join(sorted(task.synth_defaults)) or 'none'}")
    for split, count in splits.items():
        if count < 0:
            raise RaycvError(f"invalid size {count} for split {split!r}: expected an integer >= 0")
    splits = {split: count for split, count in splits.items() if count > 0}
    if not splits:
        raise RaycvError("every split has size 0: nothing to synthesize")
    if workers is not None and workers < 1:
        raise RaycvError(f"invalid workers={workers}: expected an integer >= 1")
    out = storage.absolute(out)
    if storage.exists(out):
        if not overwrite:
            raise RaycvError(f"dataset folder {out} already exists; pass --overwrite to replace it")
        storage.delete_dir(out)
    meta = task.dataset_meta(params)
    tmp = f"{out}.tmp-{uuid.uuid4().hex[:8]}"
    started = time.perf_counter()
    try:
        for split, count in splits.items():
            # No block holds more than `batch_size` samples in memory; contents do not depend on the block
            # layout (per-sample seeds).
            parallelism = workers or max(1, int(ray.cluster_resources().get("CPU", 1)))
            bounds = block_bounds(count, parallelism, batch_size)
            dataset = ray.data.range(len(bounds) - 1, override_num_blocks=len(bounds) - 1).map_batches(
                _synthesize_blocks,
                fn_kwargs={"bounds": bounds, "task_name": task.name, "seed": seed, "split": split,
                           "params": task.split_params(split, params, seed)},
                batch_size=None,
            )
            # Read, synthesis and Parquet write fuse into one task per block only when no operator has its
            # own batch size or task-pool size, so `workers` caps the CPUs of the whole execution instead.
            # Unfused, a separate write task took a CPU slot from synthesis (2 workers on 2 cores ran at
            # 0.58 of twice one worker's rate) and a separate range read kept the second worker idle for
            # the first 2.5 s of every run (0.79).
            if workers is not None:
                options = dataset.context.execution_options
                options.resource_limits = options.resource_limits.copy(cpu=workers)
            dataset.write_parquet(storage.join(tmp, split))
            task.export_split(tmp, split, meta)  # e.g. COCO JSON next to the Parquet rows of scene tasks
        manifest = {
            "task": task.name, "seed": seed, "splits": dict(splits), "params": params, "meta": meta,
            "raycv_version": raycv.__version__, "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "seconds": round(time.perf_counter() - started, 2),
        }
        # The manifest goes in after the move: on object stores the move is a copy, file by file, and
        # readers trust a dataset once its manifest exists.
        storage.move(tmp, out)
        storage.write_json(storage.join(out, MANIFEST), manifest)
    finally:
        storage.delete_dir(tmp)
    return manifest


def open_dataset(task: Task, path: str, cfg: TrainConfig | None = None) -> tuple[dict[str, ray.data.Dataset],
                                                                                 dict[str, Any]]:
    """Splits (stored rows, not yet decoded) and the dataset meta, from a raycv-synthesized folder
    (recognised by its manifest) or from real data in one of the task's formats, read with the options
    of `cfg` (a run's config; the task's defaults without one)."""
    path = storage.absolute(path)
    if not storage.exists(path):
        raise RaycvError(f"dataset not found: {path} (make one with `raycv {task.name} synth --out {path}`)")
    manifest_path = storage.join(path, MANIFEST)
    if not storage.exists(manifest_path):
        return task.read(path, cfg or task.default_config())
    manifest = storage.read_json(manifest_path)
    if manifest.get("task") != task.name:
        raise RaycvError(f"dataset {path} was made for task {manifest.get('task')!r}, not {task.name!r}")
    splits = {split: ray.data.read_parquet(storage.join(path, split)) for split in manifest["splits"]}
    return splits, {**manifest["meta"], "source": path}
