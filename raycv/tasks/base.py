"""The Task interface: everything synth, train, tune, compress and serve need to know about a task.

A task is a module exposing one object, `TASK`, an instance of a `Task` subclass. The generic machinery
(synth.py, train.py, tune.py, compress.py, serve.py, inference.py) only ever calls the methods and reads
the attributes declared here, so adding a task is adding a module. Every optional hook is declared once
below with its typed default; a subclass overrides what it needs. The hooks every task must write are
abstract, so a task that misses (or misspells) one fails when it is instantiated, not mid-run.

Data conventions. Stored rows (Parquet) hold images as PNG bytes plus label columns. `decode` turns a
batch of stored rows into numpy arrays (images as uint8 NHWC); it runs inside Ray Data. Training and
evaluation receive those arrays as torch tensors already on the worker's device.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np
import ray.data
import torch
from torch import nn

from raycv.config import TrainConfig
from raycv.data.images import resize_all, to_model_input
from raycv.errors import RaycvError
from raycv.tasks.cards import TaskCard

if TYPE_CHECKING:
    from raycv.checkpoint import LoadedModel

Batch = dict[str, torch.Tensor]
# A route's parse_query({name: [values, ...]}) -> options, called before any model work (a RaycvError
# it raises is a 422); respond(image, answer, **options) -> JSON-able value or PNG bytes.
Route = tuple[Callable[[dict[str, list[str]]], dict[str, Any]], Callable[..., Any]]
# predict(loaded, images) -> answers: raycv.inference.predict, which a task function that needs its own
# model's answers (scores on held-out photos, a gallery's embeddings) takes from its caller, since tasks
# never import the loops.
Predict = Callable[["LoadedModel", list[np.ndarray]], list[Any]]


class PredictionWriter(ABC):
    """Answers of a folder prediction (`raycv TASK predict --folder DIR --out OUT`) written in a format other tools
    read, one image at a time as they arrive (see `Task.prediction_writer`)."""

    # Keyword arguments for the task's postprocess when answers are made for this format (e.g. a lower score
    # threshold for a results file that an evaluator reads).
    postprocess_options: ClassVar[dict[str, Any]] = {}

    @abstractmethod
    def add(self, relative_path: str, size: tuple[int, int], answer: Any) -> None:
        """One image's answer; `relative_path` is the file's path under the folder, `size` its (height, width)."""

    @abstractmethod
    def close(self) -> str:
        """Finish writing; a few words on what was written, for the run's summary."""


@dataclass(frozen=True)
class StateRoute:
    """A Serve route on the task's serve state (see `Task.state_routes`)."""

    parse_query: Callable[[dict[str, list[str]]], dict[str, Any]]
    respond: Callable[..., Any]  # respond(state, answers, **options), in the state replica
    images: bool = True  # the request carries images, run through the model before respond


