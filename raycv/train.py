"""The one Ray Train loop for every task: DDP on N workers (CPU or GPU), AMP, checkpoints, resume.

`fit` is the entry point: it opens the dataset, decodes it with Ray Data, and runs `train_loop` on a
TorchTrainer. The loop only talks to the Task interface (`build_model`, `augment`, `loss`,
`evaluate`); it knows nothing about any particular task.
"""

from __future__ import annotations

import logging
import os
import tempfile
import time
from dataclasses import dataclass
from typing import Any

import ray
import ray.train
import ray.train.torch
import torch
import torch.distributed as dist
from ray.data.dataset import MaterializedDataset
from ray.train import CheckpointConfig, FailureConfig, LoggingConfig, RunConfig, ScalingConfig

from raycv import checkpoint, storage
from raycv.config import TrainConfig
from raycv.devices import autocast_context, autocast_dtype
from raycv.synth import open_dataset
from raycv.errors import RaycvError
from raycv.report import write_run_report
from raycv.runtime import interactive
from raycv.sparsity import apply_global_sparsity, measured_sparsity, restore_masks
from raycv.tasks import get_task
from raycv.tasks.base import Task, with_task_options

FAULT_MARKER = ".fault_injected_at_epoch_{epoch}"
BEST_CHECKPOINT = "best"
# Ray Train workers patch print() to echo into logging as well (every line twice); log instead.
logger = logging.getLogger("raycv")


@dataclass
class FitResult:
    run_dir: str
    best_checkpoint: str
    last_checkpoint: str
    history: list[dict[str, Any]]
    best_metrics: dict[str, Any]
    resumed_at: list[int]


def default_run_name(task: Task, cfg: TrainConfig) -> str:
    """Like Ultralytics: train, train2, train3, ... A new name starts a new run; naming an existing
    run resumes it from its last checkpoint."""
    root = storage.join(storage.absolute(cfg.storage), task.name)
    existing = set(storage.list_dir(root)) if storage.exists(root) else set()
    index = 1
    while (name := "train" if index == 1 else f"train{index}") in existing:
        index += 1
    return name


def prepare_datasets(task: Task, data: str, cfg: TrainConfig) -> tuple[dict[str, ray.data.Dataset], dict[str, Any]]:
    """The train and val splits decoded for training, and the run's dataset meta (with "rows", the split
    sizes). Training rows a task augments on the CPU workers are decoded afresh every epoch; caching then
    keeps only the stored (encoded) rows in the object store."""
    splits, meta = open_dataset(task, data, cfg)
    missing = {"train", "val"} - set(splits)
    if missing:
        raise RaycvError(f"dataset {data} has no {' or '.join(sorted(missing))} split (found: {', '.join(splits)})")
    meta = task.training_meta(meta, cfg)
    rows = {name: splits[name].count() for name in ("train", "val")}
    meta = {**meta, "rows": rows}
    augments_rows = task.augments_rows(meta)
    cache = should_cache(cfg.cache_data, meta)
    decoded = {}
    for name in ("train", "val"):
        random_rows = name == "train" and augments_rows  # decoded afresh every epoch: cache the stored rows
        decode = task.decode_train if random_rows else task.decode
        stored = splits[name]
        if cache and random_rows:
            # A streamed read draws a new row order each epoch (readers of users' files shuffle them); a cached
            # copy would repeat one order, so it is shuffled in the object store, where it fits by construction.
            stored = stored.materialize().random_shuffle()
        decoded[name] = stored.map_batches(decode, fn_kwargs={"meta": meta}, batch_size=256)
        if cache and not random_rows:
            decoded[name] = decoded[name].materialize()
    for dataset in decoded.values():
        # Per-epoch ingest bars from every worker would drown the epoch lines; rank 0 shows its own. For the
        # same reason Ray Data's two "Starting execution" lines per dataset and epoch show only with --verbose.
        dataset.context.enable_progress_bars = False
        dataset.context.print_on_execution_start = cfg.verbose
    return decoded, meta


def decoded_bytes(meta: dict[str, Any]) -> int | None:
    """The decoded size of a dataset's images (uint8 RGB at the training size), or None when the meta
    gives no image size."""
    if "image_size" not in meta:
        return None
    height, width = meta["image_size"]
    return sum(meta["rows"].values()) * height * width * 3


