"""A dense, anchor-free detector: ResNet backbone, FPN-style top-down neck to stride 4, two heads.

The heads follow CenterNet / TTFNet: per-class centre heatmaps, and at every stride-4 cell the
distances from that cell's centre to the four box edges (left, top, right, bottom) in input pixels.
The box coding itself (targets, losses, decoding, even the exp that turns raw outputs into distances)
lives in raycv/tasks/detect.py; this module is only the network. Its output is the raw output of one
final convolution, so that serving, TorchScript and ONNX export see a plain `image -> tensor` model
and channel pruning (raycv/compress.py protects the layers whose outputs are the model's) cannot
remove an output channel.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from raycv.models.cifar import CifarResNet

OUTPUT_STRIDE = 4
# Heatmap logits start at sigmoid^-1(0.01): almost every cell is background, and starting there keeps
# the focal loss of the first steps from being dominated by easy negatives (RetinaNet's prior).
HEATMAP_PRIOR = 0.01
NECK_MAX = 128


def conv_bn_relu(in_channels: int, out_channels: int, stride: int = 1) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(in_channels, out_channels, 3, stride=stride, padding=1, bias=False),
                         nn.BatchNorm2d(out_channels), nn.ReLU(inplace=True))


class FeaturePyramid(nn.Module):
    """A ResNet backbone and an FPN-style top-down neck to stride 4: the body of the detector, and of segment's
    pyramid segmenter (raycv/models/unet.py), which shares its layer names so a detector's weights load into it.

    Input (B, 3, H, W) with H and W divisible by 32; `pyramid(x)` gives the stride-2 features (`fine_channels`
    wide) and the neck's stride-4 features (`neck_channels` wide)."""

    def __init__(self, blocks: tuple[int, ...] = (2, 2, 2, 2), width: float = 0.5, backbone: nn.Module | None = None):
        """`backbone`: a module whose forward gives the feature maps at strides 2, 4, 8, 16 and 32 and whose
        `channels` lists their widths (raycv.models.zoo.ZooBackbone; the neck reads the last four); without
        one, the CIFAR ResNet's stages of `blocks` at `width`."""
        super().__init__()
        if backbone is None:
            # The CIFAR ResNet's stages at strides 4..32: a strided stem in place of its stride-1 one,
            # because full-resolution stages would cost 16x the compute for no gain on objects this large.
            stages = CifarResNet(blocks, width=width).stages
            channels = [stage[-1].conv2.out_channels for stage in stages]
            self.stem = nn.Sequential(conv_bn_relu(3, channels[0] // 2, stride=2),
                                      conv_bn_relu(channels[0] // 2, channels[0] // 2),
                                      conv_bn_relu(channels[0] // 2, channels[0], stride=2))
            self.stages = stages
            self.fine_channels = channels[0] // 2
        else:
            self.backbone = backbone
            channels = list(backbone.channels[1:])
            self.fine_channels = backbone.channels[0]
        # Capped: the neck runs at stride 4, where a ResNet-50's 512 channels would cost more than its backbone.
        self.neck_channels = neck = min(NECK_MAX, max(16, channels[0] * 2))
        self.lateral = nn.ModuleList(nn.Conv2d(c, neck, 1) for c in channels)
        self.smooth = nn.ModuleList(conv_bn_relu(neck, neck) for _ in channels[:-1])

    def pyramid(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if hasattr(self, "backbone"):
            fine, *features = self.backbone(x)
        else:
            fine = self.stem[1](self.stem[0](x))
            x = self.stem[2](fine)
            features = []
            for stage in self.stages:
                x = stage(x)
                features.append(x)
        top_down = self.lateral[-1](features[-1])
        for level in range(len(features) - 2, -1, -1):
            upsampled = nn.functional.interpolate(top_down, size=features[level].shape[-2:], mode="nearest")
            top_down = self.smooth[level](self.lateral[level](features[level]) + upsampled)
        return fine, top_down


class CenterDetector(FeaturePyramid):
    """Input (B, 3, H, W) with H and W divisible by 32; output (B, num_classes + 4, H/4, W/4): heatmap
    logits, then the raw (log-scale) left/top/right/bottom distances from each cell's centre."""

    def __init__(self, num_classes: int, blocks: tuple[int, ...] = (2, 2, 2, 2), width: float = 0.5,
                 backbone: nn.Module | None = None):
        super().__init__(blocks, width, backbone)
        neck = self.neck_channels
        # A tower per output kind (heatmap, box), read by one 1x1 convolution over both: the decoupled
        # heads of CenterNet/FCOS as one layer, so the model's output is that layer's output.
        self.heatmap_tower = conv_bn_relu(neck, neck)
        self.box_tower = conv_bn_relu(neck, neck)
        self.output = nn.Conv2d(2 * neck, num_classes + 4, 1)
        nn.init.constant_(self.output.bias[:num_classes], -math.log((1 - HEATMAP_PRIOR) / HEATMAP_PRIOR))
        nn.init.zeros_(self.output.bias[num_classes:])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        _, top_down = self.pyramid(x)
        return self.output(torch.cat([self.heatmap_tower(top_down), self.box_tower(top_down)], dim=1))
