"""Nearest-code search: the distance product that dominates a large VQ's cost.

``argmin_c ||z - c||^2 = argmax_c (z . c - |c|^2 / 2)``, so the search is one ``(n, d) @ (d, K)`` product and an
argmax per row. Two ways to run it, with the same answer:

* ``fp32``: the product in fp32, in row chunks so the ``(K, chunk)`` score block stays small (see
  ``_Fp32Search`` for the layout and the two-level argmax that make it fast on CPUs).
* ``bf16``: the product in bf16 (tensor cores on GPUs), then a certified re-rank. Every bf16 score is within
  a bound ``eps`` of the exact one (input rounding, fp32 accumulation, output rounding; see
  ``_bf16_error_bound``). The bf16 top few codes are re-scored in fp32;
  when the best of them beats the last candidate's bf16 score by more than ``eps``, no other code can win,
  and the rare rows where it does not are searched again in fp32. The result is the exact nearest code, not
  an approximation (up to ties within fp32 rounding, which any two fp32 summation orders break their own way).
"""

from __future__ import annotations

import torch
from torch import Tensor

BF16_UNIT_ROUNDOFF = 2.0**-8  # 8 significant bits
CANDIDATES = 4  # bf16 best codes re-scored in fp32 per row; rows whose winner is not certified fall back


def bf16_search_is_fast(device: torch.device) -> bool:
    """Whether the bf16 search beats fp32 on ``device``.

    True on CUDA (bf16 tensor cores). False on CPUs: there the top-k and re-rank eat what a bf16 product saves
    (measured in ``bench/RESULTS.md``).
    """
    return device.type == "cuda"


GROUP = 128  # codes per max-reduction group in the fp32 search


