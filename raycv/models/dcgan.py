"""DCGAN (Radford et al. 2016) for 64x64 images, as in the textbook's chapter 8, trained by the generic
loop: one module holds both players, and training forward passes take turns: the discriminator's
loss on one step, the generator's on the next, so each player always answers the other's latest
weights (the paper's alternating updates). The player sitting a turn out gets no gradient at all
(None, not zero), so AdamW leaves it alone; under DDP the task asks for find_unused_parameters,
which keeps globally unused gradients None too.

The discriminator is spectrally normalised (Miyato et al. 2018) instead of batch-normalised. Measured
in-process on the procedural shapes (x0.25, 1,500 updates of each player): batch norm with one
simultaneous update collapsed to one sample (SWD 573); spectral norm with simultaneous updates
reached 469 with the samples still near-identical; spectral norm with alternating updates 159, with
varied samples (the real-vs-real floor is about 80-100).
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn.utils.parametrizations import spectral_norm

from raycv.models.autoencoder import frozen_call

NOISE_DIM = 100


def dcgan_init(module: nn.Module) -> None:
    """The paper's initialisation for the generator: N(0, 0.02) convolutions, N(1, 0.02) batch-norm scales."""
    if isinstance(module, nn.ConvTranspose2d):
        nn.init.normal_(module.weight, 0.0, 0.02)
    elif isinstance(module, nn.BatchNorm2d):
        nn.init.normal_(module.weight, 1.0, 0.02)
        nn.init.zeros_(module.bias)


class Generator(nn.Module):
    """(N, 100, 1, 1) noise -> (N, 3, 64, 64) in [0, 1]: transposed convolutions 4 -> 8 -> ... -> 64."""

    def __init__(self, width: float = 0.5):
        super().__init__()
        base = max(8, int(64 * width))
        widths = [base * 8, base * 4, base * 2, base]
        layers: list[nn.Module] = [nn.ConvTranspose2d(NOISE_DIM, widths[0], 4, 1, 0, bias=False),
                                   nn.BatchNorm2d(widths[0]), nn.ReLU(inplace=True)]
        for inner, outer in zip(widths, widths[1:], strict=False):
            layers += [nn.ConvTranspose2d(inner, outer, 4, 2, 1, bias=False), nn.BatchNorm2d(outer),
                       nn.ReLU(inplace=True)]
        layers += [nn.ConvTranspose2d(widths[-1], 3, 4, 2, 1, bias=False), nn.Sigmoid()]
        self.body = nn.Sequential(*layers)

    def forward(self, noise: torch.Tensor) -> torch.Tensor:
        return self.body(noise)


class Discriminator(nn.Module):
    """(N, 3, 64, 64) -> (N,) real/fake logits: spectrally normalised strided convolutions, leaky ReLU
    (PyTorch's default initialisation: spectral norm rescales the weights anyway)."""

    def __init__(self, width: float = 0.5):
        super().__init__()
        base = max(8, int(64 * width))
        layers: list[nn.Module] = [spectral_norm(nn.Conv2d(3, base, 4, 2, 1)), nn.LeakyReLU(0.2, inplace=True)]
        for inner in (base, base * 2, base * 4):
            layers += [spectral_norm(nn.Conv2d(inner, inner * 2, 4, 2, 1)), nn.LeakyReLU(0.2, inplace=True)]
        layers.append(spectral_norm(nn.Conv2d(base * 8, 1, 4, 1, 0)))
        self.body = nn.Sequential(*layers)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.body(images * 2 - 1).flatten()


class DCGAN(nn.Module):
    """Training mode: forward(real images in [0, 1]) -> {"loss", "player"}: the non-saturating loss of
    the player whose turn it is ("discriminator" first, then "generator", and so on). Eval mode:
    forward(noise) -> images."""

    PLAYERS = ("discriminator", "generator")

    def __init__(self, width: float = 0.5):
        super().__init__()
        self.generator = Generator(width)
        self.generator.apply(dcgan_init)
        self.discriminator = Discriminator(width)
        self.turns = 0  # training forward passes so far; not saved: a resumed run just starts on D

    def forward(self, x: torch.Tensor):
        if not self.training:
            return self.generator(x)
        player = self.PLAYERS[self.turns % 2]
        self.turns += 1
        noise = torch.randn(x.shape[0], NOISE_DIM, 1, 1, device=x.device)
        softplus = nn.functional.softplus
        if player == "discriminator":
            with torch.no_grad():
                fake = self.generator(noise)
            loss = softplus(-self.discriminator(x)).mean() + softplus(self.discriminator(fake)).mean()
        else:
            loss = softplus(-frozen_call(self.discriminator, self.generator(noise))).mean()
        return {"loss": loss, "player": player}
