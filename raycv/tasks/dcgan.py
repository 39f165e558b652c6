"""DCGAN 64x64 (textbook chapter 8), with the adversarial loss done right and a number to judge it by.

Data: the procedural shapes of classify (raycv.data.procedural) drawn at 64x64, or crops of any image
folder (--param images_dir=DIR). Training steps alternate between the players, one loss and one
backward pass each (raycv.models.dcgan), so the generic Ray Train loop runs it unchanged; the epoch's
train_loss is the mean over both players' steps.

Metric (val): swd, the sliced Wasserstein distance (x1000) between 7x7 patches of generated and of
real images at 64 and 32 pixels (Karras et al. 2018, who use it on multi-scale patches; no pretrained
network needed, unlike FID), beside swd_real, the same distance between two halves of the real
images: the floor a perfect generator would reach. Lower is better.

Class-conditional (`--conditional classes`, procedural shapes only): the generator draws the class it is
given and the discriminator judges the pair (raycv.models.dcgan); sample n draws class n mod K, so
any 10 consecutive samples hold one of each of the 10 shapes.

Extras: `sample_grid`, which `raycv dcgan samples --checkpoint ... --out grid.png` writes
(raycv/verbs/dcgan.py). Serving: the request image only seeds the noise (its pixels' CRC), so the
same image always gets the same sample.
"""

from __future__ import annotations

import base64
import zlib
from typing import Any
from collections.abc import Iterable

import numpy as np
import torch
import torchmetrics
from torch import nn

from raycv.checkpoint import LoadedModel
from raycv.config import TrainConfig
from raycv.data import procedural
from raycv.data.augment import random_dihedral
from raycv.data.figures import grid
from raycv.data.images import decode_image, encode_png, to_model_input, to_uint8_images
from raycv.data.natural import check_images_dir, photo_crop
from raycv.errors import RaycvError
from raycv.models.dcgan import DCGAN, NOISE_DIM
from raycv.tasks.base import Predict, Task, with_task_options
from raycv.tasks.cards import CARDS

IMAGE_SIZE = 64
SWD_PATCH, SWD_PATCHES, SWD_PROJECTIONS = 7, 4096, 256


def sliced_wasserstein(first: torch.Tensor, second: torch.Tensor, seed: int = 0) -> float:
    """SWD x 1000 between the 7x7 patches of two NCHW image sets in [0, 1], at full and half size:
    per scale, `SWD_PATCHES` random patches of each set, normalised by the first set's per-channel
    statistics, projected on `SWD_PROJECTIONS` random directions, sorted and compared."""
    generator = torch.Generator().manual_seed(seed)
    distances = []
    for scale in (1, 2):
        sets = [nn.functional.avg_pool2d(images.float().cpu(), scale) if scale > 1 else images.float().cpu()
                for images in (first, second)]
        patches = []
        for images in sets:
            unfolded = nn.functional.unfold(images, SWD_PATCH).transpose(1, 2).reshape(-1, 3 * SWD_PATCH ** 2)
            picks = torch.randint(0, len(unfolded), (SWD_PATCHES,), generator=generator)
            patches.append(unfolded[picks])
        mean, std = patches[0].mean(dim=0), patches[0].std(dim=0).clamp(min=1e-6)
        directions = torch.randn(3 * SWD_PATCH ** 2, SWD_PROJECTIONS, generator=generator)
        directions /= directions.norm(dim=0, keepdim=True)
        projected = [((patch - mean) / std @ directions).sort(dim=0).values for patch in patches]
        distances.append(float((projected[0] - projected[1]).abs().mean()))
    return 1000 * float(np.mean(distances))


def seed_class(seed: int, classes: int) -> int:
    """The class a conditional generator of `classes` classes draws for noise seed `seed`."""
    return seed % classes


def latent_for(seeds: list[int], classes: int = 0, device: torch.device | str = "cpu") -> torch.Tensor:
    """The generator's input for each seed: its noise, and for a generator of `classes` classes the class
    seed mod classes."""
    noise = torch.stack([torch.randn(NOISE_DIM, 1, 1, generator=torch.Generator().manual_seed(seed))
                         for seed in seeds])
    if classes:
        labels = torch.tensor([seed_class(seed, classes) for seed in seeds], dtype=noise.dtype)
        noise = torch.cat([noise, labels[:, None, None, None]], dim=1)
    return noise.to(device)


