"""A learned image codec trained for rate and distortion together: Ballé et al. 2018's factorized-prior
model ("Variational image compression with a scale hyperprior", section 2 and appendix 6.1).

    encoder     four 5x5 stride-2 convolutions with GDN between them: (N, 3, H, W) -> (N, M, H/16, W/16)
    latent      rounded to integers; training adds uniform noise instead for the rate (the noisy latent's
                density is the rounded one's probability mass) and rounds straight-through for the decoder
    prior       a learned density per latent channel (FactorizedDensity), the range coder's model
    decoder     the mirror with inverse GDN

The loss (raycv.tasks.compress_ae) is rd_lambda x 255^2 x MSE + estimated bits per pixel, so one lambda
gives one rate point.

Encoder-side refinement (refine_steps > 0, evaluation only): the encoder's latent is a first guess;
Adam steps on each image's own latent lower that image's rate-distortion loss before it is coded
(Campos et al. 2019, "Content adaptive optimization for neural image compression"). The decoder, the
prior and so the bitstream format are unchanged: any decoder of this model reads the result.

Written here rather than taken from CompressAI, whose wheels pin numpy < 2 (this stack is on numpy 2);
the pieces follow CompressAI's layer for layer (GDN, EntropyBottleneck), and the range coder is
constriction's, as for the book's autoencoder.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from raycv.models.common import grey_images, keep_grey

STRIDE = 16  # four stride-2 layers
# The coded symbols are the latent rounded and clamped to -SYMBOL_BOUND..SYMBOL_BOUND; the prior's tails
# beyond are folded into the end symbols, so clamping never makes a symbol uncodable.
SYMBOL_BOUND = 32
LIKELIHOOD_FLOOR = 1e-9  # a symbol's estimated probability never reaches 0 (infinite bits, no gradient)
# Refinement: Adam on the latent against the training loss's own proxy (uniform noise for the rate, the decoder on
# the continuous latent), the coded loss (rounded) checked every REFINE_CHECK steps. On coins at lambda 0.0025 a
# straight-through objective (rounded latent) rose at every step size tried, and Adam at 0.05 on the proxy too;
# the proxy at 0.01-0.02 lowered the coded loss by 1 % in 50 steps and then stopped.
REFINE_LR, REFINE_CHECK = 0.02, 10


class GDN(nn.Module):
    """Generalized divisive normalization (Ballé et al. 2016): y_i = x_i / sqrt(beta_i + sum_j gamma_ij x_j^2),
    or x_i * sqrt(...) for the inverse (the decoder's). beta and gamma are kept positive by storing their
    square roots, CompressAI's reparametrisation without its lower-bound gradient trick."""

    def __init__(self, channels: int, inverse: bool = False):
        super().__init__()
        self.inverse = inverse
        self.beta_root = nn.Parameter(torch.ones(channels))
        self.gamma_root = nn.Parameter(math.sqrt(0.1) * torch.eye(channels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        beta = self.beta_root.pow(2) + 1e-6
        gamma = self.gamma_root.pow(2)[:, :, None, None]
        norm = nn.functional.conv2d(x.pow(2), gamma, beta)
        return x * norm.sqrt() if self.inverse else x * norm.rsqrt()


class FactorizedDensity(nn.Module):
    """A learned univariate density per channel (Ballé et al. 2018, appendix 6.1): its cumulative is a
    small monotone network c(x) = sigmoid(f_K(...f_1(x))), each f a positive matrix, a bias and a
    tanh "factor" nonlinearity; the probability of an integer symbol s is c(s + 1/2) - c(s - 1/2)."""

    def __init__(self, channels: int, filters: tuple[int, ...] = (3, 3, 3), init_scale: float = 10.0):
        super().__init__()
        dims = (1, *filters, 1)
        scale = init_scale ** (1 / (len(filters) + 1))
        self.matrices, self.biases, self.factors = nn.ParameterList(), nn.ParameterList(), nn.ParameterList()
        for index in range(len(filters) + 1):
            start = math.log(math.expm1(1 / scale / dims[index + 1]))  # softplus(start) = that
            self.matrices.append(nn.Parameter(torch.full((channels, dims[index + 1], dims[index]), start)))
            self.biases.append(nn.Parameter(torch.rand(channels, dims[index + 1], 1) - 0.5))
            if index < len(filters):
                self.factors.append(nn.Parameter(torch.zeros(channels, dims[index + 1], 1)))

    def cumulative_logits(self, values: torch.Tensor) -> torch.Tensor:
        """(C, 1, K) values -> (C, 1, K) logits of the cumulative at each."""
        for index, (matrix, bias) in enumerate(zip(self.matrices, self.biases, strict=True)):
            values = nn.functional.softplus(matrix) @ values + bias
            if index < len(self.factors):
                values = values + torch.tanh(self.factors[index]) * torch.tanh(values)
        return values

    def likelihood(self, latent: torch.Tensor) -> torch.Tensor:
        """The probability mass of the unit interval around each value of an (N, C, H, W) latent."""
        batch, channels, height, width = latent.shape
        values = latent.transpose(0, 1).reshape(channels, 1, -1)
        lower, upper = self.cumulative_logits(values - 0.5), self.cumulative_logits(values + 0.5)
        # Subtract on the side of the median where the sigmoids are far from 1, for precision in the tails.
        sign = -torch.sign(lower + upper).detach()
        mass = (torch.sigmoid(sign * upper) - torch.sigmoid(sign * lower)).abs().clamp(min=LIKELIHOOD_FLOOR)
        return mass.reshape(channels, batch, height, width).transpose(0, 1)

    def symbol_probabilities(self, bound: int) -> torch.Tensor:
        """(C, 2 bound + 1): each channel's probability of the symbols -bound..bound, the tails beyond
        added to the end symbols (where clamping puts them), normalised."""
        channels = self.matrices[0].shape[0]
        edges = torch.arange(-bound - 0.5, bound + 1.0, device=self.matrices[0].device)
        cumulative = torch.sigmoid(self.cumulative_logits(edges.expand(channels, 1, -1)))[:, 0]  # C, 2 bound + 2
        cumulative = torch.cat([torch.zeros_like(cumulative[:, :1]), cumulative[:, 1:-1],
                                torch.ones_like(cumulative[:, :1])], dim=1)
        mass = cumulative.diff(dim=1).clamp(min=LIKELIHOOD_FLOOR)
        return mass / mass.sum(dim=1, keepdim=True)


def analysis(channels: int, latent_channels: int) -> nn.Sequential:
    layers: list[nn.Module] = []
    for index, (inner, outer) in enumerate([(3, channels), (channels, channels), (channels, channels),
                                            (channels, latent_channels)]):
        layers.append(nn.Conv2d(inner, outer, 5, stride=2, padding=2))
        if index < 3:
            layers.append(GDN(outer))
    return nn.Sequential(*layers)


def synthesis(channels: int, latent_channels: int) -> nn.Sequential:
    layers: list[nn.Module] = []
    for index, (inner, outer) in enumerate([(latent_channels, channels), (channels, channels),
                                            (channels, channels), (channels, 3)]):
        layers.append(nn.ConvTranspose2d(inner, outer, 5, stride=2, padding=2, output_padding=1))
        if index < 3:
            layers.append(GDN(outer, inverse=True))
    return nn.Sequential(*layers)


class FactorizedPriorCodec(nn.Module):
    """forward(x in [0, 1]) -> {"reconstruction", "symbols" (integers, as floats), "probabilities" (M, 2
    SYMBOL_BOUND + 1) for the range coder, "bits" (N,) estimated bits per image: the rate term, "grey" (N,)
    bool: the images decoded as grey (common.keep_grey), a flag their codes carry}. The paper's N = 128,
    M = 192 at width 1."""

    def __init__(self, width: float = 0.5, rd_lambda: float = 0.01, refine_steps: int = 0):
        super().__init__()
        channels, latent_channels = max(8, int(128 * width)), max(8, int(192 * width))
        self.encoder = analysis(channels, latent_channels)
        self.synthesis = synthesis(channels, latent_channels)
        self.prior = FactorizedDensity(latent_channels)
        self.rd_lambda, self.refine_steps = rd_lambda, refine_steps

    def per_image_loss(self, images: torch.Tensor, grey: torch.Tensor, decoded: torch.Tensor,
                       rate_latent: torch.Tensor) -> torch.Tensor:
        """(N,) rd_lambda x 255^2 x MSE of the `decoded` latent (the `grey` images decoded as grey, as coded) +
        bits per pixel of `rate_latent` under the prior."""
        squared_error = (keep_grey(self.decoder(decoded), grey) - images).pow(2).mean(dim=(1, 2, 3))
        bits = -torch.log2(self.prior.likelihood(rate_latent)).sum(dim=(1, 2, 3))
        return self.rd_lambda * 255 ** 2 * squared_error + bits / (images.shape[-2] * images.shape[-1])

    def coded_loss(self, images: torch.Tensor, grey: torch.Tensor, latent: torch.Tensor) -> torch.Tensor:
        """(N,) each image's rate-distortion loss when `latent` is coded: rounded for the decoder and the prior."""
        symbols = torch.round(latent).clamp(-SYMBOL_BOUND, SYMBOL_BOUND)
        return self.per_image_loss(images, grey, symbols, symbols)

    def refined_latent(self, images: torch.Tensor, grey: torch.Tensor, latent: torch.Tensor) -> torch.Tensor:
        """`latent` after refine_steps Adam steps on the training loss (noise for the rate, seeded so coding
        is deterministic), keeping per image the latent of the lowest coded loss checked (so refinement never
        codes an image worse than the encoder did). Gradients reach the latent only."""
        noise = torch.Generator(device=latent.device).manual_seed(0)
        with torch.inference_mode(False), torch.enable_grad():
            images, grey, best = images.clone(), grey.clone(), latent.clone()  # out of inference mode
            variable = best.clone().requires_grad_(True)
            optimizer = torch.optim.Adam([variable], lr=REFINE_LR)
            with torch.no_grad():
                best_loss = self.coded_loss(images, grey, best)
            for step in range(1, self.refine_steps + 1):
                noisy = variable + torch.empty_like(variable).uniform_(-0.5, 0.5, generator=noise)
                losses = self.per_image_loss(images, grey, variable, noisy)
                (variable.grad,) = torch.autograd.grad(losses.sum(), [variable])
                optimizer.step()
                if step % REFINE_CHECK == 0 or step == self.refine_steps:
                    with torch.no_grad():
                        coded = self.coded_loss(images, grey, variable)
                        better = coded < best_loss
                        best[better], best_loss[better] = variable[better], coded[better]
        return best

    def decoder(self, symbols: torch.Tensor) -> torch.Tensor:
        return self.synthesis(symbols)

    def probabilities(self) -> torch.Tensor:
        return self.prior.symbol_probabilities(SYMBOL_BOUND)

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        latent, grey = self.encoder(x).float(), grey_images(x)
        if self.refine_steps and not self.training:
            latent = self.refined_latent(x, grey, latent)
        rounded = torch.round(latent).clamp(-SYMBOL_BOUND, SYMBOL_BOUND)
        if self.training:
            rate_latent = latent + torch.empty_like(latent).uniform_(-0.5, 0.5)
            symbols = latent + (rounded - latent).detach()  # round forward, identity backward
        else:
            rate_latent = symbols = rounded
        bits = -torch.log2(self.prior.likelihood(rate_latent)).sum(dim=(1, 2, 3))
        reconstruction = keep_grey(self.decoder(symbols), grey)
        if not self.training:
            reconstruction = reconstruction.clamp(0, 1)
        return {"reconstruction": reconstruction, "symbols": symbols, "probabilities": self.probabilities(),
                "bits": bits, "grey": grey}
