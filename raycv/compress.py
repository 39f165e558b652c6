"""Network compression and deployment for any task's model (textbook chapter 10, done properly).

`compress_checkpoint` runs five stages on a trained checkpoint and writes one results table:

1. dense       the model as trained (the baseline every other row is compared with)
2. sparse-NN   iterative global magnitude pruning (`torch.nn.utils.prune.global_unstructured`) with
               persistent masks: pruned weights stay exactly zero while the survivors fine-tune
3. channels    structured pruning with Torch-Pruning: channels are physically removed, so the model
               gets smaller and faster on any hardware, then fine-tuned
4. int8        post-training static int8 quantization for CPU through PT2E (`torch.export` ->
               torchao `prepare_pt2e` / `convert_pt2e` with `X86InductorQuantizer`), calibrated on
               training batches and lowered to oneDNN int8 kernels by `torch.compile` (inductor)
5. torchscript / onnx   exports of the channel-pruned float model with an output-parity check

Everything goes through the Task interface (`build_model`, `augment`, `loss`, `evaluate`,
`preprocess`), so the same code compresses a classifier, a detector or a super-resolution net.
Fine-tuning runs in this process on CPU or one GPU with raycv.train's optimizer and step.
"""

from __future__ import annotations

import csv
import dataclasses
import json
import os
import statistics
import time
import warnings
from dataclasses import dataclass
from typing import Any
from collections.abc import Callable, Iterable

import torch
from torch import nn
from torch.nn.utils import prune
from torch.utils._pytree import tree_leaves
from tqdm.auto import tqdm

from raycv import checkpoint
from raycv.config import CompressOptions, TrainConfig
from raycv.errors import RaycvError
from raycv.sparsity import PRUNABLE, measured_sparsity, plain_state_dict, prunable_weights
from raycv.tasks.base import Task
from raycv.tasks.cards import TaskCard

Batch = dict[str, torch.Tensor]




# ---------------------------------------------------------------------------------------------
# Data in memory: the checkpoint's dataset, decoded once by Ray Data, then plain tensors.


