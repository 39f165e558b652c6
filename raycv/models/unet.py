"""Segmentation networks. The textbook's (chapter 6): a UNet whose encoder is ResNet-18 and whose decoder
is LinkNet's (1x1 reduce, 3x3 transposed-conv upsample, 1x1 expand, added to the encoder skip). And a
lighter one for photographs on CPUs: the detector's feature pyramid with a stride-2 head (PyramidSegmenter).

Two skips beyond LinkNet's keep mask boundaries pixel-accurate: LinkNet upsamples its last two octaves
blind, which costs a pixel or two of boundary, and on 30-60 px objects a pixel of boundary is several
points of IoU. The stem's half-resolution features join the last decoder block, and a light
full-resolution convolution of the input joins the classifier.
"""

from __future__ import annotations

import torch
from torch import nn

from raycv.errors import RaycvError
from raycv.models.cifar import CifarResNet
from raycv.models.detection import FeaturePyramid

RESNET18_WIDTHS = (64, 128, 256, 512)
INPUT_MULTIPLE = 32  # the encoder halves the resolution five times


def check_input_size(x: torch.Tensor) -> None:
    height, width = x.shape[-2:]
    if height % INPUT_MULTIPLE or width % INPUT_MULTIPLE:
        raise RaycvError(f"segmentation input of {height}x{width} pixels: height and width must be multiples of "
                         f"{INPUT_MULTIPLE} (e.g. {INPUT_MULTIPLE * max(1, round(height / INPUT_MULTIPLE))}x"
                         f"{INPUT_MULTIPLE * max(1, round(width / INPUT_MULTIPLE))})")


def conv_bn_relu(in_channels: int, out_channels: int, kernel: int = 3) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(in_channels, out_channels, kernel, padding=kernel // 2, bias=False),
                         nn.BatchNorm2d(out_channels), nn.ReLU(inplace=True))


