from __future__ import annotations

import torch
from torch import nn


class Normalized(nn.Module):
    """A network whose input normalisation is part of the model, so training, serving and every
    export (TorchScript, ONNX, quantized) see the same [0, 1] input and cannot disagree on it."""

    def __init__(self, net: nn.Module, mean: tuple[float, ...], std: tuple[float, ...]):
        super().__init__()
        self.net = net
        self.register_buffer("mean", torch.tensor(mean).view(1, -1, 1, 1))
        self.register_buffer("std", torch.tensor(std).view(1, -1, 1, 1))

    def forward(self, x: torch.Tensor, *args: torch.Tensor) -> torch.Tensor:
        # Extra inputs (an embedding net's training labels) pass through unnormalised.
        return self.net((x - self.mean) / self.std, *args)


class FlipAveraged(Normalized):
    """A classifier with flip test-time augmentation: in eval mode its logits are the mean of the image's and
    its mirror's; in training mode it is the plain network. Its state_dict is Normalized's, so weights move
    freely between the two."""

    def mirrored(self, x: torch.Tensor, *args: torch.Tensor) -> torch.Tensor:
        return super().forward(x.flip(-1), *args)

    def forward(self, x: torch.Tensor, *args: torch.Tensor) -> torch.Tensor:
        logits = super().forward(x, *args)
        if self.training:
            return logits
        return (logits + self.mirrored(x, *args)) / 2


class AveragedMaps(Normalized):
    """Per-pixel logits (segmentation) with test-time augmentation: in eval mode, the mean of the logit maps of
    the image resized by each of `scales` (to multiples of `multiple`, the network's stride; each map resized
    back) and, with `flip`, of their mirrors (flipped back); in training mode the plain network. Its
    state_dict is Normalized's, so weights move freely between the two, and a trained model's augmentation
    can change at evaluation. Enlarged inputs help where objects are small for the training resolution."""

    def __init__(self, net: nn.Module, mean: tuple[float, ...], std: tuple[float, ...], flip: bool,
                 scales: tuple[float, ...] = (1.0,), multiple: int = 32):
        super().__init__(net, mean, std)
        self.flip, self.scales, self.multiple = flip, tuple(scales), multiple

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.training:
            return super().forward(x)
        size = tuple(x.shape[-2:])
        maps = []
        for scale in self.scales:
            scaled_size = tuple(max(self.multiple, round(side * scale / self.multiple) * self.multiple)
                                for side in size)
            scaled = x if scaled_size == size else nn.functional.interpolate(x, scaled_size, mode="bilinear",
                                                                           align_corners=False)
            views = [super().forward(scaled)]
            if self.flip:
                views.append(super().forward(scaled.flip(-1)).flip(-1))
            maps += [view if scaled_size == size else nn.functional.interpolate(view, size, mode="bilinear",
                                                                               align_corners=False)
                     for view in views]
        return torch.stack(maps).mean(dim=0)


def grey_images(images: torch.Tensor) -> torch.Tensor:
    """(N,) bool: which images of an (N, 3, H, W) batch are grey, every pixel's three channels equal."""
    return (images.amax(dim=1) == images.amin(dim=1)).flatten(1).all(dim=1)


def keep_grey(reconstruction: torch.Tensor, grey: torch.Tensor) -> torch.Tensor:
    """The images flagged in `grey` (N,) decoded as grey, their channels' mean in all three; the others as
    they are. A codec's decoder tints a grey photograph faintly (it learns colour); JPEG codes one without
    chroma. Averaging gave +0.3 to +0.9 dB on the grey held-out photographs (camera, coins, moon)."""
    grey_version = reconstruction.mean(dim=1, keepdim=True).expand_as(reconstruction)
    return torch.where(grey.view(-1, 1, 1, 1), grey_version, reconstruction)


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


class ResidualBlock(nn.Module):
    """EDSR's block: conv, ReLU, conv, added back; no batch norm (it would tie each pixel's output to
    the batch's statistics and costs PSNR in restoration)."""

    def __init__(self, channels: int):
        super().__init__()
        self.body = nn.Sequential(nn.Conv2d(channels, channels, 3, padding=1), nn.ReLU(inplace=True),
                                  nn.Conv2d(channels, channels, 3, padding=1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.body(x)
