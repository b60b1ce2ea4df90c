"""The one interface every bottleneck shares.

A quantizer maps encoder features ``z`` of shape ``(..., dim)`` (channels last, any leading shape) to
quantized features of the same shape, discrete ``indices`` of shape ``(...)`` (``None`` for continuous
bottlenecks), a dict of scalar losses that the trainer adds (already weighted) and a dict of detached
statistics for logging.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable
from dataclasses import dataclass, field, replace

import torch
from torch import Tensor, nn


@dataclass
class QuantizerOutput:
    """What every quantizer's ``forward`` returns.

    Attributes:
        quantized: ``(..., dim)`` features after the bottleneck, carrying straight-through gradients.
        indices: ``(...)`` long tensor of token ids, or ``None`` for continuous bottlenecks.
        losses: scalar losses, already multiplied by their weights; the trainer sums them.
        stats: detached scalars for logging (usage, perplexity, ...).
    """

    quantized: Tensor
    indices: Tensor | None
    losses: dict[str, Tensor] = field(default_factory=dict)
    stats: dict[str, Tensor] = field(default_factory=dict)


class Quantizer(nn.Module):
    """Base class: subclasses implement ``forward``, ``indices_to_codes`` and report their sizes.

    Every quantizer's constructor takes ``dim``, the size of the features entering it. Built, it says:

    Attributes:
        in_dim: size of the features ``forward`` reads (``z``: ``(..., in_dim)``; the constructor's ``dim``).
        out_dim: size of the features it returns (``quantized``: ``(..., out_dim)``; what the decoder reads).
            Equal to ``in_dim`` except for bottlenecks that change the size (a Gaussian's mean and log-variance
            in, the latent out).
        codebook_size: distinct ids per token, ``None`` for continuous bottlenecks.
        codebook_parts: names of the slices of a code vector a caller may select (``"semantic"``, ``"pixel"`` for dual
            codebooks; empty for one codebook). See :meth:`select`.
    """

    in_dim: int
    out_dim: int
    codebook_size: int | None = None
    codebook_parts: tuple[str, ...] = ()

    @property
    def decoder_dim(self) -> int:
        """Size of what the decoder reads of ``quantized`` (see :meth:`decoder_input`)."""
        return self.out_dim

    def decoder_input(self, quantized: Tensor) -> Tensor:
        """``(..., out_dim)`` -> ``(..., decoder_dim)``: the part of the code vector the decoder reads."""
        return quantized

    def select(self, codes: Tensor, which: str) -> Tensor:
        """``(..., out_dim)`` code vectors -> the slice named ``which`` (one of :attr:`codebook_parts`)."""
        raise ValueError(f"{type(self).__name__} has one codebook; which={which!r} selects nothing "
                         f"(dual-codebook quantizers have parts such as 'semantic' and 'pixel')")

    @property
    def bits_per_token(self) -> float:
        """Bits one token carries without entropy coding (``log2(codebook_size)``), 0 when continuous."""
        if self.codebook_size is None:
            return 0.0
        return math.log2(self.codebook_size)

    def forward(self, z: Tensor) -> QuantizerOutput:  # pragma: no cover - interface
        raise NotImplementedError

    def indices_to_codes(self, indices: Tensor) -> Tensor:
        """``(...)`` long indices -> ``(..., dim)`` quantized features, as ``forward`` would return them."""
        raise NotImplementedError(f"{type(self).__name__} is continuous and has no indices")


Forward = Callable[[Quantizer, Tensor], QuantizerOutput]


def fp32_forward(forward: Forward) -> Forward:
    """Runs a quantizer's ``forward`` in fp32 under any autocast, and returns ``quantized`` in the input's dtype.

    Distances, roundings and entropies in bf16 pick wrong codes and lose the small differences the losses
    measure, so quantizer maths always runs in fp32 while the networks around it may run in bf16.
    """

    @functools.wraps(forward)
    def wrapper(self: Quantizer, z: Tensor) -> QuantizerOutput:
        with torch.autocast(device_type=z.device.type, enabled=False):
            out = forward(self, z.float())
        return replace(out, quantized=out.quantized.to(z.dtype))

    return wrapper
