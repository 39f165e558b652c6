"""DCGAN (Radford et al. 2016) for 64x64 images, as in the textbook's chapter 8, trained by the generic
loop: one module holds both players and a training forward pass returns both losses, built so that
one backward pass trains each player on its own loss only (models.autoencoder.frozen_call).
"""

from __future__ import annotations

import torch
from torch import nn

from raycv.models.autoencoder import frozen_call

NOISE_DIM = 100


def dcgan_init(module: nn.Module) -> None:
    """The paper's initialisation: N(0, 0.02) convolutions, N(1, 0.02) batch-norm scales."""
    if isinstance(module, (nn.Conv2d, nn.ConvTranspose2d)):
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
        for inner, outer in zip(widths, widths[1:]):
            layers += [nn.ConvTranspose2d(inner, outer, 4, 2, 1, bias=False), nn.BatchNorm2d(outer), nn.ReLU(inplace=True)]
        layers += [nn.ConvTranspose2d(widths[-1], 3, 4, 2, 1, bias=False), nn.Sigmoid()]
        self.body = nn.Sequential(*layers)

    def forward(self, noise: torch.Tensor) -> torch.Tensor:
        return self.body(noise)


class Discriminator(nn.Module):
    """(N, 3, 64, 64) -> (N,) real/fake logits: strided convolutions, batch norm, leaky ReLU."""

    def __init__(self, width: float = 0.5):
        super().__init__()
        base = max(8, int(64 * width))
        layers: list[nn.Module] = [nn.Conv2d(3, base, 4, 2, 1, bias=False), nn.LeakyReLU(0.2, inplace=True)]
        for inner in (base, base * 2, base * 4):
            layers += [nn.Conv2d(inner, inner * 2, 4, 2, 1, bias=False), nn.BatchNorm2d(inner * 2),
                       nn.LeakyReLU(0.2, inplace=True)]
        layers.append(nn.Conv2d(base * 8, 1, 4, 1, 0, bias=False))
        self.body = nn.Sequential(*layers)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.body(images * 2 - 1).flatten()


class DCGAN(nn.Module):
    """Training mode: forward(real images in [0, 1]) -> {"discriminator", "generator", "fake"}: the
    non-saturating losses of one simultaneous update. Eval mode: forward(noise) -> images."""

    def __init__(self, width: float = 0.5):
        super().__init__()
        self.generator = Generator(width)
        self.discriminator = Discriminator(width)
        self.apply(dcgan_init)

    def forward(self, x: torch.Tensor):
        if not self.training:
            return self.generator(x)
        noise = torch.randn(x.shape[0], NOISE_DIM, 1, 1, device=x.device)
        fake = self.generator(noise)
        softplus = nn.functional.softplus
        discriminator = softplus(-self.discriminator(x)).mean() + softplus(self.discriminator(fake.detach())).mean()
        generator = softplus(-frozen_call(self.discriminator, fake)).mean()
        return {"discriminator": discriminator, "generator": generator, "fake": fake}
