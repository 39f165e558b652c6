"""Super-resolution x2 / x3 / x4 (textbook chapter 6.6, done properly).

The book's "super-resolution" deblurs a same-size image and reports no number. Here the network
sees a real low-resolution image (the high-resolution crop shrunk by antialiased bicubic) and
returns one `scale` times larger; results are scored by PSNR and SSIM on Y against the original,
beside the bicubic upscale every SR method must beat.

Data: Ray Data synthesizes (high-resolution crop, bicubic low-resolution) pairs from dead-leaves
images (raycv.data.natural) or, with --param images_dir=DIR, from crops of any image folder; the
scale is a dataset parameter (--param scale=4). Models (raycv.models.superres): `residual`
(bicubic + a learned residual, PixelShuffle) and `espcn`, both on Y.

Metrics (val): psnr, ssim (the model), psnr_bicubic, ssim_bicubic (the baseline), psnr_gain, and
the L1 loss; borders of `scale` pixels are left out, as is customary.

Extras: `score_photos`, the per-image table on scikit-image's and scikit-learn's photographs (never
trained on) and side-by-side PNGs that `raycv superres eval-photos` prints; `raycv superres upscale`
(one image to a PNG; both in raycv/verbs/superres.py) and POST /v1/superres/upscale (answers image/png).
"""

from __future__ import annotations

import base64
from typing import Any
from collections.abc import Iterable

import numpy as np
import torch
import torchmetrics
from torch import nn

from raycv.checkpoint import LoadedModel
from raycv.config import TrainConfig
from raycv.data import resample
from raycv.data.augment import random_dihedral
from raycv.data.color import rgb_to_y
from raycv.data.figures import busiest_window, side_by_side, write_png, zoom
from raycv.data.images import decode_image, encode_png, to_model_input, to_uint8_images
from raycv.data.natural import check_images_dir, training_crop
from raycv.data.photos import real_photos
from raycv.data.quality import ImageQuality, psnr_ssim
from raycv.errors import RaycvError
from raycv.models.superres import ESPCN, HALO, LumaSR, ResidualPixelShuffle
from raycv.tasks.base import Predict, Task
from raycv.tasks.cards import CARDS
from raycv.tasks.routes import answer_image, no_query, png_response

MODELS = {"residual": ResidualPixelShuffle, "espcn": ESPCN}


# ---------------------------------------------------------------------------------------------------
# Pairs and augmentation.
# ---------------------------------------------------------------------------------------------------


def make_pair(high: np.ndarray, scale: int) -> tuple[np.ndarray, np.ndarray]:
    """(low, high) for a uint8 HWC image: cropped to a multiple of `scale`, then shrunk."""
    high = resample.crop_to_multiple(high, scale)
    return resample.bicubic_downscale(high, scale), high


# ---------------------------------------------------------------------------------------------------
# Pictures and per-photo scores.
# ---------------------------------------------------------------------------------------------------


def comparison_panels(low: np.ndarray, bicubic: np.ndarray, result: np.ndarray, high: np.ndarray, scale: int,
                      window: int = 128, factor: int = 2) -> np.ndarray:
    """Low-res (pixel-replicated), bicubic, model and original side by side, cropped to a `window`
    square of the high-resolution image (its busiest one) and enlarged `factor` times."""
    top, left = busiest_window(high, window)
    box = (top, left, min(window, high.shape[0]), min(window, high.shape[1]))
    nearest = np.repeat(np.repeat(low, scale, axis=0), scale, axis=1)
    panels = [(f"input (x{scale} smaller)", nearest), ("bicubic", bicubic), ("raycv superres", result),
              ("original", high)]
    return side_by_side([(label, zoom(image, box, factor)) for label, image in panels])


def score_photos(loaded: LoadedModel, predict: Predict, names: tuple[str, ...] | None = None,
                 out: str | None = None) -> list[dict[str, Any]]:
    """Per photo: PSNR and SSIM on Y of bicubic and of the model against the original, which is
    cropped to a multiple of the scale and shrunk by bicubic. With `out`, a side-by-side PNG per photo."""
    scale = int(loaded.dataset_meta["scale"])
    rows = []
    for name, photo in real_photos(names).items():
        low, high = make_pair(photo, scale)
        bicubic = resample.bicubic_upscale(low, scale)
        result = answer_image(predict(loaded, [low])[0])
        bicubic_psnr, bicubic_ssim = psnr_ssim(bicubic, high, border=scale)
        model_psnr, model_ssim = psnr_ssim(result, high, border=scale)
        rows.append({"image": name, "size": f"{high.shape[1]}x{high.shape[0]}", "bicubic_psnr": round(bicubic_psnr, 2),
                     "model_psnr": round(model_psnr, 2), "gain_db": round(model_psnr - bicubic_psnr, 2),
                     "bicubic_ssim": round(bicubic_ssim, 4), "model_ssim": round(model_ssim, 4)})
        if out:
            write_png(out, f"{name}_x{scale}.png", comparison_panels(low, bicubic, result, high, scale))
    rows.append({"image": "mean", "size": "",
                 **{key: round(float(np.mean([row[key] for row in rows])), 4 if "ssim" in key else 2)
                    for key in ("bicubic_psnr", "model_psnr", "gain_db", "bicubic_ssim", "model_ssim")}})
    return rows


