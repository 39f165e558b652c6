"""Image-compression autoencoders (textbook chapter 8): a ResNet-18 encoder, a quantized latent whose
symbols are entropy-coded, a PixelShuffle decoder, and the AE+GAN variant with a discriminator.

The book's autoencoder keeps a float latent larger than the image. Here the encoder narrows to
`latent_channels` at 1/8 of the resolution (16 channels: a quarter of a symbol per pixel), squashes
each value into [-(levels - 1) / 2, (levels - 1) / 2] and rounds it: the decoder only ever sees
integers, so the bits an entropy coder spends on them are all the image costs. Rounding has no
gradient; training passes the gradient straight through it (Bengio et al. 2013; Theis et al. 2017).
The model keeps a running histogram of its symbols per channel (a buffer, saved with the weights):
the probability model the range coder uses.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.func import functional_call

from raycv.models.cifar import CifarResNet
from raycv.models.common import ResidualBlock, grey_images, keep_grey

DOWNSAMPLE = 8  # the encoder's stride: inputs are padded to multiples of it
HISTOGRAM_DECAY = 0.99  # per training step: the symbol statistics follow the encoder as it learns


class Encoder(nn.Module):
    """ResNet-18's first three stages (torchvision BasicBlocks, at `width`) behind a stride-2 stem:
    (N, 3, H, W) -> (N, latent_channels, H / 8, W / 8), unbounded."""

    def __init__(self, width: float, latent_channels: int):
        super().__init__()
        resnet = CifarResNet((2, 2, 2, 2), width=width)
        first = resnet.stem[0].out_channels
        self.stem = nn.Sequential(nn.Conv2d(3, first, 3, stride=2, padding=1, bias=False), nn.BatchNorm2d(first),
                                  nn.ReLU(inplace=True))
        self.stages = resnet.stages[:3]  # /2, /4, /8
        self.head = nn.Conv2d(self.stages[-1][-1].conv2.out_channels, latent_channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.stages(self.stem(x)))


class Decoder(nn.Module):
    """(N, latent_channels, h, w) symbols -> (N, 3, 8h, 8w) in [0, 1]: three rounds of a residual block
    and a x2 sub-pixel convolution."""

    def __init__(self, width: float, latent_channels: int):
        super().__init__()
        widths = [max(8, int(w * width)) for w in (256, 128, 64, 64)]
        layers: list[nn.Module] = [nn.Conv2d(latent_channels, widths[0], 3, padding=1), nn.ReLU(inplace=True)]
        for inner, outer in zip(widths, widths[1:], strict=False):
            layers += [ResidualBlock(inner), nn.Conv2d(inner, outer * 4, 3, padding=1), nn.PixelShuffle(2),
                       nn.ReLU(inplace=True)]
        layers += [ResidualBlock(widths[-1]), nn.Conv2d(widths[-1], 3, 3, padding=1)]
        self.body = nn.Sequential(*layers)

    def forward(self, symbols: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(self.body(symbols))


class QuantizedAutoencoder(nn.Module):
    """forward(x in [0, 1]) -> {"reconstruction", "symbols" (integers, as floats), "probabilities"
    (latent_channels, levels): the per-channel symbol model for the range coder, "grey" (N,) bool: the
    images decoded as grey (common.keep_grey), a flag their codes carry}."""

    def __init__(self, width: float = 0.5, latent_channels: int = 16, levels: int = 5):
        super().__init__()
        if levels < 2 or levels % 2 == 0:
            raise ValueError(f"levels={levels}: expected an odd number >= 3, so that 0 is a symbol")
        self.encoder = Encoder(width, latent_channels)
        self.decoder = Decoder(width, latent_channels)
        self.half_range = (levels - 1) // 2
        self.register_buffer("symbol_counts", torch.ones(latent_channels, levels))

    def quantize(self, latent: torch.Tensor) -> torch.Tensor:
        bounded = self.half_range * torch.tanh(latent)
        return bounded + (torch.round(bounded) - bounded).detach()  # round forward, identity backward

    def probabilities(self) -> torch.Tensor:
        return self.symbol_counts / self.symbol_counts.sum(dim=1, keepdim=True)

    @torch.no_grad()
    def count_symbols(self, symbols: torch.Tensor) -> None:
        indices = (symbols.detach().round().long() + self.half_range).transpose(0, 1).flatten(1)  # C, N*h*w
        histogram = torch.zeros_like(self.symbol_counts).scatter_add_(1, indices,
                                                                      torch.ones_like(indices, dtype=torch.float))
        share = histogram / histogram.sum(dim=1, keepdim=True)
        # A floor keeps every symbol codable, however rare it has become.
        self.symbol_counts.mul_(HISTOGRAM_DECAY).add_((1 - HISTOGRAM_DECAY) * share).clamp_(min=1e-4)

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        symbols = self.quantize(self.encoder(x).float())
        if self.training:
            self.count_symbols(symbols)
        grey = grey_images(x)
        return {"reconstruction": keep_grey(self.decoder(symbols), grey), "symbols": symbols,
                "probabilities": self.probabilities(), "grey": grey}


class PatchDiscriminator(nn.Module):
    """DCGAN's discriminator without batch norm, fully convolutional: (N, 3, H, W) -> a real/fake logit
    per patch and the features of every layer (for the feature-matching loss)."""

    def __init__(self, width: float = 0.5, layers: int = 4):
        super().__init__()
        blocks, channels = [], 3
        for index in range(layers):
            out = max(8, int(64 * width * 2 ** index))
            blocks.append(nn.Sequential(nn.Conv2d(channels, out, 4, stride=2, padding=1),
                                        nn.LeakyReLU(0.2, inplace=True)))
            channels = out
        self.blocks = nn.ModuleList(blocks)
        self.logit = nn.Conv2d(channels, 1, 3, padding=1)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        features = []
        for block in self.blocks:
            x = block(x)
            features.append(x)
        return self.logit(x), features


def frozen_call(module: nn.Module, *args):
    """`module(*args)` with its parameters detached: gradients reach the inputs, never the module. This
    is how one backward pass trains a generator against a discriminator without training the
    discriminator to help it."""
    detached = {name: value.detach() for name, value in [*module.named_parameters(), *module.named_buffers()]}
    return functional_call(module, detached, args)


def adversarial_terms(discriminator: nn.Module, real: torch.Tensor, fake: torch.Tensor) -> dict[str, torch.Tensor]:
    """Non-saturating GAN losses for one simultaneous update of both players, in one backward pass:

        discriminator   softplus(-D(real)) + softplus(D(fake)), fake detached: trains D only
        adversarial     softplus(-D(fake)) through a frozen D: trains the generator only
        feature_match   L1 between D's features of fake and of real (the book's loss), frozen D
    """
    real_logits, real_features = discriminator(real)
    fake_logits, _ = discriminator(fake.detach())
    frozen_logits, frozen_features = frozen_call(discriminator, fake)
    matching = torch.stack([nn.functional.l1_loss(fake_feature, real_feature.detach())
                            for fake_feature, real_feature in zip(frozen_features, real_features, strict=False)]).mean()
    return {"discriminator": nn.functional.softplus(-real_logits).mean() + nn.functional.softplus(fake_logits).mean(),
            "adversarial": nn.functional.softplus(-frozen_logits).mean(), "feature_matching": matching}


class AdversarialAutoencoder(nn.Module):
    """The AE+GAN of chapter 8: the same autoencoder, and a discriminator that judges its
    reconstructions. Training forward passes add the adversarial_terms; evaluation is the autoencoder's."""

    def __init__(self, width: float = 0.5, latent_channels: int = 16, levels: int = 5):
        super().__init__()
        self.autoencoder = QuantizedAutoencoder(width, latent_channels, levels)
        self.discriminator = PatchDiscriminator(width)

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        outputs = self.autoencoder(x)
        if self.training:
            outputs.update(adversarial_terms(self.discriminator, x, outputs["reconstruction"]))
        return outputs