def should_cache(mode: str, meta: dict[str, Any]) -> bool:
    """--cache-data on/off, or auto: cache what fits in a third of the object store (the rest is left
    to the blocks in flight and to Ray Train), so a dataset larger than memory streams."""
    if mode != "auto":
        return mode == "on"
    size = decoded_bytes(meta)
    store = ray.cluster_resources().get("object_store_memory", 0)
    return size is None or size <= store / 3


def check_model_options(task: Task, cfg: TrainConfig, meta: dict[str, Any]) -> None:
    """Fail here, in the driver, on a bad model name or option, or weights that do not fit the model,
    rather than in every worker."""
    model = task.build_model(cfg, meta)
    head = task.head(model, meta)
    if head is None and (cfg.freeze_backbone_epochs or cfg.backbone_lr_scale != 1):
        raise RaycvError(f"--freeze-backbone-epochs and --backbone-lr-scale need a model with a classifier head; "
                         f"{task.name}'s {cfg.model} has none")
    if cfg.pretrained:
        checkpoint.load_pretrained(model, checkpoint.read_pretrained(cfg.pretrained), head, cfg.pretrained)


def check_ingest_cpus(cfg: TrainConfig, train: ray.data.Dataset) -> None:
    """Training rows decoded while training runs (streamed, or augmented every epoch) need Ray Data tasks,
    each of which asks for a CPU. On a local Ray whose CPUs the trainers reserve all of, none would ever be
    scheduled and the run would wait forever; refuse it instead. A cluster (RAY_ADDRESS) may add nodes."""
    if isinstance(train, MaterializedDataset) or os.environ.get("RAY_ADDRESS"):
        return
    total = ray.cluster_resources().get("CPU", 0)
    reserved = cfg.workers * cfg.cpus_per_worker
    if total - reserved < 1:
        raise RaycvError(f"{cfg.workers} workers x {cfg.cpus_per_worker:g} CPUs reserve {reserved:g} of this Ray's "
                         f"{total:g} CPUs, leaving none to decode the streamed training data; lower --workers or "
                         "--cpus-per-worker (e.g. --cpus-per-worker 0.5), or decode once with --cache-data on")


def for_workers(cfg: TrainConfig) -> TrainConfig:
    """The config as the Ray Train workers read it: a local --pretrained path made absolute, since the workers
    run in a directory of Ray's, not in the one the command was given in."""
    return cfg.replace(pretrained=storage.absolute(cfg.pretrained)) if cfg.pretrained else cfg


def build_trainer(task: Task, cfg: TrainConfig, datasets: dict[str, ray.data.Dataset], meta: dict[str, Any],
                  storage_path: str | None = None, callbacks: list | None = None) -> ray.train.torch.TorchTrainer:
    """A TorchTrainer running `train_loop` on prepared datasets; the run lands in storage_path/cfg.name
    (default: STORAGE/TASK/NAME)."""
    cfg = for_workers(with_task_options(task, cfg.validate()))
    check_model_options(task, cfg, meta)
    rows_per_worker = meta["rows"]["train"] // cfg.workers
    steps_per_epoch = rows_per_worker // cfg.batch_size
    if steps_per_epoch < 1:
        raise RaycvError(f"batch_size={cfg.batch_size} is larger than the {rows_per_worker} training rows each of "
                         f"the {cfg.workers} workers gets; lower --batch-size or --workers")
    check_ingest_cpus(cfg, datasets["train"])
    storage_path = storage_path or storage.join(storage.absolute(cfg.storage), task.name)
    resources = {"CPU": cfg.cpus_per_worker, **({"GPU": cfg.gpus_per_worker} if cfg.gpu else {})}
    return ray.train.torch.TorchTrainer(
        train_loop,
        train_loop_config={"task": task.name, "config": cfg.to_dict(), "dataset": meta, "progress_bar": interactive(),
                           "steps_per_epoch": steps_per_epoch, "run_dir": storage.join(storage_path, cfg.name)},
        scaling_config=ScalingConfig(num_workers=cfg.workers, use_gpu=cfg.gpu, resources_per_worker=resources),
        run_config=RunConfig(
            storage_path=storage_path,
            name=cfg.name,
            failure_config=FailureConfig(max_failures=cfg.max_failures),
            checkpoint_config=CheckpointConfig(
                num_to_keep=cfg.keep_checkpoints,
                checkpoint_score_attribute=f"val_{task.metric}",
                checkpoint_score_order=task.metric_mode,
            ),
            callbacks=callbacks,
            logging_config=LoggingConfig(log_level="INFO" if cfg.verbose else "WARNING"),
        ),
        datasets=datasets,
    )