class LinkNetDecoderBlock(nn.Module):
    """Doubles the resolution: 1x1 to in/4 channels, 3x3 transposed conv stride 2, 1x1 to out channels."""

    def __init__(self, in_channels: int, out_channels: int):
        super().__init__()
        middle = max(8, in_channels // 4)
        self.block = nn.Sequential(
            conv_bn_relu(in_channels, middle, kernel=1),
            nn.ConvTranspose2d(middle, middle, 3, stride=2, padding=1, output_padding=1, bias=False),
            nn.BatchNorm2d(middle), nn.ReLU(inplace=True),
            conv_bn_relu(middle, out_channels, kernel=1),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.block(x)


class UNet(nn.Module):
    """(N, 3, H, W) in [0, 1]-normalised pixels -> (N, num_classes, H, W) logits, H and W multiples of 32.

    `width` scales every channel count (1.0 is ResNet-18's 64..512); 0.5 trains about 3x faster on CPU.
    """

    def __init__(self, num_classes: int, width: float = 1.0, in_channels: int = 3, encoder: nn.Module | None = None):
        """`encoder`: a torchvision backbone (raycv.models.zoo.ZooBackbone: features at strides 2 to 32 and their
        `channels`) in place of the ResNet-18 encoder scaled by `width`."""
        super().__init__()
        if encoder is None:
            c1, c2, c3, c4 = (max(8, int(w * width)) for w in RESNET18_WIDTHS)
            c0 = c1
            # ImageNet ResNet-18: 7x7 stride-2 stem and max-pool, then four stages of torchvision BasicBlocks.
            # The stages are CifarResNet's, which are exactly ResNet-18's layer1..layer4 at any width.
            self.stem = nn.Sequential(nn.Conv2d(in_channels, c1, 7, stride=2, padding=3, bias=False),
                                      nn.BatchNorm2d(c1), nn.ReLU(inplace=True))
            self.pool = nn.MaxPool2d(3, stride=2, padding=1)
            self.layer1, self.layer2, self.layer3, self.layer4 = CifarResNet((2, 2, 2, 2), width=width).stages
        else:
            self.encoder = encoder
            c0, c1, c2, c3, c4 = encoder.channels

        self.decoder4 = LinkNetDecoderBlock(c4, c3)
        self.decoder3 = LinkNetDecoderBlock(c3, c2)
        self.decoder2 = LinkNetDecoderBlock(c2, c1)
        self.decoder1 = LinkNetDecoderBlock(c1, c0)
        head = max(8, c1 // 4)
        self.full_resolution = conv_bn_relu(in_channels, head)
        self.upsample = nn.Sequential(nn.ConvTranspose2d(c0, head, 2, stride=2, bias=False),
                                      nn.BatchNorm2d(head), nn.ReLU(inplace=True))
        self.classifier = nn.Sequential(conv_bn_relu(2 * head, head), nn.Conv2d(head, num_classes, 1))

    @property
    def output_layer(self) -> nn.Conv2d:
        return self.classifier[-1]

    def encode(self, x: torch.Tensor) -> list[torch.Tensor]:
        """The encoder's features at strides 2, 4, 8, 16 and 32."""
        if hasattr(self, "encoder"):
            return self.encoder(x)
        stem = self.stem(x)
        e1 = self.layer1(self.pool(stem))
        e2 = self.layer2(e1)
        e3 = self.layer3(e2)
        return [stem, e1, e2, e3, self.layer4(e3)]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        check_input_size(x)
        stem, e1, e2, e3, e4 = self.encode(x)  # 1/2 .. 1/32
        d3 = self.decoder4(e4) + e3
        d2 = self.decoder3(d3) + e2
        d1 = self.decoder2(d2) + e1
        half = self.decoder1(d1) + stem
        features = torch.cat([self.upsample(half), self.full_resolution(x)], dim=1)
        return self.classifier(features)


class PyramidSegmenter(FeaturePyramid):
    """(N, 3, H, W) in [0, 1]-normalised pixels -> (N, num_classes, H, W) logits, H and W multiples of 32.

    The detector's backbone and neck (raycv/models/detection.py) to stride 4, the stride-2 features added back
    (the pyramid's last level, as in Panoptic FPN's semantic head, which stops at stride 4), one convolution,
    and the logits upsampled bilinearly. No full-resolution layer: on one CPU core at 256 px it trains 1.3 times
    the photos per second of the UNet at the same width (x0.5), and at x0.25 3.3 times the UNet x0.5's; and a
    stride-2 map upsampled bilinearly still holds object outlines to within a pixel (ground truth pooled to
    stride 2 and back keeps 0.96 IoU on the coin photos; to stride 4, 0.91). Its body's layers are named as
    the detector's.
    """

    def __init__(self, num_classes: int, blocks: tuple[int, ...] = (2, 2, 2, 2), width: float = 0.5,
                 backbone: nn.Module | None = None):
        super().__init__(blocks, width, backbone)
        # Half the neck's width at stride 2, where each channel costs four times what it costs at stride 4.
        channels = self.neck_channels // 2
        self.head = nn.ModuleDict({"fine": nn.Conv2d(self.fine_channels, channels, 1),
                                   "coarse": nn.Conv2d(self.neck_channels, channels, 1),
                                   "refine": conv_bn_relu(channels, channels),
                                   "classifier": nn.Conv2d(channels, num_classes, 1)})

    @property
    def output_layer(self) -> nn.Conv2d:
        return self.head["classifier"]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        check_input_size(x)
        fine, top_down = self.pyramid(x)
        coarse = nn.functional.interpolate(self.head["coarse"](top_down), size=fine.shape[-2:], mode="bilinear",
                                           align_corners=False)
        logits = self.head["classifier"](self.head["refine"](self.head["fine"](fine) + coarse))
        return nn.functional.interpolate(logits, size=x.shape[-2:], mode="bilinear", align_corners=False)
