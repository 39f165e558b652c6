"""Sweeps: Ray Tune trials that each run the Ray Train loop (learning rate, sparsity, any config field or
task option).

    raycv classify tune --data data/shapes --space lr=loguniform:1e-3:1e-1 --space sparsity=grid:0.5,0.7,0.9
    raycv compress_ae tune --data data/crops --model factorized --space rd_lambda=grid:0.003,0.01

Every trial is a driver function that builds a TorchTrainer (train.py) and forwards its per-epoch
metrics to Tune with TuneReportCallback; ASHA stops trials that fall behind. The dataset is decoded
once and shared by all trials. Re-running the same sweep name resumes an interrupted sweep.
"""

from __future__ import annotations

import dataclasses
import io
import json
from dataclasses import dataclass
from typing import Any

import ray
import ray.tune
from ray.tune.integration.ray_train import TuneReportCallback
from ray.tune.schedulers import ASHAScheduler

from raycv import storage
from raycv.config import TrainConfig
from raycv.errors import RaycvError
from raycv.report import table, write_bytes
from raycv.tasks import get_task
from raycv.tasks.base import Task
from raycv.tasks.cards import CARDS
from raycv.train import BEST_CHECKPOINT, build_trainer, prepare_datasets

SAMPLERS = {
    "loguniform": lambda low, high: ray.tune.loguniform(low, high),
    "uniform": lambda low, high: ray.tune.uniform(low, high),
    "randint": lambda low, high: ray.tune.randint(int(low), int(high)),
}
LISTS = {"grid": ray.tune.grid_search, "choice": ray.tune.choice}


def parse_value(text: str) -> Any:
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return text


CONFIG_KEYS = {f.name for f in dataclasses.fields(TrainConfig)} - {"extra", "name", "storage"}


def trial_config(base: dict[str, Any], values: dict[str, Any]) -> TrainConfig:
    """`base` (a TrainConfig's dict) with a trial's values: config fields replaced, task options in `extra`."""
    options = {key: value for key, value in values.items() if key not in CONFIG_KEYS}
    fields = {key: value for key, value in values.items() if key in CONFIG_KEYS}
    return TrainConfig.from_dict({**base, **fields, "extra": {**base.get("extra", {}), **options}})


def parse_space(specs: list[str], base: TrainConfig, task_name: str | None = None) -> dict[str, Any]:
    """`KEY=KIND:ARGS` strings to a Tune search space over TrainConfig's fields and, given `task_name`,
    the task's options (e.g. compress_ae's rd_lambda); every value a trial could get is validated first,
    so a bad sweep fails before any trial starts.

    KIND is loguniform:LOW:HIGH, uniform:LOW:HIGH, randint:LOW:HIGH, grid:V1,V2,... or choice:V1,V2,...
    """
    space: dict[str, Any] = {}
    card = CARDS[task_name] if task_name else None
    known = CONFIG_KEYS | set(card.train_options if card else ())
    for spec in specs:
        key, _, rest = spec.partition("=")
        kind, _, arguments = rest.partition(":")
        if key not in known:
            raise RaycvError(f"unknown search-space key {key!r}; valid keys: {', '.join(sorted(known))}")
        if kind in SAMPLERS:
            bounds = [parse_value(v) for v in arguments.split(":")]
            if len(bounds) != 2 or not all(isinstance(b, (int, float)) for b in bounds) or bounds[0] >= bounds[1]:
                raise RaycvError(f"invalid search space {spec!r}: expected {key}={kind}:LOW:HIGH with LOW < HIGH")
            values, space[key] = bounds, SAMPLERS[kind](*bounds)
        elif kind in LISTS:
            values = [parse_value(v) for v in arguments.split(",") if v]
            if not values:
                raise RaycvError(f"invalid search space {spec!r}: expected {key}={kind}:V1,V2,...")
            space[key] = LISTS[kind](values)
        else:
            raise RaycvError(f"invalid search space {spec!r}: expected KEY=KIND:..., KIND one of "
                             f"{', '.join([*SAMPLERS, *LISTS])}")
        for value in values:
            trial_config(base.to_dict(), {key: value}).validate()
            if card:
                card.check_options({key: value})
    if not space:
        raise RaycvError("empty search space: give at least one --space KEY=KIND:...")
    return space


@dataclass
class SweepResult:
    path: str
    rows: list[dict[str, Any]]  # one per trial, best first
    best_config: dict[str, Any]
    best_checkpoint: str


def run_trial(config: dict[str, Any], task_name: str, base: dict[str, Any], datasets: dict, meta: dict,
              trials_root: str) -> None:
    """One Tune trial: the Ray Train loop with this trial's config, its metrics forwarded to Tune."""
    task = get_task(task_name)
    cfg = trial_config({**base, "name": ray.tune.get_context().get_trial_name()}, config)
    build_trainer(task, cfg, datasets, meta, storage_path=trials_root, callbacks=[TuneReportCallback()]).fit()


