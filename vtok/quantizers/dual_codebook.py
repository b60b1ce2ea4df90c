"""Two codebooks over one position: semantic and pixel features (TokenFlow, DualToken).

The features entering are ``[semantic | pixel]`` channels. Each half has its own codebook of ``codebook_size``
codes. With ``shared_index`` (TokenFlow) a position gets *one* id, the code pair minimising
``semantic_weight * d_semantic + pixel_weight * d_pixel``, so the semantic and the pixel code of id ``k`` are
learned together. Without it (DualToken) each half takes its own nearest code and a position's token is the pair
of ids. ``quantized`` is always ``[semantic code | pixel code]``; the decoder reads the part named by
``decode_from``.

What the tokenizer API means for a dual codebook:

* ``indices``: ``(...)`` with ``shared_index`` (one id names both codes), else ``(..., 2)`` (semantic id, pixel id).
* ``vocab_size`` (``codebook_size``): ids per codebook, ``K``.
* ``bits_per_token``: ``log2 K`` with ``shared_index``, else ``2 log2 K`` (a token is the pair).
* ``embed(indices)``: both code vectors, ``[semantic | pixel]``; ``embed(indices, which="semantic" | "pixel")``
  one of them.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from vtok.distributed import all_reduce_sum, broadcast

from .base import Quantizer, QuantizerOutput, fp32_forward
from .registry import QUANTIZERS
from .stats import code_counts, usage_and_perplexity

PARTS = ("semantic", "pixel")
DECODE_FROM = ("pixel", "semantic", "both")


@QUANTIZERS.register("dual")
class DualCodebookQuantizer(Quantizer):
    """Semantic and pixel codebooks of the same size with one shared id (or a pair of ids) per position.

    Args:
        dim: input size, ``semantic_dim + pixel channels``.
        semantic_dim: channels of the semantic half (the first ones).
        codebook_size: codes per codebook.
        shared_index: one id per position chosen on the weighted sum of distances (TokenFlow); else one id per
            codebook (DualToken).
        semantic_weight, pixel_weight: weights of the two distances in the shared choice.
        l2_normalize: codes and features on the unit sphere (cosine distance), per half.
        commitment_weight, codebook_weight: VQ losses, per half.
        restart_threshold, restart_decay: dead-code restart (codes whose running use falls below this fraction of
            uniform use move onto current features; in shared mode both halves of a pair move together).
        decode_from: what the decoder reads: ``pixel`` (TokenFlow), ``semantic`` or ``both`` (DualToken).
    """

    codebook_parts = PARTS

    def __init__(self, dim: int, semantic_dim: int, codebook_size: int, shared_index: bool = True,
                 semantic_weight: float = 1.0, pixel_weight: float = 1.0, l2_normalize: bool = True,
                 commitment_weight: float = 0.25, codebook_weight: float = 1.0, restart_threshold: float = 0.0,
                 restart_decay: float = 0.99, decode_from: str = "pixel") -> None:
        super().__init__()
        if not 0 < semantic_dim < dim:
            raise ValueError(f"semantic_dim={semantic_dim} must lie in 1..{dim - 1} (dim={dim})")
        if decode_from not in DECODE_FROM:
            raise ValueError(f"decode_from={decode_from!r}: use one of {list(DECODE_FROM)}")
        if codebook_size < 1:
            raise ValueError(f"codebook_size={codebook_size} must be at least 1")
        self.in_dim = self.out_dim = dim
        self.semantic_dim, self.pixel_dim = semantic_dim, dim - semantic_dim
        self.codebook_size, self.shared_index = codebook_size, shared_index
        self.weights = (semantic_weight, pixel_weight)
        self.l2_normalize = l2_normalize
        self.commitment_weight, self.codebook_weight = commitment_weight, codebook_weight
        self.restart_threshold, self.restart_decay = restart_threshold, restart_decay
        self.decode_from = decode_from
        self.semantic_codebook = nn.Parameter(self._init_codes(self.semantic_dim))
        self.pixel_codebook = nn.Parameter(self._init_codes(self.pixel_dim))
        self.register_buffer("relative_use", torch.ones(codebook_size))
        self.register_buffer("initialized", torch.tensor(False))

    def _init_codes(self, dim: int) -> Tensor:
        codes = torch.randn(self.codebook_size, dim)
        return F.normalize(codes, dim=-1) if self.l2_normalize else codes * dim**-0.5

    @property
    def bits_per_token(self) -> float:
        return (1 if self.shared_index else 2) * math.log2(self.codebook_size)

    @property
    def decoder_dim(self) -> int:
        return {"pixel": self.pixel_dim, "semantic": self.semantic_dim, "both": self.out_dim}[self.decode_from]

    def decoder_input(self, quantized: Tensor) -> Tensor:
        return quantized if self.decode_from == "both" else self.select(quantized, self.decode_from)

    def select(self, codes: Tensor, which: str) -> Tensor:
        if which == "both":
            return codes
        if which not in PARTS:
            raise ValueError(f"which={which!r}: use one of {[*PARTS, 'both']}")
        return codes[..., : self.semantic_dim] if which == "semantic" else codes[..., self.semantic_dim:]

    def codebooks(self) -> tuple[Tensor, Tensor]:
        """``(K, semantic_dim)`` and ``(K, pixel_dim)`` codes as used for lookup."""
        codes = (self.semantic_codebook, self.pixel_codebook)
        return tuple(F.normalize(c, dim=-1) for c in codes) if self.l2_normalize else codes

    def distances(self, semantic: Tensor, pixel: Tensor) -> tuple[Tensor, Tensor]:
        """``(N, d_s)``, ``(N, d_p)`` lookup features -> squared distances to every code, ``(N, K)`` each."""
        # the direct (not matrix-product) distance: exact, so ties are ties and the choice is reproducible
        return tuple(torch.cdist(z, c, compute_mode="donot_use_mm_for_euclid_dist").pow(2)
                     for z, c in zip((semantic, pixel), self.codebooks()))

    def choose(self, semantic: Tensor, pixel: Tensor) -> Tensor:
        """``(N, 2)`` ids (semantic, pixel); the two columns are equal with ``shared_index`` (ties: lowest id)."""
        d_semantic, d_pixel = self.distances(semantic, pixel)
        if self.shared_index:
            shared = (self.weights[0] * d_semantic + self.weights[1] * d_pixel).argmin(1)
            return torch.stack([shared, shared], 1)
        return torch.stack([d_semantic.argmin(1), d_pixel.argmin(1)], 1)

    @fp32_forward
    def forward(self, z: Tensor) -> QuantizerOutput:
        """``(..., dim)`` -> quantized ``(..., dim)``, indices ``(...)`` (shared) or ``(..., 2)``."""
        flat = z.reshape(-1, self.in_dim)
        halves = [flat[:, : self.semantic_dim], flat[:, self.semantic_dim:]]
        if self.l2_normalize:
            halves = [F.normalize(h, dim=-1) for h in halves]
        if self.training and not bool(self.initialized):
            self._place_codes(torch.ones(self.codebook_size, dtype=torch.bool, device=flat.device), halves)
            self.initialized.fill_(True)
        ids = self.choose(*(h.detach() for h in halves))
        codebooks = self.codebooks()
        chosen = [codebooks[i][ids[:, i]] for i in range(2)]
        losses: dict[str, Tensor] = {}
        if self.training:
            for name, h, c in zip(PARTS, halves, chosen):
                losses[f"codebook_{name}"] = self.codebook_weight * F.mse_loss(c, h.detach())
                losses[f"commitment_{name}"] = self.commitment_weight * F.mse_loss(h, c.detach())
        quantized = torch.cat([c.detach() + (h - h.detach()) for h, c in zip(halves, chosen)], -1)
        stats: dict[str, Tensor] = {}
        for i, name in enumerate(PARTS if not self.shared_index else ("shared",)):
            counts = code_counts(ids[:, i], self.codebook_size)
            stats[f"usage_batch_{name}"], stats[f"perplexity_{name}"] = usage_and_perplexity(counts)
            if self.training and self.restart_threshold > 0 and i == 0:
                self._restart_dead_codes(counts if self.shared_index else
                                         counts + code_counts(ids[:, 1], self.codebook_size), halves)
        indices = ids[:, 0] if self.shared_index else ids
        shape = z.shape[:-1] if self.shared_index else (*z.shape[:-1], 2)
        return QuantizerOutput(quantized.view(z.shape), indices.reshape(shape), losses, stats)

    @torch.no_grad()
    def _place_codes(self, which: Tensor, halves: list[Tensor]) -> None:
        """Move the codes ``which`` onto features of random positions; both halves of a pair from one position
        (rank 0's choice, broadcast, so every rank keeps the same codebooks)."""
        count = int(which.sum())
        picks = broadcast(torch.randint(0, halves[0].shape[0], (count,), device=halves[0].device))
        for codebook, h in zip((self.semantic_codebook, self.pixel_codebook), halves):
            codebook.data[which] = broadcast(h[picks].contiguous())

    @torch.no_grad()
    def _restart_dead_codes(self, counts: Tensor, halves: list[Tensor]) -> None:
        counts = all_reduce_sum(counts.clone())
        uniform = counts.sum() / self.codebook_size
        self.relative_use.mul_(self.restart_decay).add_((1 - self.restart_decay) * counts / uniform)
        dead = self.relative_use < self.restart_threshold
        if bool(dead.any()):
            self._place_codes(dead, [h.detach() for h in halves])
            self.relative_use[dead] = 1.0

    def indices_to_codes(self, indices: Tensor) -> Tensor:
        """``(...)`` (shared) or ``(..., 2)`` ids -> ``(..., dim)`` code vectors ``[semantic | pixel]``."""
        semantic, pixel = self.codebooks()
        if self.shared_index:
            return torch.cat([semantic[indices], pixel[indices]], -1)
        return torch.cat([semantic[indices[..., 0]], pixel[indices[..., 1]]], -1)