def generate(model: nn.Module, seeds: list[int]) -> torch.Tensor:
    """Samples in [0, 1] for the noise seeds, on the model's device."""
    with torch.inference_mode():
        return model.eval()(latent_for(seeds, the_gan(model).classes, next(model.parameters()).device))


def sample_grid(model: nn.Module, count: int = 64, seed: int = 0) -> np.ndarray:
    """`count` samples in rows of 8, or for a conditional generator of K classes in rows of K (seed % K is
    the class, so each column holds one class when `seed` is a multiple of K)."""
    return grid(to_uint8_images(generate(model, list(range(seed, seed + count)))), the_gan(model).classes or 8)


CONFIDENT = 0.9  # a sample counts as a recognisable shape when the classifier gives its class this much


def class_census(top_classes: list[str], top_probabilities: list[float], classes: list[str]) -> dict[str, Any]:
    """How recognisable and how varied samples are, from a shape classifier's top class and probability for
    each: `confident` (the share given a shape class with probability >= CONFIDENT), `shares` (each class's
    share of the samples), `min_share` (the smallest shape class's) and `distance_from_uniform` (total
    variation from equal shares of the shapes: 0 when every shape has 1/K of the samples, near 1 when the
    generator draws one class only: mode collapse). A classifier with the `none` class (classify synth
    --param no_shape_share=...) can call a sample no shape at all; such samples count for no shape."""
    shapes = [name for name in classes if name != procedural.NO_SHAPE]
    counts = {name: 0 for name in classes}
    for name in top_classes:
        counts[name] += 1
    shares = {name: count / len(top_classes) for name, count in counts.items()}
    expected = {name: 1 / len(shapes) if name in shapes else 0.0 for name in classes}
    return {"samples": len(top_classes),
            "confident": float(np.mean([name in shapes and p >= CONFIDENT
                                        for name, p in zip(top_classes, top_probabilities, strict=True)])),
            "min_share": min(shares[name] for name in shapes),
            "distance_from_uniform": 0.5 * sum(abs(shares[name] - expected[name]) for name in classes),
            "shares": shares}


def recognisability(model: nn.Module, classifier: LoadedModel, predict: Predict, count: int = 1000,
                    seed: int = 0, batch: int = 100) -> dict[str, Any]:
    """class_census of `count` samples (noise seeds seed, seed + 1, ...) by a raycv classify checkpoint
    trained on the images the generator learned from (`raycv classify synth --param image_size=64`)."""
    top_classes, top_probabilities = [], []
    for start in range(seed, seed + count, batch):
        images = to_uint8_images(generate(model, list(range(start, min(start + batch, seed + count)))))
        for (top,) in predict(classifier, list(images), top_k=1):
            top_classes.append(top["class"])
            top_probabilities.append(top["probability"])
    census = class_census(top_classes, top_probabilities, classifier.dataset_meta["classes"])
    classes = the_gan(model).classes
    if classes:  # the share of samples the classifier confidently names as the class the generator was given
        asked = [procedural.SHAPE_CLASSES[seed_class(one, classes)] for one in range(seed, seed + count)]
        census["as_asked"] = float(np.mean([name == wanted and p >= CONFIDENT for name, p, wanted
                                            in zip(top_classes, top_probabilities, asked, strict=True)]))
    return census


def the_gan(model: nn.Module) -> DCGAN:
    return getattr(model, "module", model)


