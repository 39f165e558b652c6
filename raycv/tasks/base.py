"""The Task interface: everything train, tune, compress and serve need to know about a task.

A task is a module exposing one object with these plain methods. The generic machinery (train.py,
data/synth.py, serve.py, ...) only ever calls them, so adding a task is adding a module.

Data conventions. Stored rows (Parquet) hold images as PNG bytes plus label columns. `decode` turns a
batch of stored rows into numpy arrays (images as uint8 NHWC); it runs inside Ray Data. Training and
evaluation receive those arrays as torch tensors already on the worker's device.

Optional extras, each a plain dict on the task object that the generic machinery reads with
getattr(task, ..., {}) and knows nothing else about:

- `cli_verbs = {"VERB": (add_arguments, run)}`: `raycv TASK VERB` for this task only. cli.py calls
  `add_arguments(subparser)` to declare the flags and `run(args) -> exit status` to run it; the first
  line of run's docstring is the verb's --help. Example: `raycv segment danmu`.
- `routes = {"ROUTE": (parse_query, respond)}`: POST /v1/TASK/ROUTE on the Serve app. serve.py calls
  `parse_query({name: [values, ...]})` with the query parameters and answers 422 with the message of
  a RaycvError it raises, before any model work; then it decodes and validates the one request image
  exactly as /predict does (same 4xx), runs it through the same batched prediction, and answers
  `respond(image, answer, **options)`: JSON for a JSON-able value, image/png for bytes (a RaycvError
  here is a 422 too). `answer` is the task's postprocess output for the image. Example:
  /v1/segment/danmu?text=hello.
- `state_routes = {"ROUTE": StateRoute(parse_query, respond, images=True)}` with a method
  `open_route_state(folder, checkpoint_meta) -> state`: POST /v1/TASK/ROUTE on state the Serve app keeps
  for the task (search: the gallery index). The state lives in one extra Serve deployment with a single
  replica, so every model replica sees the same state and changes apply one at a time; serve.py opens
  it with the folder ServeOptions.state_dir (default: serve_state/ in the checkpoint's run folder) and
  the checkpoint's meta.json, and the state persists itself there. A request's query goes through
  `parse_query` as for `routes`; with `images=True` its images (one or more, sent as for /predict) run
  through the batched model; then `respond(state, answers, **options)` runs in the state replica and
  its JSON-able result is the response. A RaycvError from either function is a 422 with its message.
  Example: /v1/search/index?id=alice, /v1/search/query?k=5.
- `train_options = {"NAME": (default, help)}`: training options of this task alone. cli.py adds
  `--NAME` to `train` and `tune` (typed like the default) and stores a given value in
  `TrainConfig.extra[NAME]`; the task reads `cfg.extra.get(NAME, default)`. Example: `--head softmax`.
- `synth_sizes = {"train": N, "val": N}`: the split sizes `raycv TASK synth` makes by default, those the
  task's default config is sized and measured with (20,000 / 2,000 where a task gives none).
- `split_params(split, params, seed) -> params`: the generator parameters for one split of a dataset
  synthesized with `seed` (search: training and validation splits get disjoint identities).
- `ddp_options = {"find_unused_parameters": True}`: keyword arguments for DistributedDataParallel
  (through ray.train.torch.prepare_model). dcgan uses it: its steps alternate between two players, so
  half of the parameters get no gradient on any one step.
- `image_mode = "RGBA"` (a plain string, default "RGB"): the PIL mode request images and image files
  are decoded in for this task's preprocess, by serve.py and inference.py alike. inpaint uses it: the
  alpha channel carries the mask (transparent = the hole to fill), one file and one request per image.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Iterable, Protocol

import numpy as np
import ray.data
import torch
from torch import nn

from raycv.config import TrainConfig

Batch = dict[str, torch.Tensor]


@dataclass(frozen=True)
class StateRoute:
    """A Serve route on the task's serve state (see `state_routes` above)."""

    parse_query: Callable[[dict[str, list[str]]], dict[str, Any]]
    respond: Callable[..., Any]  # respond(state, answers, **options), in the state replica
    images: bool = True  # the request carries images, run through the model before respond


def with_task_options(task: "Task", cfg: TrainConfig) -> TrainConfig:
    """`cfg` with every one of the task's train_options in `extra`, defaults filled in: what a run records,
    so its checkpoints still say how they were built after a default changes."""
    defaults = {name: default for name, (default, _) in getattr(task, "train_options", {}).items()}
    return cfg.replace(extra={**defaults, **cfg.extra})


class Task(Protocol):
    name: str
    metric: str  # the validation metric that ranks checkpoints and trials, e.g. "accuracy"
    metric_mode: str  # "max" or "min"
    synth_defaults: dict[str, Any]  # generator parameters `raycv TASK synth` accepts
    model_names: tuple[str, ...]  # what --model accepts

    def default_config(self) -> TrainConfig: ...

    def dataset_meta(self, params: dict[str, Any]) -> dict[str, Any]:
        """What a model needs to know about a synthesized dataset (class names, image size)."""

    def synthesize_sample(self, rng: np.random.Generator, params: dict[str, Any]) -> dict[str, Any]:
        """One stored row, drawn only from `rng` (seeded per sample by the driver)."""

    # Optional: `export_split(dataset_dir, split, meta)` writes extra files for a split just written as
    # Parquet (scene tasks write its COCO JSON).

    def read(self, path: str) -> tuple[dict[str, ray.data.Dataset], dict[str, Any]]:
        """Real data in the task's standard formats: splits of stored rows, and the dataset meta."""

    def decode(self, batch: dict[str, np.ndarray], meta: dict[str, Any]) -> dict[str, np.ndarray]: ...

    def build_model(self, cfg: TrainConfig, meta: dict[str, Any]) -> nn.Module: ...

    def augment(self, batch: Batch, cfg: TrainConfig) -> Batch:
        """Training-time augmentation on the device, batched."""

    def loss(self, model: nn.Module, batch: Batch, cfg: TrainConfig) -> torch.Tensor: ...

    def evaluate(self, model: nn.Module, batches: Iterable[Batch], meta: dict[str, Any]) -> dict[str, float]:
        """Task metrics over `batches`. Uses torchmetrics, whose compute() also reduces across DDP
        workers, so each worker may pass only its shard."""

    def preprocess(self, images: list[np.ndarray], meta: dict[str, Any]) -> torch.Tensor:
        """Decoded request images (uint8 HWC RGB) to one model input batch."""

    def postprocess(self, outputs: torch.Tensor, meta: dict[str, Any], sizes: list[tuple[int, int]]) -> list[Any]:
        """Model outputs to one JSON-able answer per image; `sizes` are the request images' (height,
        width), so boxes and masks can be given in the caller's pixels."""