@dataclass
class CompressData:
    train: Batch  # every training row, column-wise
    val: list[Batch]  # validation batches, fixed order
    meta: dict[str, Any]

    @property
    def train_size(self) -> int:
        return len(next(iter(self.train.values())))

    def train_batches(self, batch_size: int, generator: torch.Generator, limit: int = 0) -> Iterable[Batch]:
        order = torch.randperm(self.train_size, generator=generator)
        steps = self.train_size // batch_size
        steps = min(steps, limit) if limit else steps
        for step in range(steps):
            index = order[step * batch_size:(step + 1) * batch_size]
            yield {key: column[index] for key, column in self.train.items()}

    def example_input(self, task: Task, batch_size: int) -> torch.Tensor:
        """A model input of `batch_size` real validation images, made by the task's serving preprocess
        (stored rows hold images as uint8 NHWC under "image", see raycv.tasks.base)."""
        images = torch.cat([batch["image"] for batch in self.val])[:batch_size]
        images = images.repeat((batch_size + len(images) - 1) // len(images), *([1] * (images.ndim - 1)))[:batch_size]
        return task.preprocess(list(images.numpy()), self.meta)


def load_data(task: Task, data: str, cfg: TrainConfig, batch_size: int) -> CompressData:
    from raycv.runtime import init_ray
    from raycv.train import prepare_datasets

    init_ray()
    datasets, meta = prepare_datasets(task, data, cfg)
    chunks = list(datasets["train"].iter_torch_batches(batch_size=4096))
    train = {key: torch.cat([chunk[key] for chunk in chunks]) for key in chunks[0]}
    val = list(datasets["val"].iter_torch_batches(batch_size=batch_size))
    return CompressData(train, val, meta)


# ---------------------------------------------------------------------------------------------
# Measurements shared by every stage.


class InferenceModule(nn.Module):
    """Any callable (a compiled graph, an onnxruntime session) as a module that Task.evaluate accepts."""

    def __init__(self, run: Callable[[torch.Tensor], torch.Tensor]):
        super().__init__()
        self.run = run
        self.device_marker = nn.Parameter(torch.zeros(0), requires_grad=False)  # evaluate() reads the device

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.run(x)


def evaluate(task: Task, model: nn.Module, data: CompressData) -> dict[str, float]:
    model.eval()
    with torch.no_grad():
        return task.evaluate(model, data.val, data.meta)


def count_parameters(model: nn.Module, nonzero: bool = False) -> int:
    """Learnable parameters (or, with `nonzero`, those not pruned to exactly zero)."""
    return int(sum((p != 0).sum() if nonzero else p.numel() for p in model.parameters()))


def count_stored_values(model: nn.Module) -> int:
    """Every value a model stores (a quantized graph keeps its int8 weights as buffers)."""
    return sum(tensor.numel() for tensor in model.state_dict().values())


def file_mb(path: str) -> float:
    return os.path.getsize(path) / 2**20


def measure_latency_ms(run: Callable[[torch.Tensor], Any], example: torch.Tensor, runs: int, warmup: int = 3) -> float:
    """Median wall time of one call, after warm-up (the first calls allocate and, for compiled
    graphs, may still specialise)."""
    with torch.no_grad():
        for _ in range(warmup):
            run(example)
        times = []
        for _ in range(runs):
            started = time.perf_counter()
            run(example)
            times.append(time.perf_counter() - started)
    return statistics.median(times) * 1000


def latency_columns(run: Callable[[torch.Tensor], Any], examples: dict[int, torch.Tensor],
                    runs: int) -> dict[str, float]:
    return {f"latency_ms_b{size}": round(measure_latency_ms(run, example, runs), 3)
            for size, example in examples.items()}


def stage_row(stage: str, metrics: dict[str, float], task: Task, params: int, size_mb: float,
              latency: dict[str, float], **extra: Any) -> dict[str, Any]:
    return {"stage": stage, **{name: round(metrics[name], 5) for name in (task.metric, *task.companion_metrics)},
            "params": params, "size_mb": round(size_mb, 3), **latency, **extra}


def add_deltas(rows: list[dict[str, Any]], metric: str, batch_sizes: Iterable[int]) -> list[dict[str, Any]]:
    """Each row against the dense baseline: metric difference (in points for fractions), and how many
    times fewer parameters, smaller and faster."""
    dense = rows[0]
    scale = 100.0 if 0 <= dense[metric] <= 1 else 1.0  # accuracy-like fractions read as percentage points
    for row in rows:
        row[f"delta_{metric}"] = round((row[metric] - dense[metric]) * scale, 3)
        row["params_x"] = round(dense["params"] / max(row["params"], 1), 2)
        row["size_x"] = round(dense["size_mb"] / row["size_mb"], 2)
        for size in batch_sizes:
            key = f"latency_ms_b{size}"
            row[f"speedup_b{size}"] = round(dense[key] / row[key], 2)
    return rows


# ---------------------------------------------------------------------------------------------
# Fine-tuning: raycv.train's optimizer and step, in this process.


def finetune(task: Task, model: nn.Module, data: CompressData, cfg: TrainConfig, epochs: int, steps_limit: int,
             generator: torch.Generator, description: str) -> None:
    from raycv.devices import autocast_dtype
    from raycv.train import build_optimizer, train_step

    if epochs < 1:
        return
    device = next(model.parameters()).device
    steps_per_epoch = data.train_size // cfg.batch_size
    steps_per_epoch = min(steps_per_epoch, steps_limit) if steps_limit else steps_per_epoch
    if steps_per_epoch < 1:
        raise RaycvError(f"batch_size={cfg.batch_size} is larger than the {data.train_size} training rows")
    cfg = cfg.replace(epochs=epochs)
    optimizer, scheduler = build_optimizer(model, cfg, steps_per_epoch)
    amp_dtype = autocast_dtype(cfg.amp, device)
    scaler = torch.amp.GradScaler(device.type, enabled=amp_dtype == torch.float16)
    model.train()
    with tqdm(total=epochs * steps_per_epoch, desc=description, leave=False) as progress:
        for _ in range(epochs):
            for batch in data.train_batches(cfg.batch_size, generator, steps_per_epoch):
                batch = {key: value.to(device) for key, value in batch.items()}
                loss = train_step(task, model, batch, cfg, optimizer, scheduler, scaler, amp_dtype,
                                  device_augment=not task.augments_rows(data.meta))
                progress.set_postfix(loss=f"{float(loss):.3f}", refresh=False)
                progress.update(1)
    model.eval()


def finetune_config(base: TrainConfig, options: CompressOptions) -> TrainConfig:
    """The checkpoint's own recipe (optimizer, loss options, augmentation) at a fine-tuning learning
    rate with a cosine decay: a short anneal, not a new warm-up. The default, 0.3 x the training peak,
    recovered channel pruning reliably on the procedural classify set where 0.1 x sometimes did not."""
    return base.replace(lr=options.lr or base.lr * 0.3, batch_size=options.batch_size, schedule="cosine", compile=False)


# ---------------------------------------------------------------------------------------------
# Stage 2: global magnitude sparsity with persistent masks (the mask helpers live in raycv.sparsity,
# shared with sparse training runs).


def sparsify_step(model: nn.Module, target: float) -> None:
    """Raise the global sparsity of conv/linear weights to `target` (L1 magnitude, all layers ranked
    together). Masks compose with earlier ones (PyTorch's PruningContainer), and the exact number of
    weights to drop now is passed, so the total lands on the target, not on a rounding of it."""
    parameters = prunable_weights(model)
    total = sum(module.weight.numel() for module, _ in parameters)
    already = sum(int((getattr(module, "weight_mask", torch.ones(1)) == 0).sum()) for module, _ in parameters)
    prune.global_unstructured(parameters, pruning_method=prune.L1Unstructured, amount=round(target * total) - already)


# ---------------------------------------------------------------------------------------------
# Stage 3: structured channel pruning (Torch-Pruning).


def output_layers(model: nn.Module, example: torch.Tensor) -> list[nn.Module]:
    """The conv/linear layers whose outputs are the model's outputs (a classifier, a detection or
    SR head): their output channels are the task's contract and must not be pruned."""
    produced: dict[int, nn.Module] = {}
    order: list[nn.Module] = []

    def remember(module, _inputs, output):
        if isinstance(output, torch.Tensor):
            produced[id(output)] = module
            order.append(module)

    handles = [module.register_forward_hook(remember) for module in model.modules() if isinstance(module, PRUNABLE)]
    try:
        with torch.no_grad():
            outputs = model(example)
    finally:
        for handle in handles:
            handle.remove()
    flat, _ = torch.utils._pytree.tree_flatten(outputs)
    found = [produced[id(tensor)] for tensor in flat if isinstance(tensor, torch.Tensor) and id(tensor) in produced]
    return found or order[-1:]  # an output reshaped after its last layer: protect the last layer run


def channel_pruner(model: nn.Module, example: torch.Tensor, ratio: float, steps: int, criterion: str):
    import torch_pruning as tp

    importance = tp.importance.BNScaleImportance() if criterion == "bn" else tp.importance.MagnitudeImportance(p=1)
    # Traced in training mode: a model with flip test-time augmentation (raycv.models.common.FlipAveraged) runs its
    # network twice in eval mode, and torch_pruning then prunes the classifier's outputs as if the two passes were
    # one layer's (a ResNet-18's 3 logits became 1). The trace's BatchNorm statistics updates are undone.
    saved = {name: buffer.clone() for name, buffer in model.named_buffers()}
    was_training = model.training
    model.train()
    try:
        return tp.pruner.MetaPruner(model, example, importance=importance, pruning_ratio=ratio, iterative_steps=steps,
                                    ignored_layers=output_layers(model, example))
    finally:
        with torch.no_grad():
            for name, buffer in model.named_buffers():
                buffer.copy_(saved[name])
        model.train(was_training)


class Distillation(nn.Module):
    """A student that learns from a teacher as it trains: in training mode every forward also runs the
    frozen teacher on the same input and keeps `weight` x the mean squared difference of their outputs
    in `pending`, for DistillingTask to add to the task's loss. Matching outputs (logits, for a
    classifier) needs no task knowledge, so every task's model gets it, and on logits it recovers a
    small student at least as well as softened-KL distillation (Kim et al., IJCAI 2021)."""

    def __init__(self, student: nn.Module, teacher: nn.Module, weight: float):
        super().__init__()
        self.student = student
        self.teacher = [teacher.eval()]  # in a list: not a submodule, so never optimized, saved or put in train mode
        self.weight = weight
        self.pending: torch.Tensor | None = None

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        outputs = self.student(*args, **kwargs)
        if self.training:
            with torch.no_grad():
                targets = self.teacher[0](*args, **kwargs)
            pairs = [(out, target) for out, target in zip(tree_leaves(outputs), tree_leaves(targets), strict=False)
                     if isinstance(out, torch.Tensor) and out.is_floating_point()]
            self.pending = self.weight * sum(nn.functional.mse_loss(out.float(), target.float())
                                             for out, target in pairs) / max(len(pairs), 1)
        return outputs


class DistillingTask:
    """`task` whose loss also carries the Distillation model's pending term; everything else is the task's."""

    def __init__(self, task: Task):
        self.task = task

    def __getattr__(self, name: str) -> Any:
        return getattr(self.task, name)

    def loss(self, model: Distillation, batch: Batch, cfg: TrainConfig) -> torch.Tensor:
        loss = self.task.loss(model, batch, cfg)
        pending, model.pending = model.pending, None
        return loss if pending is None else loss + pending


def prune_channels(task: Task, model: nn.Module, data: CompressData, cfg: TrainConfig, options: CompressOptions,
                   example: torch.Tensor, generator: torch.Generator, teacher: nn.Module) -> nn.Module:
    """Remove `channel_ratio` of every prunable layer's channels in `channel_steps` rounds, each
    followed by fine-tuning (its share of `channel_finetune_epochs`, the remainder after the last),
    distilled from `teacher` (the dense model) unless `distill` is 0."""
    pruner = channel_pruner(model, example, options.channel_ratio, options.channel_steps, options.criterion)
    epochs = [options.channel_finetune_epochs // options.channel_steps] * options.channel_steps
    epochs[-1] += options.channel_finetune_epochs % options.channel_steps
    student, fine_tune_task = model, task
    if options.distill > 0:
        student, fine_tune_task = Distillation(model, teacher, options.distill), DistillingTask(task)
    for step, step_epochs in enumerate(epochs, 1):
        pruner.step()
        finetune(fine_tune_task, student, data, cfg, step_epochs, options.finetune_steps, generator,
                 f"channels {step}/{options.channel_steps}")
    return model


PRUNED_FILE = "pruned_model.pt"


def save_pruned(folder: str, model: nn.Module, meta: dict[str, Any]) -> str:
    """A channel-pruned model no longer matches `build_model(config)`. Saved beside its weights: every
    module's plain attributes (in/out channels, features, groups), which is all `load_pruned` needs to
    reshape the task's freshly built model. Tensors, numbers and strings only: weights_only loading."""
    os.makedirs(folder, exist_ok=True)
    attributes = {name: {key: value for key, value in vars(module).items()
                         if not key.startswith("_") and isinstance(value, (bool, int, float, str, tuple))}
                  for name, module in model.named_modules()}
    path = os.path.join(folder, PRUNED_FILE)
    torch.save({"state_dict": model.state_dict(), "attributes": attributes}, path)
    with open(os.path.join(folder, checkpoint.META_FILE), "w") as file:
        json.dump({**meta, "pruned": True}, file, indent=2)
    return path


def load_pruned(folder: str) -> nn.Module:
    """Rebuild a model written by `save_pruned`: the task's model, with its modules' attributes and
    tensor shapes set to the pruned ones, then the pruned weights loaded (strictly)."""
    from raycv.tasks import get_task

    meta = checkpoint.read_meta(folder)
    model = get_task(meta["task"]).build_model(checkpoint.stored_config(meta, folder), meta["dataset"])
    saved = torch.load(os.path.join(folder, PRUNED_FILE), weights_only=True, map_location="cpu")
    for name, module in model.named_modules():
        for key, value in saved["attributes"].get(name, {}).items():
            setattr(module, key, value)
    for key, tensor in saved["state_dict"].items():
        owner, _, leaf = key.rpartition(".")
        module = model.get_submodule(owner)
        if leaf in module._parameters:
            module._parameters[leaf] = nn.Parameter(torch.empty_like(tensor))
        elif leaf in module._buffers:
            module._buffers[leaf] = torch.empty_like(tensor)
    model.load_state_dict(saved["state_dict"])
    return model.eval()


# ---------------------------------------------------------------------------------------------
# Stage 4: int8 post-training quantization (PT2E, X86 inductor backend).


DYNAMIC_BATCH = ({0: torch.export.Dim("batch", min=1, max=4096)},)


def export_dynamic_batch(model: nn.Module, example: torch.Tensor, strict: bool = False) -> torch.export.ExportedProgram:
    """`torch.export` with the batch dimension left dynamic. An example of one row would specialise the
    batch to 1 (export treats sizes 0 and 1 as constants), so it is repeated to two."""
    return torch.export.export(model, (two_or_more_rows(example),), dynamic_shapes=DYNAMIC_BATCH, strict=strict)


def two_or_more_rows(example: torch.Tensor) -> torch.Tensor:
    return example if len(example) > 1 else example.expand(2, *example.shape[1:]).contiguous()


def quantize_int8(model: nn.Module, calibration: Iterable[torch.Tensor], example: torch.Tensor) -> torch.fx.GraphModule:
    """Static int8 (per-channel weights, per-tensor activations) by PyTorch 2 export quantization,
    the path PyTorch points to now that torch.ao.quantization's eager and FX modes are deprecated."""
    import torchao.quantization.pt2e.quantizer.x86_inductor_quantizer as x86
    from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e, prepare_pt2e

    quantizer = x86.X86InductorQuantizer().set_global(x86.get_default_x86_inductor_quantization_config())
    # Strict (dynamo) tracing records one source partition per call of a module; the default non-strict
    # trace merges the calls of a reused module (torchvision's ResNet blocks call one ReLU twice) into one
    # partition with two outputs, which the x86 quantizer's conv-add-relu fusion rejects.
    graph = export_dynamic_batch(model.eval(), example, strict=True).module()
    prepared = prepare_pt2e(graph, quantizer)
    with torch.no_grad():
        for inputs in calibration:
            prepared(inputs)
    converted = convert_pt2e(prepared)  # weights folded to int8 constants
    drop_unused_attributes(converted)
    return converted


def drop_unused_attributes(graph: torch.fx.GraphModule) -> None:
    """convert_pt2e leaves the float weights (and folded BatchNorm tensors) registered though no node
    reads them any more; drop them so the saved int8 model holds int8 weights only."""
    graph.graph.eliminate_dead_code()
    used = {node.target for node in graph.graph.nodes if node.op == "get_attr"}
    for name in [n for n, _ in graph.named_parameters()] + [n for n, _ in graph.named_buffers()]:
        if name not in used:
            owner, _, leaf = name.rpartition(".")
            module = graph.get_submodule(owner) if owner else graph
            delattr(module, leaf)
    graph.delete_all_unused_submodules()
    graph.recompile()


def compile_int8(quantized: torch.fx.GraphModule,
                 examples: Iterable[torch.Tensor]) -> Callable[[torch.Tensor], torch.Tensor]:
    """Inductor with freezing turns the quantize/dequantize patterns into oneDNN int8 kernels; without
    it the graph runs in float with fake quantization and is no faster. One static graph per example
    batch size, compiled here (compilation is lazy: the first call of each shape does it)."""
    import torch._inductor.config as inductor_config

    compiled = torch.compile(quantized, dynamic=False)
    with inductor_config.patch(freezing=True), torch.no_grad():
        for example in tqdm(list(examples), desc="int8 compile", leave=False):
            compiled(example)
    return compiled


def save_int8(folder: str, quantized: torch.fx.GraphModule, example: torch.Tensor) -> tuple[str, str]:
    """The int8 weights as a state dict (the size that compares with model.pt), and the whole program
    as a `torch.export` archive (.pt2) that `torch.export.load(...).module()` runs without raycv."""
    weights = os.path.join(folder, "int8_state_dict.pt")
    torch.save(quantized.state_dict(), weights)
    program = os.path.join(folder, "int8.pt2")
    torch.export.save(export_dynamic_batch(quantized, example), program)
    return weights, program


def in_fixed_batches(run: Callable[[torch.Tensor], torch.Tensor], size: int, exact: set[int]) -> Callable:
    """Run a shape-specialised compiled graph on any batch: sizes it was compiled for go straight
    through, others in chunks of `size`, the last one padded (one graph instead of a recompile per
    odd batch size)."""

    def run_any(x: torch.Tensor) -> torch.Tensor:
        if x.shape[0] in exact:
            return run(x)
        outputs = []
        for chunk in x.split(size):
            padded = torch.cat([chunk, chunk[-1:].expand(size - len(chunk), *chunk.shape[1:])])
            outputs.append(run(padded)[:len(chunk)])
        return torch.cat(outputs)

    return run_any


def calibration_inputs(task: Task, data: CompressData, options: CompressOptions) -> list[torch.Tensor]:
    """Model inputs from the first training batches (un-augmented: what the model sees at inference)."""
    generator = torch.Generator().manual_seed(options.seed)
    batches = data.train_batches(options.batch_size, generator, options.calibration_batches)
    return [task.preprocess(list(batch["image"].numpy()), data.meta) for batch in batches]


# ---------------------------------------------------------------------------------------------
# Stage 5: TorchScript and ONNX exports with output parity.


def export_torchscript(model: nn.Module, example: torch.Tensor, path: str) -> torch.jit.ScriptModule:
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # TorchScript is in maintenance; still the format many C++ stacks load
        traced = torch.jit.trace(model.eval(), example)
        torch.jit.save(traced, path)
        return torch.jit.load(path)


def export_onnx(model: nn.Module, example: torch.Tensor, path: str, threads: int):
    import onnxruntime

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        program = torch.onnx.export(model.eval(), (two_or_more_rows(example),), dynamo=True,
                                    dynamic_shapes=DYNAMIC_BATCH,
                                    input_names=["input"], output_names=["output"], verbose=False)
    program.save(path)
    settings = onnxruntime.SessionOptions()
    settings.intra_op_num_threads = threads
    settings.inter_op_num_threads = 1
    return onnxruntime.InferenceSession(path, settings, providers=["CPUExecutionProvider"])


def onnx_runner(session) -> Callable[[torch.Tensor], torch.Tensor]:
    name = session.get_inputs()[0].name
    return lambda x: torch.from_numpy(session.run(None, {name: x.detach().cpu().numpy()})[0])


def check_parity(name: str, difference: float, tolerance: float) -> None:
    if not difference <= tolerance:
        raise RaycvError(f"{name} export differs from PyTorch by {difference:.3g} (> {tolerance:g}); not writing a "
                         "model that answers differently")


def onnx_file_mb(path: str) -> float:
    """The .onnx file plus its external-data file when the exporter wrote weights beside it."""
    data = path + ".data"
    return file_mb(path) + (file_mb(data) if os.path.exists(data) else 0.0)


def max_abs_difference(reference: Callable, candidate: Callable, inputs: Iterable[torch.Tensor]) -> float:
    with torch.no_grad():
        return max(float((reference(x).float() - candidate(x).float()).abs().max()) for x in inputs)


# ---------------------------------------------------------------------------------------------
# The pipeline.


def write_tables(out: str, rows: list[dict[str, Any]], title: str) -> None:
    from raycv.report import markdown_table, table

    os.makedirs(out, exist_ok=True)
    with open(os.path.join(out, "compress.json"), "w") as file:
        json.dump(rows, file, indent=2)
    columns = list(dict.fromkeys(key for row in rows for key in row))
    with open(os.path.join(out, "compress.csv"), "w", newline="") as file:
        writer = csv.DictWriter(file, fieldnames=columns)
        writer.writeheader()
        writer.writerows(rows)
    with open(os.path.join(out, "compress.md"), "w") as file:
        file.write(f"# {title}\n\n{markdown_table(rows)}\n\n```\n{table(rows)}\n```\n")


def copy_model(model: nn.Module) -> nn.Module:
    import copy

    return copy.deepcopy(model)


def saved_state_mb(model: nn.Module, path: str) -> float:
    torch.save(model.state_dict(), path)
    return file_mb(path)


def check_stages(card: TaskCard, stages: tuple[str, ...]) -> None:
    """Refuse, in one line that says why, the stages a task's model cannot go through (TaskCard.compress_stages)."""
    refused = [stage for stage in stages if stage not in card.compress_stages]
    if refused:
        raise RaycvError(f"{card.name} cannot run the {', '.join(refused)} stage{'s' * (len(refused) > 1)}: "
                         f"{card.compress_refusal}; run --stages {','.join(card.compress_stages)}")


def compress_checkpoint(checkpoint_path: str, data: str, out: str, options: CompressOptions | None = None,
                        task_name: str | None = None) -> list[dict[str, Any]]:
    """Compress the model at `checkpoint_path` with every stage in `options.stages`, measuring each on
    the validation split of `data`; writes compress.{json,csv,md} and the compressed models to `out`
    and returns the table rows (dense first)."""
    options = (options or CompressOptions()).validate()
    loaded = checkpoint.load_model(checkpoint_path, task_name, "cpu")
    task, metric = loaded.task, loaded.task.metric
    check_stages(task.card, options.stages)
    cfg = finetune_config(loaded.config, options)
    data_in_memory = load_data(task, data, cfg, options.batch_size)
    if data_in_memory.meta.get("classes") != loaded.dataset_meta.get("classes"):
        raise RaycvError(f"dataset {data} has classes {data_in_memory.meta.get('classes')} but the checkpoint was "
                         f"trained on {loaded.dataset_meta.get('classes')}")
    data_in_memory.meta = loaded.dataset_meta
    os.makedirs(out, exist_ok=True)
    torch.manual_seed(options.seed)
    generator = torch.Generator().manual_seed(options.seed)
    previous_threads = torch.get_num_threads()
    # Fixed for the whole run: inductor bakes the thread count into the int8 kernels it compiles.
    options = dataclasses.replace(options, threads=options.threads or previous_threads)
    torch.set_num_threads(options.threads)
    try:
        rows = run_stages(task, loaded, data_in_memory, cfg, options, out, generator)
    finally:
        torch.set_num_threads(previous_threads)
    rows = add_deltas(rows, metric, options.latency_batches)
    write_tables(out, rows, f"raycv {task.name} compress: {loaded.path} ({options.threads} CPU threads)")
    return rows


@dataclass
class Run:
    """What every stage of one compress run shares."""

    task: Task
    data: CompressData
    cfg: TrainConfig  # the fine-tuning recipe
    options: CompressOptions
    out: str
    meta: dict[str, Any]  # the checkpoint's meta, less its training history
    examples: dict[int, torch.Tensor]  # latency inputs by batch size
    generator: torch.Generator

    @property
    def example(self) -> torch.Tensor:
        return self.examples[max(self.examples)]

    def measure(self, stage: str, model: nn.Module, size_mb: float, params: int | None = None,
                **extra: Any) -> dict[str, Any]:
        metrics = evaluate(self.task, model, self.data)
        row = stage_row(stage, metrics, self.task, count_parameters(model) if params is None else params,
                        size_mb, latency_columns(model, self.examples, self.options.latency_runs), **extra)
        tqdm.write(f"[raycv compress] {row}")
        return row


def run_stages(task: Task, loaded: checkpoint.LoadedModel, data: CompressData, cfg: TrainConfig,
               options: CompressOptions, out: str, generator: torch.Generator) -> list[dict[str, Any]]:
    run = Run(task, data, cfg, options, out, {k: v for k, v in loaded.meta.items() if k != "history"},
              {size: data.example_input(task, size) for size in options.latency_batches}, generator)
    dense = loaded.model.eval()
    rows = [run.measure("dense", dense, saved_state_mb(dense, os.path.join(out, "dense_model.pt")))]
    float_for_export = dense
    if "sparse" in options.stages:
        rows += sparse_stage(run, dense)
    if "channels" in options.stages:
        float_for_export, row = channel_stage(run, dense)
        rows.append(row)
    if "int8" in options.stages:
        rows.append(int8_stage(run, dense))
    if "export" in options.stages:
        rows += export_stage(run, float_for_export, "channels" if float_for_export is not dense else "dense")
    return rows


def sparse_stage(run: Run, dense: nn.Module) -> list[dict[str, Any]]:
    """One row per sparsity level, each level pruned from the previous one and fine-tuned; every
    level saved as a normal checkpoint folder (same architecture, zeros in the weights)."""
    rows = []
    sparse = copy_model(dense)  # the masks go on this copy; `dense` stays the baseline
    for target in tqdm(run.options.sparsities, desc="sparsity", leave=False):
        sparsify_step(sparse, target)
        finetune(run.task, sparse, run.data, run.cfg, run.options.finetune_epochs, run.options.finetune_steps,
                 run.generator, f"sparse {target:.0%}")
        measured = measured_sparsity(sparse)
        name = f"sparse{round(target * 100)}"
        permanent = copy_model(dense)
        permanent.load_state_dict(plain_state_dict(sparse))  # no mask hooks: measured as deployed
        checkpoint.save(os.path.join(run.out, name), permanent, {**run.meta, "sparsity": measured})
        rows.append(run.measure(name, permanent, file_mb(os.path.join(run.out, name, checkpoint.MODEL_FILE)),
                                params=count_parameters(permanent, nonzero=True), target_sparsity=target,
                                zero_fraction=round(measured, 6)))
    return rows


def channel_stage(run: Run, dense: nn.Module) -> tuple[nn.Module, dict[str, Any]]:
    pruned = prune_channels(run.task, copy_model(dense), run.data, run.cfg, run.options, run.example, run.generator,
                            teacher=dense)
    folder = os.path.join(run.out, "channels")
    save_pruned(folder, pruned, run.meta)
    row = run.measure("channels", pruned, saved_state_mb(pruned, os.path.join(folder, "state_dict.pt")),
                      channel_ratio=run.options.channel_ratio, criterion=run.options.criterion,
                      distill=run.options.distill)
    return pruned, row


def int8_stage(run: Run, dense: nn.Module) -> dict[str, Any]:
    quantized = quantize_int8(copy_model(dense), calibration_inputs(run.task, run.data, run.options), run.example)
    weights, _ = save_int8(run.out, quantized, run.example)
    compiled = compile_int8(quantized, run.examples.values())
    runner = InferenceModule(in_fixed_batches(compiled, max(run.examples), exact=set(run.examples)))
    return run.measure("int8", runner, file_mb(weights), params=count_stored_values(quantized),
                       backend="pt2e-x86-inductor")


def export_stage(run: Run, model: nn.Module, source: str) -> list[dict[str, Any]]:
    """TorchScript and ONNX files of `model`, refused unless they answer like it (max abs difference
    on a full and a single-image batch within `parity_tolerance`)."""
    inputs = [run.example, run.examples[min(run.examples)]]
    params = count_parameters(model)
    script_path = os.path.join(run.out, f"{source}.torchscript.pt")
    scripted = export_torchscript(model, run.example, script_path)
    script_difference = max_abs_difference(model, scripted, inputs)
    check_parity("TorchScript", script_difference, run.options.parity_tolerance)
    onnx_path = os.path.join(run.out, f"{source}.onnx")
    session = export_onnx(model, run.example, onnx_path, run.options.threads)
    onnx_difference = max_abs_difference(model, onnx_runner(session), inputs)
    check_parity("ONNX", onnx_difference, run.options.parity_tolerance)
    return [run.measure("torchscript", InferenceModule(scripted), file_mb(script_path), params=params,
                        exported=source, max_abs_diff=script_difference),
            run.measure("onnx", InferenceModule(onnx_runner(session)), onnx_file_mb(onnx_path), params=params,
                        exported=source, max_abs_diff=onnx_difference)]
