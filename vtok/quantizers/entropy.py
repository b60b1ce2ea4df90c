"""Entropy terms of binary quantizers (LFQ, BSQ) without an ``N x 2^d`` matrix.

A binary code ``c`` in ``{0, 1}^d`` has, under per-bit probabilities ``p_i = sigmoid(l_i)``, the probability
``prod_i p_i^{c_i} (1 - p_i)^{1 - c_i}``: the distance-softmax over all ``2^d`` codes factorises over bits.

* per-sample entropy ``E_n[H(p_n)] = E_n[sum_i H(p_{n,i})]``: **exact**, ``O(N d)``.
* codebook entropy ``H(E_n[p_n])``: the mixture over samples does not factorise. Under DDP the mean runs
  over the samples of every rank (a differentiable all-reduce), so the term is that of the global batch.
  ``codebook_entropy_exact`` sums over codes in chunks (``O(N d 2^d)`` time, ``O(N * chunk)`` memory: fine up
  to about 2^20 codes); ``codebook_entropy_factorized`` is ``sum_i H(E_n[p_{n,i}])``, the entropy of the
  product of the bit marginals, an upper bound of the exact value used by BSQ, ``O(N d)`` at any size.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

from .distributed import mean_over_ranks


def bernoulli_entropy(logits: Tensor) -> Tensor:
    """Elementwise entropy (nats) of ``Bernoulli(sigmoid(logits))``, stable for large ``|logits|``."""
    p = torch.sigmoid(logits)
    return F.softplus(logits) - p * logits


def per_sample_entropy(logits: Tensor) -> Tensor:
    """``(N, d)`` bit logits -> mean over samples of the entropy of each sample's code distribution (exact)."""
    return bernoulli_entropy(logits).sum(-1).mean()


def codebook_entropy_factorized(logits: Tensor) -> Tensor:
    """``(N, d)`` bit logits -> ``sum_i H(mean_n p_{n,i})`` (upper bound of the codebook entropy)."""
    p = mean_over_ranks(torch.sigmoid(logits).mean(0), logits.shape[0]).clamp(1e-7, 1 - 1e-7)
    return -(p * p.log() + (1 - p) * (1 - p).log()).sum()


def codebook_entropy_exact(logits: Tensor, chunk: int = 4096) -> Tensor:
    """``(N, d)`` bit logits -> ``H(mean_n p_n)`` over all ``2^d`` codes, summed in chunks of codes.

    ``log p_n(c) = sum_i log(1 - p_{n,i}) + l_n . c``, so each chunk is one ``(N, d) @ (d, chunk)`` product.
    """
    n, d = logits.shape
    base = F.logsigmoid(-logits).sum(-1, keepdim=True)  # log prob of the all-zeros code, (N, 1)
    bit_weights = 2 ** torch.arange(d, device=logits.device)
    entropy = logits.new_zeros(())
    for start in range(0, 2**d, chunk):
        codes = torch.arange(start, min(start + chunk, 2**d), device=logits.device)
        bits = ((codes.unsqueeze(-1) & bit_weights) > 0).to(logits.dtype)  # (C, d)
        log_p = base + logits @ bits.t()  # (N, C)
        mean = mean_over_ranks((torch.logsumexp(log_p, dim=0) - math.log(n)).exp(), n)  # (C,)
        entropy = entropy - (mean * mean.clamp_min(1e-30).log()).sum()
    return entropy


def codebook_entropy_brute_force(logits: Tensor) -> Tensor:
    """Reference: the full ``N x 2^d`` probability matrix (tests only; small ``d``)."""
    d = logits.shape[1]
    codes = torch.arange(2**d, device=logits.device)
    bits = ((codes.unsqueeze(-1) & (2 ** torch.arange(d, device=logits.device))) > 0).to(logits.dtype)
    p = torch.sigmoid(logits)
    probs = (bits * p.unsqueeze(1) + (1 - bits) * (1 - p.unsqueeze(1))).prod(-1)  # (N, 2^d)
    mean = probs.mean(0)
    return -(mean * mean.clamp_min(1e-30).log()).sum()


def per_sample_entropy_brute_force(logits: Tensor) -> Tensor:
    """Reference for :func:`per_sample_entropy` (tests only; small ``d``)."""
    d = logits.shape[1]
    codes = torch.arange(2**d, device=logits.device)
    bits = ((codes.unsqueeze(-1) & (2 ** torch.arange(d, device=logits.device))) > 0).to(logits.dtype)
    p = torch.sigmoid(logits)
    probs = (bits * p.unsqueeze(1) + (1 - bits) * (1 - p.unsqueeze(1))).prod(-1)
    return -(probs * probs.clamp_min(1e-30).log()).sum(-1).mean()