def fit(task: Task, cfg: TrainConfig, data: str) -> FitResult:
    """Train `task` on the dataset at `data`; resumes if a run of the same name exists."""
    cfg = cfg.replace(name=cfg.name or default_run_name(task, cfg)).validate()
    run_dir = storage.join(storage.absolute(cfg.storage), task.name, cfg.name)
    storage.exists(run_dir)  # an unreachable bucket is one line here, not a traceback from inside Ray Train
    datasets, meta = prepare_datasets(task, data, cfg)
    result = build_trainer(task, cfg, datasets, meta).fit()
    if result.error is not None:
        raise result.error
    best = result.get_best_checkpoint(f"val_{task.metric}", task.metric_mode) or result.checkpoint
    last_path = storage.under(run_dir, result.checkpoint.path)
    with checkpoint.local_copy(last_path) as folder:
        last_meta = checkpoint.read_meta(folder)
    history = last_meta["history"]
    best_metrics = max(history, key=lambda row: row[f"val_{task.metric}"] * (1 if task.metric_mode == "max" else -1))
    write_run_report(run_dir, cfg, history, task.metric)
    # A stable name for the best weights (Ray's checkpoint folders are named by time).
    best_path = storage.join(run_dir, BEST_CHECKPOINT)
    storage.copy_dir(storage.under(run_dir, best.path), best_path)
    return FitResult(run_dir, best_path, last_path, history, best_metrics, last_meta.get("resumed_at", []))


# ---------------------------------------------------------------------------------------------
# Inside each Ray Train worker.


def build_on_device(task: Task, cfg: TrainConfig, meta: dict[str, Any], device: torch.device) -> torch.nn.Module:
    model = task.build_model(cfg, meta).to(device)
    if cfg.channels_last == "on" or (cfg.channels_last == "auto" and device.type == "cuda"):
        model = model.to(memory_format=torch.channels_last)
    return model


def train_step(task: Task, model: torch.nn.Module, batch: dict[str, torch.Tensor], cfg: TrainConfig,
               optimizer: torch.optim.Optimizer, scheduler, scaler: torch.amp.GradScaler,
               amp_dtype: torch.dtype | None, device_augment: bool = True,
               frozen: list[torch.nn.Parameter] | None = None) -> torch.Tensor:
    """One optimisation step; shared by the Ray Train loop and the bare-PyTorch benchmark baseline.
    `device_augment` is False when the rows arrive augmented (Task.augments_rows); `frozen` parameters
    get no update this step (the backbone while --freeze-backbone-epochs lasts)."""
    if cfg.augment and device_augment:
        batch = task.augment(batch, cfg)
    with autocast_context(batch[next(iter(batch))].device, amp_dtype):
        loss = task.loss(model, batch, cfg)
    optimizer.zero_grad(set_to_none=True)
    scaler.scale(loss).backward()
    # Freezing by dropping gradients after DDP has reduced them, not by requires_grad: DDP registers its
    # parameters once and fails on a step where some get no gradient. Optimizers skip a parameter whose
    # grad is None entirely (no momentum, no weight decay), so a frozen layer stays exactly as it was.
    for parameter in frozen or ():
        parameter.grad = None
    if cfg.grad_clip:
        scaler.unscale_(optimizer)  # clip the true gradients, not the loss-scaled ones
        torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
    scaler.step(optimizer)
    scaler.update()
    scheduler.step()
    return loss.detach()


def split_backbone(model: torch.nn.Module, head: str | None) -> tuple[list, list]:
    """(backbone parameters, head parameters) of the raw model; all backbone when there is no head."""
    backbone, head_params = [], []
    for name, parameter in model.named_parameters():
        (head_params if head is not None and name.startswith(f"{head}.") else backbone).append(parameter)
    return backbone, head_params


