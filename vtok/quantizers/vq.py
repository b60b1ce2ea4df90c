"""Vector quantization: nearest code in a learned codebook.

Options cover the variants tokenizers use: a low-dimensional lookup space (project in/out, as in ViT-VQGAN,
LlamaGen and TiTok), l2-normalised codes (cosine distance), data / k-means initialisation, dead-code restart
(codes that stop being chosen move onto recent encoder outputs), EMA codebook updates, SimVQ's linear codebook,
and three gradient estimators: straight-through, the rotation trick, and IBQ's straight-through over the
softmax of all codes. Every statistic that changes the codebook is all-reduced, so all ranks keep one codebook.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from vtok.distributed import all_reduce_sum, broadcast, mean_over_ranks

from .base import Quantizer, QuantizerOutput, fp32_forward
from .registry import QUANTIZERS
from .search import bf16_search_is_fast, nearest_code
from .stats import code_counts, usage_and_perplexity

# Below this many codebook entries (codes x lookup dim) the product is too small for bf16 to pay for its
# candidate re-rank.
BF16_SEARCH_MIN_SIZE = 2**20


@QUANTIZERS.register("vq")
class VectorQuantizer(Quantizer):
    """Nearest-neighbour vector quantizer.

    Args:
        dim: feature size of the encoder output.
        codebook_size: number of codes ``K``.
        codebook_dim: size of the lookup space; when it differs from ``dim`` a linear layer projects in and
            another projects out.
        l2_normalize: normalise features and codes to unit length (cosine distance).
        commitment_weight: weight of ``||z - sg(q)||^2`` that pulls the encoder to its codes.
        codebook_weight: weight of ``||sg(z) - q||^2`` that pulls codes to the encoder.
        restart_threshold: a code whose running use falls below this fraction of uniform use is dead and is
            moved onto a random encoder output of the current batch; 0 disables restarts.
        restart_decay: decay of the running use count (about ``1 / (1 - decay)`` batches of memory).
        data_init: on the first training batch, place the codes on randomly chosen encoder outputs (random
            codes far from the data otherwise collapse onto a handful of winners within a few steps).
        kmeans_iters: Lloyd iterations run on that first batch after the random placement.
        linear_codebook: SimVQ: codes are a frozen random basis times one learned ``codebook_dim`` square
            matrix, so every code moves whenever any is used and the codebook cannot collapse onto a few
            winners (data initialisation and restarts then act on the basis).
        ema_decay: update codes as exponential moving averages of their assigned features (k-means online)
            instead of by gradient; ``None`` for gradient updates.
        gradient: ``"ste"`` straight-through; ``"rotation"`` the rotation trick (the encoder gradient is
            rotated and scaled like the feature-to-code map); ``"ibq"`` index backpropagation (straight-through
            over ``softmax(z . codes)``, so every code receives gradient; costs an ``N x K`` matrix).
        entropy_weight: weight of ``H_sample - H_codebook`` on the soft assignment
            ``softmax(-||z - c||^2 / (entropy_temperature * mean_n min_c ||z_n - c||^2))``: each feature should
            sit near one code, and the batch should spread over all codes. The distance scale is the batch's
            own (detached), so the temperature means the same at any feature scale. Costs an ``N x K`` matrix.
        entropy_temperature: see ``entropy_weight``.
        search: nearest-code search precision: ``"fp32"``, ``"bf16"`` (a bf16 product with a certified fp32
            re-rank: the same codes, for bf16 tensor cores and AMX tiles) or ``"auto"`` (bf16 for lookups of 128
            dims or more on CPUs with AMX, when the codebook is large enough for the product to dominate; fp32
            otherwise, CUDA included: see ``bf16_search_is_fast``).
    """

    def __init__(
        self,
        dim: int,
        codebook_size: int,
        codebook_dim: int | None = None,
        l2_normalize: bool = True,
        commitment_weight: float = 0.25,
        codebook_weight: float = 1.0,
        restart_threshold: float = 0.0,
        restart_decay: float = 0.99,
        data_init: bool = True,
        kmeans_iters: int = 0,
        linear_codebook: bool = False,
        ema_decay: float | None = None,
        gradient: str = "ste",
        entropy_weight: float = 0.0,
        entropy_temperature: float = 1.0,
        search: str = "auto",
    ) -> None:
        super().__init__()
        self.in_dim = self.out_dim = dim
        self.codebook_size = codebook_size
        self.codebook_dim = codebook_dim or dim
        self.l2_normalize = l2_normalize
        self.commitment_weight = commitment_weight
        self.codebook_weight = codebook_weight
        self.restart_threshold = restart_threshold
        self.restart_decay = restart_decay
        self.data_init = data_init
        self.kmeans_iters = kmeans_iters
        self.entropy_weight, self.entropy_temperature = entropy_weight, entropy_temperature
        if search not in ("auto", "fp32", "bf16"):
            raise ValueError(f"search={search!r}: use auto, fp32 or bf16")
        self.search = search

        needs_projection = self.codebook_dim != dim
        self.project_in = nn.Linear(dim, self.codebook_dim) if needs_projection else nn.Identity()
        self.project_out = nn.Linear(self.codebook_dim, dim) if needs_projection else nn.Identity()
        codebook = torch.randn(codebook_size, self.codebook_dim)
        if l2_normalize:
            codebook = F.normalize(codebook, dim=-1)
        else:
            codebook.mul_(self.codebook_dim**-0.5)
        if gradient not in ("ste", "rotation", "ibq"):
            raise ValueError(f"gradient={gradient!r}: use ste, rotation or ibq")
        if ema_decay is not None and linear_codebook:
            raise ValueError("ema_decay and linear_codebook are exclusive: EMA sets codes directly")
        self.gradient, self.ema_decay = gradient, ema_decay
        self.linear_codebook = linear_codebook
        if ema_decay is not None:
            self.register_buffer("codebook", codebook)
            self.register_buffer("ema_counts", torch.ones(codebook_size))
            self.register_buffer("ema_sums", codebook.clone())
        elif linear_codebook:
            self.register_buffer("codebook", codebook)
            self.codebook_map = nn.Linear(self.codebook_dim, self.codebook_dim, bias=False)
            nn.init.eye_(self.codebook_map.weight)
        else:
            self.codebook = nn.Parameter(codebook)
        # Running per-batch use of each code, in units of the use a uniform codebook would get.
        self.register_buffer("relative_use", torch.ones(codebook_size))
        self.register_buffer("initialized", torch.tensor(not data_init))

    def codes(self) -> Tensor:
        """``(K, codebook_dim)`` codes as used for lookup."""
        codes = self.codebook_map(self.codebook) if self.linear_codebook else self.codebook
        return F.normalize(codes, dim=-1) if self.l2_normalize else codes

    def _lookup_space(self, z: Tensor) -> Tensor:
        z = self.project_in(z)
        return F.normalize(z, dim=-1) if self.l2_normalize else z

    @fp32_forward
    def forward(self, z: Tensor) -> QuantizerOutput:
        """``(..., dim)`` features -> quantized ``(..., dim)`` and indices ``(...)``."""
        z_lookup = self._lookup_space(z)
        flat = z_lookup.reshape(-1, self.codebook_dim)
        if self.training and not bool(self.initialized):
            self._init_from_data(flat.detach())
        codes = self.codes()
        indices = nearest_code(flat.detach(), codes.detach(), cosine=self.l2_normalize,
                               precision=self._search_precision(flat.device))
        chosen = codes.index_select(0, indices)  # its backward is index_add, ~3x faster than indexing's

        losses: dict[str, Tensor] = {}
        if self.training:
            if self.ema_decay is None:
                losses["codebook"] = self.codebook_weight * F.mse_loss(chosen, flat.detach())
            losses["commitment"] = self.commitment_weight * F.mse_loss(flat, chosen.detach())
            if self.entropy_weight > 0:
                losses["entropy"] = self.entropy_weight * self._entropy_loss(flat, codes)
        # The value is exactly the code (so decode(encode(x)) == decode_indices(indices)); only the
        # gradient differs between estimators.
        surrogate = self._surrogate(flat, chosen, codes, indices)
        quantized = chosen.detach() + (surrogate - surrogate.detach())
        quantized = self.project_out(quantized.view(z_lookup.shape))

        counts = code_counts(indices, self.codebook_size)
        if self.training and self.ema_decay is not None:
            self._ema_update(flat.detach(), indices, counts)
        if self.training and self.restart_threshold > 0:
            self._restart_dead_codes(flat.detach(), counts)
        usage, perplexity = usage_and_perplexity(counts)
        stats = {
            "usage_batch": usage,
            "perplexity": perplexity,
            "dead_codes": (self.relative_use < self.restart_threshold).sum().float(),
        }
        return QuantizerOutput(
            quantized=quantized,
            indices=indices.view(z.shape[:-1]),
            losses=losses,
            stats=stats,
        )

    def _surrogate(self, flat: Tensor, chosen: Tensor, codes: Tensor, indices: Tensor) -> Tensor:
        """A function of ``flat`` (and the codes) whose gradient is the chosen estimator's; only its gradient
        is used (the output's value is always exactly the code)."""
        if self.gradient == "rotation" and self.training:
            # q = scale * R z with R the rotation taking z's direction to q's, both held constant.
            z_norm = flat.norm(dim=-1, keepdim=True).clamp_min(1e-6)
            q_norm = chosen.norm(dim=-1, keepdim=True).clamp_min(1e-6)
            z_hat, q_hat = (flat / z_norm).detach(), (chosen / q_norm).detach()
            r = F.normalize(z_hat + q_hat, dim=-1)
            rotated = flat - 2 * r * (r * flat).sum(-1, keepdim=True) + 2 * q_hat * (z_hat * flat).sum(-1, keepdim=True)
            return (q_norm / z_norm).detach() * rotated
        if self.gradient == "ibq" and self.training:
            soft = torch.softmax(flat @ codes.t(), dim=-1)
            hard = F.one_hot(indices, self.codebook_size).to(soft.dtype)
            # gradient reaches the encoder and every code through the softmax
            return (hard - soft.detach() + soft) @ codes
        return flat

    def _search_precision(self, device: torch.device) -> str:
        if self.search != "auto":
            return self.search
        large = self.codebook_size * self.codebook_dim >= BF16_SEARCH_MIN_SIZE
        return "bf16" if large and bf16_search_is_fast(device, self.codebook_dim) else "fp32"

    def _entropy_loss(self, flat: Tensor, codes: Tensor) -> Tensor:
        """``H_sample - H_codebook`` (nats) of the soft assignment of ``(N, d)`` features to ``(K, d)`` codes."""
        sq_dist = (flat.pow(2).sum(1, keepdim=True) - 2 * flat @ codes.t() + codes.pow(2).sum(1)).clamp_min(0)
        scale = sq_dist.detach().min(1).values.mean().clamp_min(1e-12) * self.entropy_temperature
        log_p = torch.log_softmax(-sq_dist / scale, dim=1)
        sample_entropy = -(log_p.exp() * log_p).sum(1).mean()
        mean_p = mean_over_ranks(log_p.exp().mean(0), flat.shape[0])
        codebook_entropy = -(mean_p * mean_p.clamp_min(1e-30).log()).sum()
        return sample_entropy - codebook_entropy

    @torch.no_grad()
    def _ema_update(self, flat: Tensor, indices: Tensor, counts: Tensor) -> None:
        sums = torch.zeros_like(self.ema_sums).index_add_(0, indices, flat.to(self.ema_sums.dtype))
        counts, sums = all_reduce_sum(counts.clone()), all_reduce_sum(sums)
        decay = self.ema_decay
        self.ema_counts.mul_(decay).add_(counts, alpha=1 - decay)
        self.ema_sums.mul_(decay).add_(sums, alpha=1 - decay)
        total = self.ema_counts.sum()
        smoothed = (self.ema_counts + 1e-5) / (total + self.codebook_size * 1e-5) * total  # Laplace smoothing
        self.codebook.copy_(self.ema_sums / smoothed.unsqueeze(1))

    @torch.no_grad()
    def _init_from_data(self, flat: Tensor) -> None:
        picks = torch.randint(0, flat.shape[0], (self.codebook_size,), device=flat.device)
        codes = flat[picks].clone()
        for _ in range(self.kmeans_iters):
            assignment = nearest_code(flat, codes, cosine=self.l2_normalize)
            sums = torch.zeros_like(codes).index_add_(0, assignment, flat)
            counts = torch.bincount(assignment, minlength=self.codebook_size).unsqueeze(1)
            codes = torch.where(counts > 0, sums / counts.clamp_min(1), codes)
            if self.l2_normalize:
                codes = torch.nn.functional.normalize(codes, dim=-1)
        self._set_codes(torch.ones(self.codebook_size, dtype=torch.bool, device=codes.device),
                        broadcast(codes.contiguous()))
        self.initialized.fill_(True)

    def _set_codes(self, which: Tensor, codes: Tensor) -> None:
        """Make ``codes()[which] == codes`` (up to normalisation)."""
        if self.linear_codebook:  # store the basis vectors that the map sends onto the codes
            codes = torch.linalg.solve(self.codebook_map.weight.float(), codes.t().float()).t()
        self.codebook.data[which] = codes.to(self.codebook.dtype)
        if self.ema_decay is not None:
            self.ema_counts[which] = 1.0
            self.ema_sums[which] = codes.to(self.ema_sums.dtype)

    @torch.no_grad()
    def _restart_dead_codes(self, flat: Tensor, counts: Tensor) -> None:
        counts = all_reduce_sum(counts.clone())
        uniform = counts.sum() / self.codebook_size
        self.relative_use.mul_(self.restart_decay).add_((1 - self.restart_decay) * counts / uniform)
        dead = self.relative_use < self.restart_threshold
        num_dead = int(dead.sum())
        if num_dead == 0:
            return
        # Every rank samples; rank 0's choice is broadcast so that codebooks stay identical.
        picks = torch.randint(0, flat.shape[0], (num_dead,), device=flat.device)
        self._set_codes(dead, broadcast(flat[picks].contiguous()))
        self.relative_use[dead] = 1.0

    def indices_to_codes(self, indices: Tensor) -> Tensor:
        """``(...)`` indices -> ``(..., dim)`` quantized features."""
        return self.project_out(self.codes().index_select(0, indices.reshape(-1)).view(*indices.shape, -1))