@torch.no_grad()
def nearest_code(z: Tensor, codebook: Tensor, cosine: bool, chunk: int | None = None,
                 precision: str = "fp32") -> Tensor:
    """Index of the nearest code for each row.

    Args:
        z: ``(n, d)`` fp32 rows.
        codebook: ``(K, d)`` fp32 codes.
        cosine: rows and codes are unit vectors, so the nearest code is the largest dot product.
        chunk: rows per matrix product, bounding the temporary ``(K, chunk)`` score block; ``None`` sizes it
            by the lookup width: a 4 MiB block up to 32 dims (bound by writing the scores), 64 MiB above
            (bound by the product, which wants tall blocks).
        precision: ``"fp32"`` or ``"bf16"`` (certified: same answer, see the module docstring).

    Returns:
        ``(n,)`` long indices (the lowest index among exactly tied codes).
    """
    if precision not in ("fp32", "bf16"):
        raise ValueError(f"precision={precision!r}: use fp32 or bf16")
    z, codebook = z.float(), codebook.float()
    num_codes = codebook.shape[0]
    if chunk is None:
        budget = 2**20 if codebook.shape[1] <= 32 else 2**24
        chunk = max(64, min(8192, budget // max(num_codes, 1)))
    half_sq_norms = None if cosine else 0.5 * codebook.pow(2).sum(1)
    out = torch.empty(z.shape[0], dtype=torch.long, device=z.device)
    if precision == "bf16":
        codes_bf16 = codebook.bfloat16()
        bias_bf16 = None if half_sq_norms is None else (-half_sq_norms).bfloat16().unsqueeze(0)
        code_norm = codebook.norm(dim=1).max()
        max_bias = half_sq_norms.abs().max() if half_sq_norms is not None else code_norm.new_zeros(())
        fallback = _Fp32Search(codebook, half_sq_norms, min(chunk, z.shape[0]))
        for start in range(0, z.shape[0], chunk):
            out[start : start + chunk] = _certified_bf16_argmax(
                z[start : start + chunk], codebook, half_sq_norms, codes_bf16, bias_bf16, code_norm, max_bias,
                fallback)
        return out
    search = _Fp32Search(codebook, half_sq_norms, min(chunk, z.shape[0]))
    for start in range(0, z.shape[0], chunk):
        out[start : start + chunk] = search(z[start : start + chunk])
    return out


class _Fp32Search:
    """Exact argmax over codes of ``codes . z - half_sq_norms`` for each row of a block.

    Four choices make it several times faster than ``(block @ codes.T - half_sq_norms).argmax(1)`` on CPUs:

    * the score block is ``(K, n)`` (codes x rows): for narrow lookups the product is bound by writing
      scores, and this orientation writes them about twice as fast;
    * the bias rides in the product as one more input column (``[z, 1] . [c, -|c|^2 / 2]``): ``addmm`` would
      first copy the broadcast bias into the whole score block, a second write as costly as the product;
    * the argmax is two-level: the max of each group of ``GROUP`` codes (vectorised, unlike CPU ``argmax``,
      which is slower than the product itself for narrow lookups), the argmax over group maxima, and the
      argmax inside the winning group. The codebook is padded to whole groups with codes scored ``-inf``;
    * one score buffer serves every block (a fresh large allocation per block costs page faults).
    """

    def __init__(self, codebook: Tensor, half_sq_norms: Tensor | None, max_rows: int) -> None:
        num_codes, dim = codebook.shape
        self.groups = -(-num_codes // GROUP)
        padding = self.groups * GROUP - num_codes
        self.augmented = half_sq_norms is not None or padding > 0
        codes = torch.cat([codebook, codebook.new_zeros(padding, dim)])
        if self.augmented:
            bias = codebook.new_full((self.groups * GROUP, 1), float("-inf"))
            bias[:num_codes, 0] = 0.0 if half_sq_norms is None else -half_sq_norms
            codes = torch.cat([codes, bias], dim=1)
        self.codes = codes  # (groups * GROUP, d [+ 1])
        self.max_rows, self.scores = max_rows, None  # the buffer is made by the first full-size block
        self.columns = torch.arange(max_rows, device=codebook.device)

    def __call__(self, block: Tensor) -> Tensor:
        """``(n, d)`` rows -> ``(n,)`` indices of their nearest codes."""
        n = block.shape[0]
        if self.augmented:
            block = torch.cat([block, block.new_ones(n, 1)], dim=1)
        if n == self.max_rows:
            if self.scores is None:
                self.scores = self.codes.new_empty(self.codes.shape[0], n)
            scores = torch.mm(self.codes, block.t(), out=self.scores)
        else:  # a shorter last block gets its own buffer (``out=`` wants the exact shape, contiguous)
            scores = self.codes @ block.t()
        grouped = scores.view(self.groups, GROUP, n)
        best_group = grouped.amax(1).argmax(0)  # (n,): first group holding the column maximum
        inside = grouped[best_group, :, self.columns[:n]].argmax(1)  # (n,)
        return best_group * GROUP + inside


def _bf16_error_bound(block: Tensor, code_norm: Tensor, max_bias: Tensor, dim: int) -> Tensor:
    """Per row of ``block``, a bound on ``|bf16 score - exact score|`` for every code.

    Rounding ``z`` and ``c`` to bf16 perturbs each product by at most ``(2u + u^2) |z_i c_i|``, and
    ``sum_i |z_i c_i| <= |z| |c|``; fp32 accumulation adds ``dim * 2^-24`` of the same; the bias ``-|c|^2 / 2``
    is rounded once (``u |b|``); rounding the output to bf16 adds ``u`` times its magnitude, itself at most
    ``|z| |c| + |b|`` (plus the errors above, covered by the slack in the constants).
    """
    u = BF16_UNIT_ROUNDOFF
    dot_bound = block.norm(dim=1) * code_norm
    return (3 * u + u * u + dim * 2.0**-24) * 1.01 * dot_bound + 2.02 * u * max_bias


def _certified_bf16_argmax(block: Tensor, codebook: Tensor, half_sq_norms: Tensor | None, codes_bf16: Tensor,
                           bias_bf16: Tensor | None, code_norm: Tensor, max_bias: Tensor,
                           fallback: _Fp32Search) -> Tensor:
    """Exact argmax of ``block @ codebook.T - half_sq_norms`` for ``(n, d)`` rows, via bf16 candidates."""
    num_codes = codebook.shape[0]
    block_bf16 = block.bfloat16()
    scores = block_bf16 @ codes_bf16.t() if bias_bf16 is None else torch.addmm(bias_bf16, block_bf16, codes_bf16.t())
    top_scores, candidates = scores.topk(min(CANDIDATES, num_codes), dim=1)  # (n, m)
    exact = torch.einsum("nd,nmd->nm", block, codebook[candidates])
    if half_sq_norms is not None:
        exact = exact - half_sq_norms[candidates]
    best = exact.max(1, keepdim=True).values
    # lowest index among exact ties, as argmax over all codes would pick
    winner = torch.where(exact == best, candidates, num_codes).min(1).values
    if candidates.shape[1] == num_codes:
        return winner
    # A code outside the candidates has a bf16 score <= the last candidate's, so an exact score <= that + eps.
    eps = _bf16_error_bound(block, code_norm, max_bias, block.shape[1])
    unsure = (best[:, 0] <= top_scores[:, -1].float() + eps).nonzero(as_tuple=True)[0]
    if len(unsure):
        winner[unsure] = fallback(block[unsure])
    return winner