def build_optimizer(model: torch.nn.Module, cfg: TrainConfig, steps_per_epoch: int,
                    backbone: list[torch.nn.Parameter] | None = None):
    """The optimizer and its schedule. The `backbone` parameters (default: all) learn at
    cfg.backbone_lr_scale x the learning rate, the others (a head) at the full rate."""
    backbone_ids = {id(p) for p in (model.parameters() if backbone is None else backbone)}
    groups = []
    for in_backbone in (True, False):
        scale = cfg.backbone_lr_scale if in_backbone else 1.0
        params = [p for p in model.parameters() if p.requires_grad and (id(p) in backbone_ids) == in_backbone]
        # Weight decay on weights only: decaying BatchNorm scales and biases just fights normalisation.
        for decay in (True, False):
            chosen = [p for p in params if (p.ndim > 1) == decay]
            if chosen:
                groups.append({"params": chosen, "weight_decay": cfg.weight_decay if decay else 0.0,
                               "lr": cfg.lr * scale})
    if cfg.optimizer == "sgd":
        optimizer = torch.optim.SGD(groups, lr=cfg.lr, momentum=cfg.momentum, nesterov=cfg.momentum > 0)
    else:
        optimizer = torch.optim.AdamW(groups, lr=cfg.lr, betas=(cfg.momentum, 0.999))
    total_steps = cfg.epochs * steps_per_epoch
    if cfg.schedule == "onecycle":
        scheduler = torch.optim.lr_scheduler.OneCycleLR(
            optimizer, max_lr=[group["lr"] for group in groups], total_steps=total_steps,
            pct_start=cfg.warmup_fraction)
    elif cfg.schedule == "cosine":
        scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=total_steps)
    else:
        scheduler = torch.optim.lr_scheduler.ConstantLR(optimizer, factor=1.0, total_iters=0)
    return optimizer, scheduler


def global_sum(value: float, device: torch.device) -> float:
    if not dist.is_initialized():
        return value
    tensor = torch.tensor([value], dtype=torch.float64, device=device)
    dist.all_reduce(tensor)
    return float(tensor.item())


def maybe_inject_fault(cfg: TrainConfig, epoch: int, run_dir: str) -> None:
    """Fault injection for tests: the first attempt to start epoch `fail_at_epoch` crashes once (once per
    epoch and run, so a resumed run may be given a later epoch to crash at)."""
    if cfg.fail_at_epoch != epoch or ray.train.get_context().get_world_rank() != 0:
        return
    marker = storage.join(run_dir, FAULT_MARKER.format(epoch=epoch))
    if not storage.exists(marker):
        storage.write_text(marker, f"fault injected at epoch {epoch}\n")
        raise RuntimeError(f"raycv: injected fault at the start of epoch {epoch} (--fail-at-epoch {epoch})")


def quiet_report_logs(verbose: bool) -> None:
    """Ray Train 2.60 logs every report (all metrics and the checkpoint path, repeating the epoch line) through a
    logger named after its source file, outside `ray.train`, so RunConfig's logging_config misses it. Other Ray
    versions may keep that module elsewhere; there is then nothing of it to quiet."""
    try:
        from ray.train.v2._internal.execution import context as train_context
    except ImportError:
        return
    logging.getLogger(train_context.__file__).setLevel(logging.INFO if verbose else logging.WARNING)


