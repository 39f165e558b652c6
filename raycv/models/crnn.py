"""Text-line networks: the CRNN of textbook chapter 9 (a conv stack, two bidirectional recurrent layers,
per-column character scores for CTC) and a fixed-length captcha reader with one softmax head per
character position (chapter 4), which shares the conv stack.
"""

from __future__ import annotations

import torch
from torch import nn

# The CRNN paper's conv stack (7 convolutions in the book; 6 here: the last 2x2 one only existed to
# collapse a height of 2, which average pooling does without parameters).
CONV_CHANNELS = (64, 128, 256, 256, 512, 512)
# Pooling after each conv: the first two halve both sides, the later ones only the height, so a
# 32-pixel-high line keeps one feature column per 4 input columns: enough time steps for CTC.
CONV_POOLS = ((2, 2), (2, 2), None, (2, 1), None, (2, 1))


def conv_stack(width: float = 1.0, in_channels: int = 3) -> tuple[nn.Sequential, int]:
    """The width-scaled conv stack and its output channels; maps (N, C, H, W) to (N, C', H/16, W/4)."""
    layers: list[nn.Module] = []
    channels = in_channels
    for base, pool in zip(CONV_CHANNELS, CONV_POOLS, strict=False):
        out = max(8, int(base * width))
        layers += [nn.Conv2d(channels, out, 3, padding=1, bias=False), nn.BatchNorm2d(out), nn.ReLU(inplace=True)]
        if pool is not None:
            layers.append(nn.MaxPool2d(pool, pool))
        channels = out
    return nn.Sequential(*layers), channels


class CRNN(nn.Module):
    """Line image (N, 3, H, W) to CTC scores (N, W/4, num_classes + 1); class 0 is the blank.

    The scores are the recurrent layers' read-out plus a linear read-out of the conv columns
    themselves, so the conv stack learns from the first step instead of only through two recurrent
    layers that have not learnt anything yet. CTC training first sits on a plateau where every
    column says blank; in-process on variable captchas (with CTC still scoring the padding columns,
    see raycv/tasks/textrec.py) the CRNN with the shortcut left it after ~400 steps, without it not
    within 625."""

    def __init__(self, num_classes: int, width: float = 1.0, hidden: int | None = None, rnn: str = "lstm"):
        super().__init__()
        self.features, channels = conv_stack(width)
        hidden = hidden or max(32, int(256 * width))
        recurrent = {"lstm": nn.LSTM, "gru": nn.GRU}[rnn]
        self.rnn = recurrent(channels, hidden, num_layers=2, bidirectional=True, batch_first=True)
        self.classifier = nn.Linear(2 * hidden, num_classes + 1)
        self.shortcut = nn.Linear(channels, num_classes + 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        columns = self.features(x).mean(dim=2).transpose(1, 2)  # (N, T, C): one feature per column
        return self.classifier(self.rnn(columns)[0]) + self.shortcut(columns)


class PositionHeads(nn.Module):
    """Fixed-length text: backbone features pooled over the height into `COLUMNS_PER_CHARACTER` columns
    per character position, then one softmax head per position that sees all columns. Characters of a
    captcha sit at uneven places and overlap; with several columns each, a head can find its character
    wherever it is. One column per position averaged neighbouring characters together: with the
    default captcha config, 0.899 whole-string accuracy on held-out captchas against 0.927 with six.
    Outputs (N, length, num_classes) logits."""

    COLUMNS_PER_CHARACTER = 6

    def __init__(self, backbone: nn.Module, channels: int, length: int, num_classes: int):
        super().__init__()
        self.backbone = backbone
        columns = self.COLUMNS_PER_CHARACTER * length
        self.pool = nn.AdaptiveAvgPool2d((1, columns))
        self.heads = nn.ModuleList(nn.Linear(channels * columns, num_classes) for _ in range(length))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        features = torch.flatten(self.pool(self.backbone(x)), 1)
        return torch.stack([head(features) for head in self.heads], dim=1)