# ---------------------------------------------------------------------------------------------------
# The task.
# ---------------------------------------------------------------------------------------------------


class SuperresTask(Task):
    card = CARDS["superres"]
    metric = "psnr"
    metric_mode = "max"
    synth_defaults = {"crop_size": 64, "scale": 2, "images_dir": ""}
    routes = {"upscale": (no_query("/v1/superres/upscale"), png_response)}

    def dataset_meta(self, params: dict[str, Any]) -> dict[str, Any]:
        scale = resample.check_scale(params["scale"])
        crop = int(params["crop_size"])
        if crop % scale or crop < 8 * scale:
            raise RaycvError(f"invalid crop_size={crop}: expected a multiple of scale={scale} and at least {8 * scale}")
        check_images_dir(params["images_dir"])
        return {"scale": scale, "crop_size": crop, "image_size": [crop, crop],
                "source": params["images_dir"] or "dead leaves"}

    def synthesize_sample(self, rng: np.random.Generator, params: dict[str, Any]) -> dict[str, Any]:
        high = training_crop(rng, int(params["crop_size"]), params)
        low, high = make_pair(high, int(params["scale"]))
        return {"hr": encode_png(high), "lr": encode_png(low)}

    def decode(self, batch: dict[str, np.ndarray], meta: dict[str, Any]) -> dict[str, np.ndarray]:
        return {"lr": np.stack([decode_image(data) for data in batch["lr"]]),
                "hr": np.stack([decode_image(data) for data in batch["hr"]])}

    def make_network(self, cfg: TrainConfig, meta: dict[str, Any]) -> nn.Module:
        scale = int(meta["scale"])
        return LumaSR(MODELS[cfg.model](scale, cfg.width), scale)

    def augment(self, batch: dict[str, torch.Tensor], cfg: TrainConfig) -> dict[str, torch.Tensor]:
        low, high = random_dihedral(to_model_input(batch["lr"]), to_model_input(batch["hr"]))
        return {"lr": low, "hr": high}

    def loss(self, model: nn.Module, batch: dict[str, torch.Tensor], cfg: TrainConfig) -> torch.Tensor:
        result = model(to_model_input(batch["lr"])).float()
        return nn.functional.l1_loss(rgb_to_y(result), rgb_to_y(to_model_input(batch["hr"])))

    def evaluate(self, model: nn.Module, batches: Iterable[dict[str, torch.Tensor]],
                 meta: dict[str, Any]) -> dict[str, float]:
        device = next(model.parameters()).device
        scale = int(meta["scale"])
        learned, baseline = ImageQuality(device, border=scale), ImageQuality(device, border=scale)
        mean_loss = torchmetrics.MeanMetric().to(device)
        for batch in batches:
            low, high = to_model_input(batch["lr"]), to_model_input(batch["hr"])
            result = model(low).float()
            bicubic = torch.from_numpy(np.stack([resample.bicubic_upscale(image, scale)
                                                 for image in batch["lr"].cpu().numpy()])).to(device)
            learned.update(result, high)
            baseline.update(to_model_input(bicubic), high)
            mean_loss.update(nn.functional.l1_loss(rgb_to_y(result), rgb_to_y(high)), weight=len(low))
        scores, bicubic_scores = learned.compute(), baseline.compute()
        return {**scores, "psnr_bicubic": bicubic_scores["psnr"], "ssim_bicubic": bicubic_scores["ssim"],
                "psnr_gain": scores["psnr"] - bicubic_scores["psnr"], "loss": float(mean_loss.compute())}

    def preprocess(self, images: list[np.ndarray], meta: dict[str, Any]) -> torch.Tensor:
        # Any size works (the networks are fully convolutional); the HALO margin makes each answer
        # independent of the other images in its batch.
        return resample.stack_padded(images, margin=HALO)

    def postprocess(self, outputs: torch.Tensor, meta: dict[str, Any],
                    sizes: list[tuple[int, int]]) -> list[dict[str, Any]]:
        """Per image: the enlarged image as a base64 PNG, its size and the scale."""
        scale = int(meta["scale"])
        images = to_uint8_images(outputs.float())
        answers = []
        for image, (height, width) in zip(images, sizes, strict=False):
            top = HALO * scale
            image = image[top:top + int(height) * scale, top:top + int(width) * scale]
            answers.append({"image_png": base64.b64encode(encode_png(np.ascontiguousarray(image))).decode("ascii"),
                            "width": int(width) * scale, "height": int(height) * scale, "scale": scale})
        return answers


TASK = SuperresTask()
