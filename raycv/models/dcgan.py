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

Class-conditional (classes > 0): the generator draws the class it is given through class-conditional
batch norm (a scale and shift per class, de Vries et al. 2017) and the discriminator judges image and
class together by projection (Miyato & Koyama 2018): the pairing those authors trained with spectral
norm. The class travels in the latent tensor, as one channel after the noise, so a conditional
generator is still a function of one tensor (eval, predict, Serve and export need nothing else).
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn.utils.parametrizations import spectral_norm

from raycv.models.autoencoder import frozen_call

NOISE_DIM = 100


def latent_channels(classes: int) -> int:
    """The generator's input channels: the noise, and the class index as one more channel when conditional."""
    return NOISE_DIM + (1 if classes else 0)


def split_latent(latent: torch.Tensor, classes: int) -> tuple[torch.Tensor, torch.Tensor | None]:
    """(noise, class indices or None) from a generator input of latent_channels(classes) channels."""
    if latent.shape[1] != latent_channels(classes):
        raise ValueError(f"latent of {latent.shape[1]} channels: this generator takes {latent_channels(classes)}")
    if not classes:
        return latent, None
    return latent[:, :NOISE_DIM], latent[:, NOISE_DIM, 0, 0].round().long().clamp(0, classes - 1)


def dcgan_init(module: nn.Module) -> None:
    """The paper's initialisation for the generator: N(0, 0.02) convolutions, N(1, 0.02) batch-norm scales."""
    if isinstance(module, nn.ConvTranspose2d):
        nn.init.normal_(module.weight, 0.0, 0.02)
    elif isinstance(module, nn.BatchNorm2d) and module.affine:
        nn.init.normal_(module.weight, 1.0, 0.02)
        nn.init.zeros_(module.bias)
    elif isinstance(module, ClassBatchNorm):
        nn.init.normal_(module.scale.weight, 1.0, 0.02)
        nn.init.zeros_(module.shift.weight)


class ClassBatchNorm(nn.Module):
    """Batch norm whose scale and shift are looked up by class (conditional batch norm)."""

    def __init__(self, channels: int, classes: int):
        super().__init__()
        self.norm = nn.BatchNorm2d(channels, affine=False)
        self.scale = nn.Embedding(classes, channels)
        self.shift = nn.Embedding(classes, channels)

    def forward(self, x: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        return self.norm(x) * self.scale(labels)[:, :, None, None] + self.shift(labels)[:, :, None, None]


class Generator(nn.Module):
    """(N, latent_channels(classes), 1, 1) latent -> (N, 3, 64, 64) in [0, 1]: transposed convolutions
    4 -> 8 -> ... -> 64."""

    def __init__(self, width: float = 0.5, classes: int = 0):
        super().__init__()
        self.classes = classes
        base = max(8, int(64 * width))
        widths = [base * 8, base * 4, base * 2, base]

        def norm(channels: int) -> nn.Module:
            return ClassBatchNorm(channels, classes) if classes else nn.BatchNorm2d(channels)

        layers: list[nn.Module] = [nn.ConvTranspose2d(NOISE_DIM, widths[0], 4, 1, 0, bias=False),
                                   norm(widths[0]), nn.ReLU(inplace=True)]
        for inner, outer in zip(widths, widths[1:], strict=False):
            layers += [nn.ConvTranspose2d(inner, outer, 4, 2, 1, bias=False), norm(outer), nn.ReLU(inplace=True)]
        layers += [nn.ConvTranspose2d(widths[-1], 3, 4, 2, 1, bias=False), nn.Sigmoid()]
        self.body = nn.Sequential(*layers)

    def forward(self, latent: torch.Tensor) -> torch.Tensor:
        x, labels = split_latent(latent, self.classes)
        for layer in self.body:
            x = layer(x, labels) if isinstance(layer, ClassBatchNorm) else layer(x)
        return x


class Discriminator(nn.Module):
    """(N, 3, 64, 64) images [and (N,) classes] -> (N,) real/fake logits: spectrally normalised strided
    convolutions, leaky ReLU (PyTorch's default initialisation: spectral norm rescales the weights
    anyway); when conditional, plus the projection of the pooled features on the class's embedding."""

    def __init__(self, width: float = 0.5, classes: int = 0):
        super().__init__()
        base = max(8, int(64 * width))
        layers: list[nn.Module] = [spectral_norm(nn.Conv2d(3, base, 4, 2, 1)), nn.LeakyReLU(0.2, inplace=True)]
        for inner in (base, base * 2, base * 4):
            layers += [spectral_norm(nn.Conv2d(inner, inner * 2, 4, 2, 1)), nn.LeakyReLU(0.2, inplace=True)]
        layers.append(spectral_norm(nn.Conv2d(base * 8, 1, 4, 1, 0)))
        self.body = nn.Sequential(*layers)
        self.class_embedding = spectral_norm(nn.Embedding(classes, base * 8)) if classes else None

    def forward(self, images: torch.Tensor, labels: torch.Tensor | None = None) -> torch.Tensor:
        features = self.body[:-1](images * 2 - 1)
        logits = self.body[-1](features).flatten()
        if self.class_embedding is None:
            return logits
        return logits + (self.class_embedding(labels) * features.sum(dim=(2, 3))).sum(dim=1)


class DCGAN(nn.Module):
    """Training mode: forward(real images in [0, 1], their classes when conditional) -> {"loss", "player"}:
    the non-saturating loss of the player whose turn it is ("discriminator" first, then "generator", and
    so on); the fakes' classes are drawn uniformly. Eval mode: forward(latent) -> images."""

    PLAYERS = ("discriminator", "generator")

    def __init__(self, width: float = 0.5, classes: int = 0):
        super().__init__()
        self.classes = classes
        self.generator = Generator(width, classes)
        self.generator.apply(dcgan_init)
        self.discriminator = Discriminator(width, classes)
        self.turns = 0  # training forward passes so far; not saved: a resumed run just starts on D

    def forward(self, x: torch.Tensor, labels: torch.Tensor | None = None):
        if not self.training:
            return self.generator(x)
        if self.classes and labels is None:
            raise ValueError("a class-conditional DCGAN trains on images with their classes")
        player = self.PLAYERS[self.turns % 2]
        self.turns += 1
        noise = torch.randn(x.shape[0], NOISE_DIM, 1, 1, device=x.device)
        fake_labels = torch.randint(self.classes, (x.shape[0],), device=x.device) if self.classes else None
        latent = torch.cat([noise, fake_labels.float()[:, None, None, None]], 1) if self.classes else noise
        softplus = nn.functional.softplus
        if player == "discriminator":
            with torch.no_grad():
                fake = self.generator(latent)
            loss = (softplus(-self.discriminator(x, labels)).mean()
                    + softplus(self.discriminator(fake, fake_labels)).mean())
        else:
            loss = softplus(-frozen_call(self.discriminator, self.generator(latent), fake_labels)).mean()
        return {"loss": loss, "player": player}