class Task(ABC):
    card: ClassVar[TaskCard]  # name, default config, model names, task options, synth sizes (tasks/cards.py)
    metric: ClassVar[str]  # the validation metric that ranks checkpoints and trials, e.g. "accuracy"
    metric_mode: ClassVar[str] = "max"  # or "min"
    # Validation metrics that the compress and sweep tables show beside `metric`, which cannot be read
    # without them: a codec's PSNR means little without its bits per pixel.
    companion_metrics: ClassVar[tuple[str, ...]] = ()
    synth_defaults: ClassVar[dict[str, Any]] = {}  # generator parameters `raycv TASK synth` accepts

    # The PIL mode request images and image files are decoded in for `preprocess`, by serve.py and
    # inference.py alike. inpaint uses "RGBA": the alpha channel carries the mask (transparent = the
    # hole to fill), one file and one request per image.
    image_mode: ClassVar[str] = "RGB"

    # POST /v1/TASK/ROUTE on the Serve app. serve.py calls parse_query with the query parameters, then
    # decodes and validates the one request image exactly as /predict does (same 4xx), runs it through
    # the same batched prediction, and answers respond(image, answer, **options): JSON for a JSON-able
    # value, image/png for bytes. `answer` is postprocess's output for the image. Example:
    # /v1/segment/danmu?text=hello.
    routes: ClassVar[dict[str, Route]] = {}

    # POST /v1/TASK/ROUTE on state the Serve app keeps for the task (search: the gallery index). The
    # state lives in one extra Serve deployment with a single replica, so every model replica sees the
    # same state and changes apply one at a time; serve.py opens it with `open_route_state`. A request's
    # query goes through parse_query as for `routes`; with images=True its images run through the
    # batched model; then respond(state, answers, **options) runs in the state replica and its JSON-able
    # result is the response. Example: /v1/search/index?id=alice, /v1/search/query?k=5.
    state_routes: ClassVar[dict[str, StateRoute]] = {}

    # Keyword arguments for DistributedDataParallel (through ray.train.torch.prepare_model). dcgan sets
    # find_unused_parameters: its steps alternate between two players, so half of the parameters get
    # no gradient on any one step.
    ddp_options: ClassVar[dict[str, Any]] = {}

    # -- facts from the card ---------------------------------------------------------------------

    @property
    def name(self) -> str:
        return self.card.name

    @property
    def model_names(self) -> tuple[str, ...]:
        return self.card.model_names

    @property
    def train_options(self) -> dict[str, tuple[Any, str]]:
        return self.card.train_options

    def default_config(self) -> TrainConfig:
        return self.card.default_config()

    # -- data ------------------------------------------------------------------------------------

    @abstractmethod
    def dataset_meta(self, params: dict[str, Any]) -> dict[str, Any]:
        """What a model needs to know about a synthesized dataset (class names, image size)."""

    @abstractmethod
    def synthesize_sample(self, rng: np.random.Generator, params: dict[str, Any]) -> dict[str, Any]:
        """One stored row, drawn only from `rng` (seeded per sample by the synthesis loop)."""

    def split_params(self, split: str, params: dict[str, Any], seed: int) -> dict[str, Any]:
        """The generator parameters for one split of a dataset synthesized with `seed` (search gives
        training and validation disjoint identities)."""
        return params

    def export_split(self, dataset_dir: str, split: str, meta: dict[str, Any]) -> None:
        """Extra files for a split just written as Parquet (scene tasks write its COCO JSON)."""
        return None

    def check_data(self, path: str, cfg: TrainConfig) -> None:
        """Checks of a user's dataset at `path` cheap enough to run before Ray starts (listing files, not
        reading them), raising a RaycvError that names the bad file or folder. Not called for raycv's own
        (synthesized) datasets."""
        return None

    def read(self, path: str, cfg: TrainConfig) -> tuple[dict[str, ray.data.Dataset], dict[str, Any]]:
        """Real data in the task's standard formats: splits of stored rows, and the dataset meta, read with
        the run's options (a validation share, say). Tasks that learn from photographs without labels make
        their datasets with synth from a folder."""
        raise RaycvError(f"{path} is not a raycv {self.name} dataset (no manifest.json); make one from a folder "
                         f"of photos with `raycv {self.name} synth --out DIR --param images_dir={path}`")

    def training_meta(self, meta: dict[str, Any], cfg: TrainConfig) -> dict[str, Any]:
        """The dataset meta a run trains with and its checkpoints record, given the run's config (classify
        sets the training resolution of users' photos here). It is what decode, preprocess and serving
        read."""
        return meta

    @abstractmethod
    def decode(self, batch: dict[str, np.ndarray], meta: dict[str, Any]) -> dict[str, np.ndarray]:
        """Stored rows to model-ready arrays, deterministically: for validation, evaluation and (when the
        training rows are not augmented here, see `augments_rows`) training."""

    def augments_rows(self, meta: dict[str, Any]) -> bool:
        """Whether `decode_train` augments each row at random on Ray Data's CPU workers (real photos of any
        size: random crops at full resolution, then resized). The training rows are then decoded afresh
        every epoch, never cached, and the device-side `augment` is skipped."""
        return False

    def decode_train(self, batch: dict[str, np.ndarray], meta: dict[str, Any]) -> dict[str, np.ndarray]:
        """Stored rows to training arrays; by default as `decode`."""
        return self.decode(batch, meta)

    # -- model -----------------------------------------------------------------------------------

    def build_model(self, cfg: TrainConfig, meta: dict[str, Any]) -> nn.Module:
        self.card.check_model(cfg.model)
        return self.make_network(cfg, meta)

    @abstractmethod
    def make_network(self, cfg: TrainConfig, meta: dict[str, Any]) -> nn.Module:
        """The network for `cfg.model`, a name build_model has already checked."""

    def augment(self, batch: Batch, cfg: TrainConfig) -> Batch:
        """Training-time augmentation on the device, batched."""
        return batch

    def head(self, model: nn.Module, meta: dict[str, Any]) -> str | None:
        """The qualified name of the output layer whose size follows the dataset (the classifier), or None.
        --pretrained replaces it when the class count differs; --freeze-backbone-epochs and
        --backbone-lr-scale treat every other parameter as the backbone."""
        return None

    @abstractmethod
    def loss(self, model: nn.Module, batch: Batch, cfg: TrainConfig) -> torch.Tensor: ...

    @abstractmethod
    def evaluate(self, model: nn.Module, batches: Iterable[Batch], meta: dict[str, Any]) -> dict[str, float]:
        """Task metrics over `batches`. Uses torchmetrics, whose compute() also reduces across DDP
        workers, so each worker may pass only its shard."""

    # -- serving ---------------------------------------------------------------------------------

    def preprocess(self, images: list[np.ndarray], meta: dict[str, Any]) -> torch.Tensor:
        """Decoded request images (uint8 HWC) to one model input batch: by default each resized to the
        dataset's image size."""
        return to_model_input(torch.from_numpy(resize_all(images, tuple(meta["image_size"]))))

    @abstractmethod
    def postprocess(self, outputs: torch.Tensor, meta: dict[str, Any],
                    sizes: list[tuple[int, int]]) -> list[Any]:
        """Model outputs to one JSON-able answer per image; `sizes` are the request images' (height,
        width), so boxes and masks can be given in the caller's pixels."""

    def prediction_writer(self, out: str, meta: dict[str, Any]) -> PredictionWriter | None:
        """A writer of folder predictions in the task's standard format when `out` names one (detect: a .json
        file in COCO's results format, a folder of YOLO label files); None leaves `out` to the generic .csv
        and .json-lines writers."""
        return None

    def open_route_state(self, folder: str, checkpoint_meta: dict[str, Any]) -> Any:
        """The state `state_routes` work on, kept in `folder` (ServeOptions.state_dir)."""
        raise RaycvError(f"task {self.name} keeps no serve state")


def with_task_options(task: Task, cfg: TrainConfig) -> TrainConfig:
    """`cfg` with every one of the task's train_options in `extra`, defaults filled in: what a run records,
    so its checkpoints still say how they were built after a default changes."""
    defaults = {name: default for name, (default, _) in task.train_options.items()}
    return cfg.replace(extra={**defaults, **cfg.extra})
