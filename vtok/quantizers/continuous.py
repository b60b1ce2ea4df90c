"""Continuous bottlenecks: a diagonal Gaussian with KL (SD-VAE style) and a plain one with optional noise.

Both return ``indices=None``; tokens are the latents themselves.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from .base import Quantizer, QuantizerOutput, fp32_forward
from .registry import QUANTIZERS


@QUANTIZERS.register("gaussian")
class GaussianBottleneck(Quantizer):
    """Splits ``2 * latent_dim`` input channels into mean and log-variance; samples while training.

    Args:
        dim: input feature size (``2 * latent_dim``).
        latent_dim: size of the latent; ``dim // 2`` when omitted.
        kl_weight: weight of ``KL(N(mu, sigma) || N(0, 1))`` (mean over elements; LDM uses about 1e-6 on sums).
        sample: sample in training (``False``: use the mean, i.e. a plain autoencoder with a KL prior).
    """

    def __init__(self, dim: int, latent_dim: int | None = None, kl_weight: float = 1e-6, sample: bool = True) -> None:
        super().__init__()
        self.latent_dim = latent_dim or dim // 2
        self.in_dim, self.out_dim = dim, self.latent_dim
        self.project_in = nn.Linear(dim, 2 * self.latent_dim) if dim != 2 * self.latent_dim else nn.Identity()
        self.kl_weight, self.sample = kl_weight, sample

    @fp32_forward
    def forward(self, z: Tensor) -> QuantizerOutput:
        """``(..., dim)`` -> latents ``(..., latent_dim)``."""
        mean, logvar = self.project_in(z).chunk(2, dim=-1)
        logvar = logvar.clamp(-30.0, 20.0)
        latent = mean + torch.randn_like(mean) * (0.5 * logvar).exp() if self.training and self.sample else mean
        kl = 0.5 * (mean.pow(2) + logvar.exp() - 1.0 - logvar).mean()
        losses = {"kl": self.kl_weight * kl} if self.training else {}
        stats = {"kl": kl.detach(), "latent_std": mean.detach().std()}
        return QuantizerOutput(latent, None, losses, stats)


@QUANTIZERS.register("continuous")
class ContinuousBottleneck(Quantizer):
    """Identity (or a linear projection to ``latent_dim``), with optional Gaussian noise while training.

    Args:
        dim: input feature size.
        latent_dim: latent size (a linear projection when it differs from ``dim``).
        noise_std: standard deviation of the noise added in training (0: none).
        normalize: layer-normalise the latents (without affine), as ViT autoencoders often do.
    """

    def __init__(self, dim: int, latent_dim: int | None = None, noise_std: float = 0.0,
                 normalize: bool = False) -> None:
        super().__init__()
        self.in_dim, self.out_dim = dim, latent_dim or dim
        self.project_in = nn.Linear(dim, self.out_dim) if self.out_dim != dim else nn.Identity()
        self.noise_std, self.normalize = noise_std, normalize

    def forward(self, z: Tensor) -> QuantizerOutput:
        latent = self.project_in(z)
        if self.normalize:
            latent = nn.functional.layer_norm(latent, latent.shape[-1:])
        if self.training and self.noise_std > 0:
            latent = latent + self.noise_std * torch.randn_like(latent)
        return QuantizerOutput(latent, None, {}, {"latent_std": latent.detach().float().std()})