def sweep(task: Task, base: TrainConfig, data: str, space: dict[str, Any], name: str, samples: int = 1,
          max_concurrent: int | None = None, asha: bool = True, grace_period: int = 1) -> SweepResult:
    base.validate()
    if samples < 1:
        raise RaycvError(f"invalid samples={samples}: expected an integer >= 1")
    path = storage.join(storage.absolute(base.storage), task.name, "tune", name)
    metric = f"val_{task.metric}"
    trials_root = storage.join(path, "trials")
    datasets, meta = prepare_datasets(task, data, base)
    trainable = ray.tune.with_parameters(run_trial, task_name=task.name, base=base.to_dict(), datasets=datasets,
                                         meta=meta, trials_root=trials_root)
    # The trial driver only waits on its TorchTrainer, whose workers hold the CPUs and GPUs. It asks for no
    # CPU at all (Tune refuses an empty request, so a little memory stands in): even 0.01 CPU left trials
    # whose workers ask for every CPU of a node waiting for a worker that could never start.
    trainable = ray.tune.with_resources(trainable, {"CPU": 0, "memory": 64 * 2**20})
    if storage.exists(path) and ray.tune.Tuner.can_restore(path):  # storage.exists: one line if unreachable
        tuner = ray.tune.Tuner.restore(path, trainable=trainable, resume_errored=True)
    else:
        scheduler = ASHAScheduler(max_t=base.epochs, grace_period=grace_period, reduction_factor=2) if asha else None
        tuner = ray.tune.Tuner(
            trainable,
            param_space=space,
            tune_config=ray.tune.TuneConfig(metric=metric, mode=task.metric_mode, scheduler=scheduler,
                                            num_samples=samples, max_concurrent_trials=max_concurrent),
            # Tune's own report (a status table every 30 s, each trial's config and results) repeats the trials'
            # epoch lines and the table at the end; a failed trial is still logged, and listed in that table.
            run_config=ray.tune.RunConfig(storage_path=storage.join(storage.absolute(base.storage), task.name, "tune"),
                                          name=name, verbose=None if base.verbose else 0),
        )
    results = tuner.fit()
    rows = []
    for result in results:
        if result.metrics is None or metric not in (result.metrics or {}):
            rows.append({"trial": result.path.rsplit("/", 1)[-1], "status": f"error: {result.error}"})
            continue
        best_epoch = max(result.metrics_dataframe.to_dict("records"),
                         key=lambda row: row[metric] if task.metric_mode == "max" else -row[metric])
        rows.append({
            "trial": result.path.rsplit("/", 1)[-1][:40], **{key: result.config[key] for key in space},
            "epochs": int(result.metrics["training_iteration"]), metric: best_epoch[metric],
            **{f"val_{name}": best_epoch[f"val_{name}"] for name in task.companion_metrics},
            **({"sparsity_measured": best_epoch["sparsity"]} if "sparsity" in best_epoch else {}),
            "status": "stopped early" if result.metrics["training_iteration"] < base.epochs else "completed",
            "checkpoint": storage.under(trials_root, best_epoch["checkpoint_path"]),
        })
    scored = [row for row in rows if metric in row]
    if not scored:
        raise RaycvError(f"every trial of sweep {name} failed: {rows}")
    scored.sort(key=lambda row: row[metric], reverse=task.metric_mode == "max")
    rows = scored + [row for row in rows if metric not in row]
    for row in scored:
        row["latency_ms_b1"] = checkpoint_latency_ms(task, row["checkpoint"], meta)
    best = scored[0]
    best_config = trial_config(base.to_dict(), {key: best[key] for key in space}).to_dict()
    storage.copy_dir(best["checkpoint"], storage.join(path, BEST_CHECKPOINT))
    storage.write_json(storage.join(path, "best.json"), {"config": best_config, metric: best[metric],
                                                         "checkpoint": storage.join(path, BEST_CHECKPOINT)})
    storage.write_text(storage.join(path, "results.txt"), table(rows, f"sweep {name}, best first") + "\n")
    write_bytes(storage.join(path, "tradeoff.png"), tradeoff_png(scored, space, metric))
    return SweepResult(path, rows, best_config, storage.join(path, BEST_CHECKPOINT))


def checkpoint_latency_ms(task: Task, path: str, meta: dict[str, Any], runs: int = 20) -> float:
    """CPU latency of one image through a trial's best model, measured in the driver one trial at a
    time, so every trial is timed on the same quiet cores."""
    import numpy as np
    import torch

    from raycv.checkpoint import load_model
    from raycv.compress import measure_latency_ms

    loaded = load_model(path, task.name, torch.device("cpu"))
    height, width = meta["image_size"]
    example = task.preprocess([np.zeros((height, width, 3), dtype=np.uint8)], meta)
    return round(measure_latency_ms(loaded.model, example, runs), 3)


def pareto_front(points: list[tuple[float, float]], higher_x_is_better: bool) -> list[tuple[float, float]]:
    """The points no other point beats on both the x axis and the metric (y, higher is better)."""
    ordered = sorted(points, key=lambda p: (-p[0] if higher_x_is_better else p[0], -p[1]))
    front, best_so_far = [], float("-inf")
    for x, y in ordered:  # walking from the best x towards the worst, keep each one that improves y
        if y > best_so_far:
            front.append((x, y))
            best_so_far = y
    return sorted(front)


def tradeoff_png(rows: list[dict[str, Any]], space: dict[str, Any], metric: str) -> bytes:
    """Two panels with their Pareto fronts: the metric against sparsity (or the first swept key;
    higher sparsity is better) and against CPU latency at batch 1 (lower is better)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    x_key = "sparsity" if "sparsity" in space else next(iter(space))
    figure, axes = plt.subplots(1, 2, figsize=(11, 4))
    for axis, key, higher_is_better in ((axes[0], x_key, x_key == "sparsity"), (axes[1], "latency_ms_b1", False)):
        points = [(float(row[key]), float(row[metric])) for row in rows]
        axis.scatter(*zip(*points, strict=False), label="trials", alpha=0.6)
        axis.plot(*zip(*pareto_front(points, higher_is_better), strict=False), color="tab:red", marker="o",
                  label="Pareto front")
        axis.set(xlabel=key, ylabel=metric, title=f"{metric} vs {key}")
        if key == "lr":
            axis.set_xscale("log")
        axis.grid(alpha=0.3)
        axis.legend()
    figure.tight_layout()
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=100)
    plt.close(figure)
    return buffer.getvalue()
