"""CIFAR-style networks for 32x32 input: the textbook's VGG-11-BN and ResNet-18.

torchvision's VGG and ResNet are built for 224x224 ImageNet input (7x7 stem, max-pool, 4096-wide
classifier); on 32x32 images they collapse the feature map too early. These are the standard CIFAR
variants (3x3 stem, no stem pooling, 512-d linear classifier), which is what the book trains.
"""

from __future__ import annotations

import torch
from torch import nn
from torchvision.models.resnet import BasicBlock

VGG11_LAYOUT = (64, "M", 128, "M", 256, 256, "M", 512, 512, "M", 512, 512, "M")


class VGG(nn.Module):
    def __init__(self, num_classes: int = 10, layout=VGG11_LAYOUT, in_channels: int = 3, width: float = 1.0):
        super().__init__()
        layers: list[nn.Module] = []
        channels = in_channels
        for item in layout:
            if item == "M":
                layers.append(nn.MaxPool2d(2))
                continue
            out = max(8, int(item * width))
            layers += [nn.Conv2d(channels, out, 3, padding=1), nn.BatchNorm2d(out), nn.ReLU(inplace=True)]
            channels = out
        self.features = nn.Sequential(*layers)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Linear(channels, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(torch.flatten(self.pool(self.features(x)), 1))


class CifarResNet(nn.Module):
    """ResNet with torchvision's BasicBlock and a CIFAR stem (3x3 conv, stride 1, no max-pool).

    `pooled_size` > 1 pools the last feature map to a grid of that many cells a side instead of one
    average, so the linear head sees where each feature sits (face-embedding nets such as ArcFace's
    flatten their last map into the embedding layer for this reason). `dropout` drops pooled features
    before that layer (ArcFace's output block), a regulariser for embeddings of identities never seen.
    `stem_stride` 2 halves the input in the stem: a 64x64 image then costs what a 32x32 one does at
    stride 1, while the stem still sees its finer detail."""

    def __init__(self, blocks=(2, 2, 2, 2), num_classes: int = 10, in_channels: int = 3, width: float = 1.0,
                 pooled_size: int = 1, dropout: float = 0.0, stem_stride: int = 1):
        super().__init__()
        widths = [max(8, int(w * width)) for w in (64, 128, 256, 512)]
        self.stem = nn.Sequential(
            nn.Conv2d(in_channels, widths[0], 3, stride=stem_stride, padding=1, bias=False),
            nn.BatchNorm2d(widths[0]),
            nn.ReLU(inplace=True),
        )
        stages = []
        channels = widths[0]
        for index, (count, out) in enumerate(zip(blocks, widths, strict=False)):
            stride = 1 if index == 0 else 2
            stage = []
            for block_index in range(count):
                downsample = None
                if block_index == 0 and (stride != 1 or channels != out):
                    downsample = nn.Sequential(
                        nn.Conv2d(channels, out, 1, stride=stride, bias=False), nn.BatchNorm2d(out)
                    )
                stage.append(BasicBlock(channels, out, stride if block_index == 0 else 1, downsample))
                channels = out
            stages.append(nn.Sequential(*stage))
        self.stages = nn.Sequential(*stages)
        self.pool = nn.AdaptiveAvgPool2d(pooled_size)
        self.dropout = nn.Dropout(dropout)  # holds no weights: checkpoints load with any rate
        self.fc = nn.Linear(channels * pooled_size**2, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.dropout(torch.flatten(self.pool(self.stages(self.stem(x))), 1)))
