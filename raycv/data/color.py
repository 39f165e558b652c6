"""Colour: BT.601 studio-range YCbCr, the convention of super-resolution papers and of MATLAB's
rgb2ycbcr."""

from __future__ import annotations

import torch

_RGB_TO_YCBCR = torch.tensor([[65.481, 128.553, 24.966],
                              [-37.797, -74.203, 112.0],
                              [112.0, -93.786, -18.214]], dtype=torch.float64) / 255
_YCBCR_OFFSET = torch.tensor([16.0, 128.0, 128.0], dtype=torch.float64) / 255


def rgb_to_ycbcr(images: torch.Tensor) -> torch.Tensor:
    """NCHW RGB in [0, 1] to YCbCr in [0, 1] (Y in [16, 235] / 255)."""
    matrix = _RGB_TO_YCBCR.to(images)
    return torch.einsum("ij,njhw->nihw", matrix, images) + _YCBCR_OFFSET.to(images).view(1, 3, 1, 1)


def ycbcr_to_rgb(images: torch.Tensor) -> torch.Tensor:
    matrix = torch.linalg.inv(_RGB_TO_YCBCR).to(images)
    return torch.einsum("ij,njhw->nihw", matrix, images - _YCBCR_OFFSET.to(images).view(1, 3, 1, 1))


def rgb_to_y(images: torch.Tensor) -> torch.Tensor:
    """NCHW RGB in [0, 1] to N1HW luma."""
    return rgb_to_ycbcr(images)[:, :1]
