"""How the pixel tasks measure results: PSNR and SSIM on the luma (Y) channel of BT.601 studio-range
YCbCr (what the super-resolution literature reports) or on RGB, computed by torchmetrics on images
quantised to 8 bits, with `shave` border pixels left out; `masked_psnr` measures only the pixels of a
mask (an inpainted hole)."""

from __future__ import annotations

import numpy as np
import torch

from raycv.data.color import rgb_to_y
from raycv.data.images import as_batch


def quantize(images: torch.Tensor) -> torch.Tensor:
    """What an 8-bit PNG of the result would hold: scores are of images people can save."""
    return images.float().clamp(0, 1).mul(255).round().div(255)


def shave(images: torch.Tensor, border: int) -> torch.Tensor:
    return images[..., border:images.shape[-2] - border, border:images.shape[-1] - border] if border else images


class ImageQuality:
    """Mean per-image PSNR (dB) and SSIM of results against references, border shaved, on Y
    (`luma`, super-resolution's convention) or on RGB (compression's). torchmetrics' states sum
    across DDP workers, so each worker may measure only its shard."""

    def __init__(self, device: torch.device | str, border: int = 0, luma: bool = True):
        import torchmetrics

        self.border, self.luma = border, luma
        self.psnr = torchmetrics.image.PeakSignalNoiseRatio(data_range=1.0, dim=(1, 2, 3)).to(device)
        self.ssim = torchmetrics.image.StructuralSimilarityIndexMeasure(data_range=1.0).to(device)

    def update(self, results: torch.Tensor, references: torch.Tensor) -> None:
        """NCHW RGB in [0, 1], of the same size."""
        channels = rgb_to_y if self.luma else (lambda images: images)
        results = shave(channels(quantize(results)), self.border)
        references = shave(channels(quantize(references)), self.border)
        self.psnr.update(results, references)
        self.ssim.update(results, references)

    def compute(self) -> dict[str, float]:
        return {"psnr": float(self.psnr.compute()), "ssim": float(self.ssim.compute())}


def psnr_ssim(result: np.ndarray, reference: np.ndarray, border: int = 0, luma: bool = True) -> tuple[float, float]:
    """PSNR and SSIM (on Y, or on RGB) of one uint8 HWC result against its reference."""
    quality = ImageQuality("cpu", border, luma)
    quality.update(as_batch(result), as_batch(reference))
    scores = quality.compute()
    return scores["psnr"], scores["ssim"]


def masked_mse(results: torch.Tensor, references: torch.Tensor, masks: torch.Tensor) -> torch.Tensor:
    """(N,) per-image mean squared error over the pixels where `masks` (N1HW, 1 = measured) is set, all
    channels."""
    error = (results - references).pow(2) * masks
    return error.sum(dim=(1, 2, 3)) / (masks.sum(dim=(1, 2, 3)) * results.shape[1]).clamp(min=1)


def masked_psnr(results: torch.Tensor, references: torch.Tensor, masks: torch.Tensor) -> torch.Tensor:
    """Per-image PSNR (dB) of masked_mse after 8-bit quantisation. An exact match is capped at 100 dB
    rather than infinity."""
    mse = masked_mse(quantize(results), quantize(references), masks)
    return (10 * torch.log10(1 / mse.clamp(min=1e-10))).clamp(max=100.0)


def ms_ssim(result: np.ndarray, reference: np.ndarray) -> float:
    """Multi-scale SSIM on RGB (Wang et al. 2003, torchmetrics' five scales) of one uint8 HWC image, the
    learned-compression literature's second number. Images need 161+ pixels a side for the five scales."""
    import torchmetrics

    measure = torchmetrics.image.MultiScaleStructuralSimilarityIndexMeasure(data_range=1.0)
    return float(measure(quantize(as_batch(result)), quantize(as_batch(reference))))
