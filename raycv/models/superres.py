"""Super-resolution networks: ESPCN and a residual PixelShuffle network, both on the luma channel.

Both work at the low resolution and upsample once at the end with PixelShuffle (sub-pixel
convolution, Shi et al. 2016), which is what makes them cheap: every convolution runs on 1/scale^2
of the output pixels. `LumaSR` wraps either for RGB images: the network restores Y, chroma (which
the eye resolves far less sharply) is upscaled bicubically, as in the ESPCN and SRCNN papers.
"""

from __future__ import annotations

import torch
from torch import nn

from raycv.data.color import rgb_to_ycbcr, ycbcr_to_rgb
from raycv.models.common import ResidualBlock

# Low-resolution pixels of context the networks below can see on each side (their receptive field,
# rounded up). Inputs padded this much give the same answer whatever they are batched or tiled with.
HALO = 16


def bicubic(images: torch.Tensor, scale: int) -> torch.Tensor:
    return nn.functional.interpolate(images, scale_factor=scale, mode="bicubic", align_corners=False)


class ESPCN(nn.Module):
    """Shi et al. 2016: 5x5 conv to 64, 3x3 to 32, 3x3 to scale^2 channels, pixel shuffle (tanh
    activations, as in the paper). `width` scales the 64 and 32."""

    def __init__(self, scale: int, width: float = 1.0, channels: int = 1):
        super().__init__()
        wide, narrow = max(8, round(64 * width)), max(4, round(32 * width))
        self.body = nn.Sequential(
            nn.Conv2d(channels, wide, 5, padding=2), nn.Tanh(),
            nn.Conv2d(wide, narrow, 3, padding=1), nn.Tanh(),
            nn.Conv2d(narrow, channels * scale ** 2, 3, padding=1),
            nn.PixelShuffle(scale),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x)


class ResidualPixelShuffle(nn.Module):
    """Bicubic upsampling plus a learned correction: head conv, `blocks` residual blocks and a long skip
    at low resolution, then a conv to scale^2 channels and a pixel shuffle. Learning only what bicubic
    gets wrong makes the network start at the baseline and train in minutes. `width` scales the 32
    feature channels."""

    def __init__(self, scale: int, width: float = 1.0, channels: int = 1, blocks: int = 4):
        super().__init__()
        features = max(8, round(32 * width))
        self.scale = scale
        self.head = nn.Conv2d(channels, features, 3, padding=1)
        self.body = nn.Sequential(*[ResidualBlock(features) for _ in range(blocks)],
                                  nn.Conv2d(features, features, 3, padding=1))
        self.tail = nn.Sequential(nn.Conv2d(features, channels * scale ** 2, 3, padding=1), nn.PixelShuffle(scale))
        nn.init.zeros_(self.tail[0].weight)  # start exactly at bicubic
        nn.init.zeros_(self.tail[0].bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        features = self.head(x)
        return bicubic(x, self.scale) + self.tail(features + self.body(features))


class LumaSR(nn.Module):
    """RGB in [0, 1] at low resolution -> RGB at `scale` times the size (not clamped, so a loss sees
    the network's own values). The luma network restores Y; Cb and Cr are upscaled bicubically.

    In eval mode an input larger than TILE x TILE pixels is processed in tiles that overlap by HALO
    pixels, so memory stays bounded for any image size and the result equals the untiled one."""

    TILE = 192

    def __init__(self, net: nn.Module, scale: int):
        super().__init__()
        self.net = net
        self.scale = scale

    def forward(self, rgb: torch.Tensor) -> torch.Tensor:
        height, width = rgb.shape[-2:]
        if self.training or (height <= self.TILE and width <= self.TILE):
            return self.upscale(rgb)
        out = rgb.new_empty(rgb.shape[0], 3, height * self.scale, width * self.scale)
        s = self.scale
        for top in range(0, height, self.TILE):
            for left in range(0, width, self.TILE):
                bottom, right = min(top + self.TILE, height), min(left + self.TILE, width)
                y0, x0 = max(top - HALO, 0), max(left - HALO, 0)
                y1, x1 = min(bottom + HALO, height), min(right + HALO, width)
                tile = self.upscale(rgb[..., y0:y1, x0:x1])
                out[..., top * s:bottom * s, left * s:right * s] = \
                    tile[..., (top - y0) * s:(bottom - y0) * s, (left - x0) * s:(right - x0) * s]
        return out

    def upscale(self, rgb: torch.Tensor) -> torch.Tensor:
        ycbcr = rgb_to_ycbcr(rgb)
        luma = self.net(ycbcr[:, :1])
        chroma = bicubic(ycbcr[:, 1:], self.scale)
        return ycbcr_to_rgb(torch.cat([luma, chroma], dim=1))
