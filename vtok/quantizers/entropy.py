"""Entropy terms of binary quantizers (LFQ, BSQ) without an ``N x 2^d`` matrix.

A binary code ``c`` in ``{0, 1}^d`` has, under per-bit probabilities ``p_i = sigmoid(l_i)``, the probability
``prod_i p_i^{c_i} (1 - p_i)^{1 - c_i}``: the distance-softmax over all ``2^d`` codes factorises over bits.

* per-sample entropy ``E_n[H(p_n)] = E_n[sum_i H(p_{n,i})]``: **exact**, ``O(N d)``.
* codebook entropy ``H(E_n[p_n])``: the mixture over samples does not factorise. Under DDP the mean runs
  over the samples of every rank (a differentiable all-reduce), so the term is that of the global batch.
  ``codebook_entropy_exact`` is exact: a code's probability is the product of a low-bits factor and a
  high-bits factor, so the mean over samples of all ``2^d`` probabilities is one ``(2^{d/2}, N) @ (N, 2^{d/2})``
  matrix product (``O(N 2^d)`` multiply-adds in a BLAS call, ``O(N 2^{d/2} + 2^d)`` memory; timings are in
  ``bench/RESULTS.md``). ``codebook_entropy_factorized`` is ``sum_i H(E_n[p_{n,i}])``, the entropy of the
  product of the bit marginals, an upper bound of the exact value used by BSQ, ``O(N d)`` at any size.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from vtok.distributed import mean_over_ranks


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


def _half_code_probs(logits: Tensor) -> Tensor:
    """``(N, h)`` logits of ``h`` bits -> ``(N, 2^h)`` probability of every ``h``-bit code under each sample."""
    h = logits.shape[1]
    codes = torch.arange(2**h, device=logits.device)
    bits = ((codes.unsqueeze(-1) & (2 ** torch.arange(h, device=logits.device))) > 0).to(logits.dtype)  # (2^h, h)
    # log p(c) = sum_i log sigmoid(+-l_i): a sum of non-positive terms. (The shorter ``log p(0) + l . c``
    # cancels large terms and loses ~1e-3 of relative precision in fp32 at LFQ's usual temperature.)
    log_sigmoids = torch.cat([F.logsigmoid(logits), F.logsigmoid(-logits)], dim=-1)  # (N, 2h)
    return (log_sigmoids @ torch.cat([bits, 1 - bits], dim=-1).t()).exp()


def codebook_entropy_exact(logits: Tensor) -> Tensor:
    """``(N, d)`` bit logits -> ``H(mean_n p_n)`` over all ``2^d`` codes, exactly.

    ``p_n(c) = p_n(c_low) * p_n(c_high)`` (bits are independent given the sample), so the ``(2^{d_high},
    2^{d_low})`` table of mean probabilities is ``P_high^T @ P_low / N``. Per-sample factors can underflow
    to 0 only where their contribution to the entropy is below fp32 resolution anyway.
    """
    n, d = logits.shape
    low = d // 2
    p_low = _half_code_probs(logits[:, :low])  # (N, 2^low)
    p_high = _half_code_probs(logits[:, low:])  # (N, 2^(d - low))
    mean = mean_over_ranks(p_high.t() @ p_low / n, n)  # (2^(d-low), 2^low): code = high * 2^low + low
    return -(mean * mean.clamp_min(1e-30).log()).sum()  # clamp: finite gradient where a code has p = 0