def train_loop(config: dict[str, Any]) -> None:
    task = get_task(config["task"])
    cfg = TrainConfig.from_dict(config["config"])
    quiet_report_logs(cfg.verbose)
    dataset_meta, steps_per_epoch, run_dir = config["dataset"], config["steps_per_epoch"], config["run_dir"]
    context = ray.train.get_context()
    rank, world = context.get_world_rank(), context.get_world_size()
    device = ray.train.torch.get_device()
    torch.manual_seed(cfg.seed + rank)

    model = build_on_device(task, cfg, dataset_meta, device)
    head = task.head(model, dataset_meta)
    start_epoch, history, resumed_at, train_state = 0, [], [], None
    restored = ray.train.get_checkpoint()
    if restored:
        with restored.as_directory() as folder:
            saved_meta = checkpoint.read_meta(folder)
            train_state = checkpoint.load_train_state(folder)
            model.load_state_dict(torch.load(os.path.join(folder, checkpoint.MODEL_FILE), weights_only=True,
                                             map_location=device))
        if cfg.sparsity:
            restore_masks(model)
        start_epoch, history = saved_meta["epoch"], saved_meta["history"]
        resumed_at = saved_meta.get("resumed_at", []) + [start_epoch + 1]
        if rank == 0:
            logger.info(f"[raycv] resuming {task.name} run at epoch {start_epoch + 1} of {cfg.epochs}")
    else:
        if cfg.pretrained:
            checkpoint.load_pretrained(model, checkpoint.read_pretrained(cfg.pretrained), head, cfg.pretrained)
        apply_global_sparsity(model, cfg.sparsity)
    if cfg.sync_bn and world > 1:
        model = torch.nn.SyncBatchNorm.convert_sync_batchnorm(model)
    raw_model = model
    backbone, _ = split_backbone(raw_model, head)
    model = ray.train.torch.prepare_model(model, parallel_strategy_kwargs=task.ddp_options or None)
    optimizer, scheduler = build_optimizer(model, cfg, steps_per_epoch, backbone)
    device_augment = not task.augments_rows(dataset_meta)
    amp_dtype = autocast_dtype(cfg.amp, device)
    scaler = torch.amp.GradScaler(device.type, enabled=amp_dtype == torch.float16)
    if train_state is not None:
        optimizer.load_state_dict(train_state["optimizer"])
        scheduler.load_state_dict(train_state["scheduler"])
        if scaler.is_enabled() and train_state["scaler"]:  # a run resumed with another --amp starts afresh
            scaler.load_state_dict(train_state["scaler"])
    forward_model = torch.compile(model) if cfg.compile else model

    writer = None
    if rank == 0 and not storage.is_uri(run_dir):
        from torch.utils.tensorboard import SummaryWriter

        writer = SummaryWriter(os.path.join(run_dir, "tensorboard"))

    progress = None
    if rank == 0 and config["progress_bar"]:
        from ray.experimental.tqdm_ray import tqdm  # renders on the driver's terminal

        progress = tqdm(total=(cfg.epochs - start_epoch) * steps_per_epoch, desc=f"{task.name} train")
    train_shard = ray.train.get_dataset_shard("train")
    val_shard = ray.train.get_dataset_shard("val")

    for epoch in range(start_epoch + 1, cfg.epochs + 1):
        maybe_inject_fault(cfg, epoch, run_dir)
        model.train()
        started = time.perf_counter()
        loss_sum = torch.zeros((), device=device)
        seen = steps_done = 0
        if progress is not None:
            progress.set_description(f"{task.name} epoch {epoch}/{cfg.epochs}")
        batches = train_shard.iter_torch_batches(batch_size=cfg.batch_size, device=device, drop_last=True,
                                                 local_shuffle_buffer_size=min(10 * cfg.batch_size, 10_000))
        for batch in batches:
            if steps_done >= steps_per_epoch:  # equal step counts on every worker keep DDP in lockstep
                break
            frozen = backbone if epoch <= cfg.freeze_backbone_epochs else None
            loss_sum += train_step(task, forward_model, batch, cfg, optimizer, scheduler, scaler, amp_dtype,
                                   device_augment, frozen).float()
            seen += len(next(iter(batch.values())))
            steps_done += 1
            if progress is not None:
                progress.update(1)
        train_seconds = time.perf_counter() - started
        steps = global_sum(steps_done, device)
        train_loss = global_sum(float(loss_sum), device) / max(steps, 1)
        images_per_s = global_sum(seen, device) / train_seconds

        model.eval()
        # Metrics in fp32 whatever --amp says: under autocast, SSIM and similarity matrices come out wrong
        # (a blurred pair's SSIM 0.76 read 0.30 in bf16), and validation is a small share of an epoch.
        with torch.no_grad():
            val = task.evaluate(forward_model, val_shard.iter_torch_batches(batch_size=cfg.batch_size, device=device),
                                dataset_meta)
        record = {"epoch": epoch, "train_loss": train_loss, **{f"val_{k}": v for k, v in val.items()},
                  "lr": optimizer.param_groups[0]["lr"], "train_images_per_s": images_per_s,
                  "epoch_seconds": time.perf_counter() - started, "workers": world}
        if cfg.sparsity:
            record["sparsity"] = measured_sparsity(raw_model)
        if "skipped" in dataset_meta:  # unreadable files the reader left out
            record["skipped_files"] = dataset_meta["skipped"]["count"]
        history.append(record)
        if writer is not None:
            for key, value in record.items():
                if key != "epoch":
                    writer.add_scalar(key, value, epoch)
            writer.flush()
        if rank == 0:
            logger.info("[raycv] " + "  ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}"
                                               for k, v in record.items()))
        with tempfile.TemporaryDirectory() as folder:
            saved = None
            if rank == 0:
                meta = {"task": task.name, "config": cfg.to_dict(), "dataset": dataset_meta, "epoch": epoch,
                        "history": history, "resumed_at": resumed_at}
                state = {"optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
                         "scaler": scaler.state_dict()}
                checkpoint.save(folder, raw_model, meta, state)
                saved = ray.train.Checkpoint.from_directory(folder)
            ray.train.report(record, checkpoint=saved)
    if writer is not None:
        writer.close()
    if progress is not None:
        progress.close()