class DCGANTask(Task):
    card = CARDS["dcgan"]
    metric = "swd"
    metric_mode = "min"
    synth_defaults = {"images_dir": "", "background": "textured", "layout": "anywhere"}
    ddp_options = {"find_unused_parameters": True}  # the player sitting a step out has no gradient

    def dataset_meta(self, params: dict[str, Any]) -> dict[str, Any]:
        check_images_dir(params["images_dir"])
        meta = {"image_size": [IMAGE_SIZE, IMAGE_SIZE], "source": params["images_dir"] or "procedural shapes",
                "background": procedural.check_choice("background", params["background"], procedural.BACKGROUNDS),
                "layout": procedural.check_choice("layout", params["layout"], procedural.LAYOUTS)}
        return meta if params["images_dir"] else {**meta, "classes": list(procedural.SHAPE_CLASSES)}

    def synthesize_sample(self, rng: np.random.Generator, params: dict[str, Any]) -> dict[str, Any]:
        if params["images_dir"]:
            return {"image": encode_png(photo_crop(rng, params["images_dir"], IMAGE_SIZE)), "label": -1}
        label = int(rng.integers(len(procedural.SHAPE_CLASSES)))
        image = procedural.render_shape_image(rng, label, IMAGE_SIZE, params["background"], params["layout"])
        return {"image": encode_png(image), "label": label}

    def decode(self, batch: dict[str, np.ndarray], meta: dict[str, Any]) -> dict[str, np.ndarray]:
        # Sets written before shapes kept their class have no label column: they train unconditional models.
        labels = batch.get("label", np.full(len(batch["image"]), -1))
        return {"image": np.stack([decode_image(data) for data in batch["image"]]),
                "label": np.asarray(labels, dtype=np.int64)}

    def training_meta(self, meta: dict[str, Any], cfg: TrainConfig) -> dict[str, Any]:
        """Records `generator_classes`: 0 for an unconditional generator, else the classes it draws."""
        if with_task_options(self, cfg).extra["conditional"] == "off":
            return {**meta, "generator_classes": 0}
        if not meta.get("classes"):
            raise RaycvError(f"--conditional classes needs procedural shapes with their classes (a set made by "
                             f"raycv dcgan synth without images_dir); this one has none: {meta.get('source', '?')}")
        return {**meta, "generator_classes": len(meta["classes"])}

    def make_network(self, cfg: TrainConfig, meta: dict[str, Any]) -> nn.Module:
        return DCGAN(cfg.width, classes=meta.get("generator_classes", 0))

    def augment(self, batch: dict[str, torch.Tensor], cfg: TrainConfig) -> dict[str, torch.Tensor]:
        # Rotations and mirrors keep every shape's class (a mirrored crescent is still a crescent).
        return {"image": random_dihedral(to_model_input(batch["image"]))[0], "label": batch["label"]}

    def loss(self, model: nn.Module, batch: dict[str, torch.Tensor], cfg: TrainConfig) -> torch.Tensor:
        return model(to_model_input(batch["image"]), batch["label"])["loss"]

    def evaluate(self, model: nn.Module, batches: Iterable[dict[str, torch.Tensor]],
                 meta: dict[str, Any]) -> dict[str, float]:
        """SWD of as many samples as there are validation images (seeds 0, 1, ...: the same every
        epoch), and the real-vs-real floor. Each DDP worker scores its shard; the mean is reported."""
        device = next(model.parameters()).device
        real = torch.cat([to_model_input(batch["image"]).cpu() for batch in batches])
        fake = model(latent_for(list(range(len(real))), the_gan(model).classes, device)).float().cpu()
        half = len(real) // 2
        swd, floor = torchmetrics.MeanMetric().to(device), torchmetrics.MeanMetric().to(device)
        swd.update(torch.tensor(sliced_wasserstein(real, fake), device=device))
        floor.update(torch.tensor(sliced_wasserstein(real[:half], real[half:]), device=device))
        return {"swd": float(swd.compute()), "swd_real": float(floor.compute())}

    def preprocess(self, images: list[np.ndarray], meta: dict[str, Any]) -> torch.Tensor:
        return latent_for([zlib.crc32(np.ascontiguousarray(image).tobytes()) for image in images],
                          meta.get("generator_classes", 0))

    def postprocess(self, outputs: torch.Tensor, meta: dict[str, Any],
                    sizes: list[tuple[int, int]]) -> list[dict[str, Any]]:
        """Per request image: one generated 64x64 sample as a base64 PNG."""
        return [{"image_png": base64.b64encode(encode_png(image)).decode("ascii")}
                for image in to_uint8_images(outputs.float())]


TASK = DCGANTask()
