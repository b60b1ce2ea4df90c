"""Nearest-code search: the distance product that dominates a large VQ's cost.

``argmin_c ||z - c||^2 = argmax_c (z . c - |c|^2 / 2)``, so the search is one ``(n, d) @ (d, K)`` product and an
argmax per row. Two ways to run it, with the same answer:

* ``fp32``: the product in fp32, in row chunks so the ``chunk x K`` score block stays small (see
  ``_Fp32Search`` for the layout and the two-level argmax that make it fast on CPUs).
* ``bf16``: the product in bf16 (tensor cores on GPUs, AMX tiles on recent Xeons), then a certified re-rank.
  Every bf16 score is within a known bound of the exact one (input rounding, fp32 accumulation, output
  rounding; see ``_window_floor``), so a code whose bf16 score is far enough below the row's best bf16 score
  cannot be the nearest. The codes inside that window (one to a few per row) are re-scored in fp32 and the best
  wins. The result is the exact nearest code, not an approximation (up to ties within fp32 rounding, which any
  two fp32 summation orders break their own way).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch
from torch import Tensor

BF16_UNIT_ROUNDOFF = 2.0**-8  # 8 significant bits
GROUP = 128  # codes per max-reduction group
NARROW_LOOKUP = 32  # lookup widths up to this are bound by writing scores, wider ones by the product
# A row whose bf16 window holds more groups or codes than these (scores too close for bf16 to separate, e.g.
# rows far from the origin) is searched in fp32: re-scoring many candidates one by one would cost more.
MAX_WINDOW_GROUPS, MAX_WINDOW_CODES = 16, 64
BF16_CPU_MIN_DIM = 128  # narrower lookups search faster in fp32 on CPUs (see ``bf16_search_is_fast``)


def bf16_search_is_fast(device: torch.device, lookup_dim: int) -> bool:
    """Whether the bf16 search beats fp32 on ``device`` for ``lookup_dim``-wide codes.

    On CPUs with AMX tiles, for lookups of at least ``BF16_CPU_MIN_DIM`` dims: a bf16 product runs ~4x the fp32
    rate there, and the whole search 1.2-1.9x at 128-256 dims, but narrow lookups are bound by writing and scanning
    scores, and bf16 is 2.3x slower at 8-32 dims (``bench/RESULTS.md``). False on other CPUs, whose bf16 products
    are no faster than fp32. False on CUDA: on an H200 (100k rows) the fp32 search took 5.4 ms against bf16's
    27 ms at 16k x 8, 22.5 against 25-32 ms at 256 dims, 27 against 68-88 ms at 64k x 32; bf16 won only at
    1,024 dims (12-21 against 17.7 ms), where the re-rank's host syncs stop dominating the product.
    """
    # torch exposes the AMX check only privately; without it, assume none
    amx = getattr(torch.cpu, "_is_amx_tile_supported", lambda: False)()
    return device.type == "cpu" and lookup_dim >= BF16_CPU_MIN_DIM and amx


def default_chunk(device: torch.device, lookup_dim: int, num_codes: int) -> int:
    """Rows per product. On CPUs by the lookup width: 2^20 scores up to 32 dims (bound by writing the scores),
    2^24 above (bound by the product, which wants tall blocks), at most 8,192 rows. On GPUs 2^28 scores (1 GiB in
    fp32) and up to 65,536 rows: each block costs a kernel launch and, for bf16, a host sync, so small blocks
    would leave the GPU idle (on an H200, 64-row blocks made a 100k x 16k search 100x slower than one product).
    """
    if device.type == "cuda":
        return max(1024, min(65536, 2**28 // max(num_codes, 1)))
    budget = 2**20 if lookup_dim <= NARROW_LOOKUP else 2**24
    return max(64, min(8192, budget // max(num_codes, 1)))


@torch.no_grad()
def nearest_code(z: Tensor, codebook: Tensor, cosine: bool, chunk: int | None = None,
                 precision: str = "fp32") -> Tensor:
    """Index of the nearest code for each row.

    Args:
        z: ``(n, d)`` fp32 rows.
        codebook: ``(K, d)`` fp32 codes.
        cosine: rows and codes are unit vectors, so the nearest code is the largest dot product.
        chunk: rows per matrix product, bounding the temporary ``chunk x K`` score block; ``None`` sizes it
            with :func:`default_chunk`.
        precision: ``"fp32"`` or ``"bf16"`` (certified: same answer, see the module docstring).

    Returns:
        ``(n,)`` long indices (the lowest index among exactly tied codes).
    """
    if precision not in ("fp32", "bf16"):
        raise ValueError(f"precision={precision!r}: use fp32 or bf16")
    z, codebook = z.float(), codebook.float()
    num_codes = codebook.shape[0]
    if chunk is None:
        chunk = default_chunk(z.device, codebook.shape[1], num_codes)
    half_sq_norms = None if cosine else 0.5 * codebook.pow(2).sum(1)
    out = torch.empty(z.shape[0], dtype=torch.long, device=z.device)
    if precision == "bf16":
        search = _CertifiedBf16Search(codebook, half_sq_norms)
    else:
        search = _Fp32Search(codebook, half_sq_norms, min(chunk, z.shape[0]))
    for start in range(0, z.shape[0], chunk):
        out[start : start + chunk] = search(z[start : start + chunk])
    return out


def _grouped_codes(codebook: Tensor, half_sq_norms: Tensor | None) -> tuple[Tensor, bool]:
    """``(K, d)`` codes -> ``(groups * GROUP, d [+ 1])`` codes padded to whole groups, and whether the last
    column is a bias (``-|c|^2 / 2``, or ``-inf`` for padding codes) that rows meet with a column of ones."""
    num_codes, dim = codebook.shape
    padding = -num_codes % GROUP
    codes = torch.cat([codebook, codebook.new_zeros(padding, dim)])
    augmented = half_sq_norms is not None or padding > 0
    if augmented:
        bias = codebook.new_full((num_codes + padding, 1), float("-inf"))
        bias[:num_codes, 0] = 0.0 if half_sq_norms is None else -half_sq_norms
        codes = torch.cat([codes, bias], dim=1)
    return codes, augmented


class _Fp32Search:
    """Exact argmax over codes of ``codes . z - half_sq_norms`` for each row of a block.

    Four choices make it several times faster than ``(block @ codes.T - half_sq_norms).argmax(1)`` on CPUs:

    * the layout of the score block follows the lookup width: for narrow lookups (up to 32 dims) the product is
      bound by writing scores, and a ``(K, n)`` block (codes x rows) writes them about twice as fast; wide
      lookups are bound by the arithmetic, and an ``(n, K)`` block keeps each row's groups contiguous, so the
      argmax inside the winning group reads one cache line run instead of ``GROUP`` lines a row apart
      (8-12% faster at 256 dims, ``bench/RESULTS.md``);
    * the bias rides in the product as one more input column (``[z, 1] . [c, -|c|^2 / 2]``): ``addmm`` would
      first copy the broadcast bias into the whole score block, a second write as costly as the product;
    * the argmax is two-level: the max of each group of ``GROUP`` codes (vectorised, unlike CPU ``argmax``,
      which is slower than the product itself for narrow lookups), the argmax over group maxima, and the
      argmax inside the winning group. The codebook is padded to whole groups with codes scored ``-inf``;
    * one score buffer serves every block (a fresh large allocation per block costs page faults).
    """

    def __init__(self, codebook: Tensor, half_sq_norms: Tensor | None, max_rows: int) -> None:
        self.codes, self.augmented = _grouped_codes(codebook, half_sq_norms)  # (groups * GROUP, d [+ 1])
        self.groups, self.num_codes = self.codes.shape[0] // GROUP, codebook.shape[0]
        self.codes_first = codebook.shape[1] <= NARROW_LOOKUP
        self.max_rows, self.scores = max_rows, None  # the buffer is made by the first full-size block
        self.rows = torch.arange(max_rows, device=codebook.device)

    def __call__(self, block: Tensor) -> Tensor:
        """``(n, d)`` rows -> ``(n,)`` indices of their nearest codes."""
        n = block.shape[0]
        if self.augmented:
            block = torch.cat([block, block.new_ones(n, 1)], dim=1)
        left, right = (self.codes, block.t()) if self.codes_first else (block, self.codes.t())
        if n == self.max_rows:
            if self.scores is None:
                self.scores = self.codes.new_empty(left.shape[0], right.shape[1])
            scores = torch.mm(left, right, out=self.scores)
        else:  # a shorter last block gets its own buffer (``out=`` wants the exact shape, contiguous)
            scores = left @ right
        if self.codes_first:
            grouped = scores.view(self.groups, GROUP, n)
            best_group = grouped.amax(1).argmax(0)  # (n,): first group holding the row's maximum
            inside = grouped[best_group, :, self.rows[:n]].argmax(1)  # (n,)
        else:
            grouped = scores.view(n, self.groups, GROUP)
            best_group = grouped.amax(2).argmax(1)
            inside = grouped[self.rows[:n], best_group].argmax(1)
        # a non-finite row may land on a padding code: keep its (arbitrary) answer a valid index
        return (best_group * GROUP + inside).clamp_max_(self.num_codes - 1)


class _CertifiedBf16Search:
    """Exact argmax over codes of ``codes . z - half_sq_norms``, from a bf16 product and an fp32 re-score.

    Per block: bf16 scores ``(n, K)`` (the bias column as in ``_Fp32Search``); the max of each group of
    ``GROUP`` codes; per row the lowest bf16 score a code can have and still be the nearest (``_window_floor``);
    the groups whose max reaches it, and inside them the codes that do. A row with one such code has its
    answer; the codes of rows with several are re-scored in fp32 and the best wins (the lowest code among exact
    ties). Rows with none (non-finite input) or too many (``MAX_WINDOW_GROUPS``, ``MAX_WINDOW_CODES``) go to
    the fp32 search.
    """

    def __init__(self, codebook: Tensor, half_sq_norms: Tensor | None) -> None:
        codes, self.augmented = _grouped_codes(codebook, half_sq_norms)
        self.codes_t = codes.bfloat16().t()  # (d [+ 1], groups * GROUP)
        self.groups = codes.shape[0] // GROUP
        self.codebook, self.half_sq_norms = codebook, half_sq_norms
        self.code_norm = codebook.norm(dim=1).max()
        self.max_bias = half_sq_norms.abs().max() if half_sq_norms is not None else self.code_norm.new_zeros(())

    def __call__(self, block: Tensor) -> Tensor:
        """``(n, d)`` rows -> ``(n,)`` indices of their nearest codes."""
        n, num_codes = block.shape[0], self.codebook.shape[0]
        rows_bf16 = block.bfloat16()
        if self.augmented:
            rows_bf16 = torch.cat([rows_bf16, rows_bf16.new_ones(n, 1)], dim=1)
        with _fp32_accumulation(block.device):
            scores = (rows_bf16 @ self.codes_t).view(n, self.groups, GROUP)
        group_max = scores.amax(2).float()  # (n, groups)
        floor = _window_floor(group_max.max(1).values, block, self.code_norm, self.max_bias)  # (n,)
        rows, groups = (group_max >= floor[:, None]).nonzero(as_tuple=True)
        keep = torch.bincount(rows, minlength=n)[rows] <= MAX_WINDOW_GROUPS
        rows, groups = rows[keep], groups[keep]
        pair, offset = (scores[rows, groups].float() >= floor[rows, None]).nonzero(as_tuple=True)
        rows, codes = rows[pair], groups[pair] * GROUP + offset  # (pairs,), sorted by row
        counts = torch.bincount(rows, minlength=n)[rows]
        keep = counts <= MAX_WINDOW_CODES
        rows, codes, several = rows[keep], codes[keep], counts[keep] > 1
        winner = codes.new_full((n,), num_codes)  # rows left at num_codes go to the fp32 search
        winner[rows[~several]] = codes[~several]
        rows, codes = rows[several], codes[several]
        exact = torch.einsum("pd,pd->p", block.index_select(0, rows), self.codebook.index_select(0, codes))
        if self.half_sq_norms is not None:
            exact = exact - self.half_sq_norms.index_select(0, codes)
        best = exact.new_full((n,), float("-inf")).scatter_reduce(0, rows, exact, "amax")
        tied = exact == best[rows]
        winner.scatter_reduce_(0, rows[tied], codes[tied], "amin")
        lost = (winner == num_codes).nonzero(as_tuple=True)[0]
        if len(lost):  # rare: the fp32 search (and its fp32 copy of the codes) only when needed
            winner[lost] = _Fp32Search(self.codebook, self.half_sq_norms, len(lost))(block[lost])
        return winner


@contextmanager
def _fp32_accumulation(device: torch.device) -> Iterator[None]:
    """Hold cuBLAS to fp32 accumulation of bf16 products, which the window assumes.

    By default torch lets cuBLAS reduce bf16 products in reduced precision (split-K partial sums rounded to
    bf16: ``allow_bf16_reduced_precision_reduction``), an error the window does not bound. CPU kernels
    accumulate in fp32 whatever the flag says.
    """
    if device.type != "cuda":
        yield
        return
    flags = torch.backends.cuda.matmul
    saved = flags.allow_bf16_reduced_precision_reduction
    flags.allow_bf16_reduced_precision_reduction = False
    try:
        yield
    finally:
        flags.allow_bf16_reduced_precision_reduction = saved


def _window_floor(best: Tensor, block: Tensor, code_norm: Tensor, max_bias: Tensor) -> Tensor:
    """Per row, the lowest bf16 score a code can have and still be the nearest, given the row's best bf16
    score ``best`` ``(n,)`` and its ``(n, d)`` rows.

    For a code with exact score ``E`` and bf16 score ``S``, let ``T`` be the fp32 sum before its rounding to
    bf16. ``|T - E| <= e``: rounding ``z`` and ``c`` to bf16 moves each product by at most
    ``(2u + u^2) |z_i c_i|`` (and ``sum_i |z_i c_i| <= |z| |c|``), the bias ``b = -|c|^2 / 2`` by ``u |b|``, and
    fp32 accumulation of ``d + 1`` terms adds ``(d + 1) 2^-24`` of their magnitudes, taken 4x: tensor cores and
    AMX tiles add aligned products with truncation, which the textbook bound of a rounded sequential sum need not
    cover (the term stays under 1% of the input-rounding one up to 256 dims, 6% at 2,048). On CUDA the product is
    held to fp32 accumulation (``_fp32_accumulation``). ``|S - T| <= u |T| <= u' |S|`` with ``u' = u / (1 - u)``.
    So ``E <= U(S) = S + u' |S| + e`` and ``E >= S - u' |S| - e``: a code can beat the best-scored one only if
    ``U(S) >= best - u' |best| - e``, and since ``U`` increases, that is ``S`` at or above the returned floor.
    The factor 1.01 on ``e`` covers the fp32 rounding of these bounds themselves.
    """
    u = BF16_UNIT_ROUNDOFF
    u_out = u / (1 - u)
    accumulation = 4 * (block.shape[1] + 1) * 2.0**-24
    e = 1.01 * ((2 * u + u * u + accumulation) * block.norm(dim=1) * code_norm + (u + accumulation) * max_bias)
    target = best - u_out * best.abs() - 2 * e  # U(S) - e must reach this
    return torch.where(target >= 0, target / (1 + u_out), target / (1 - u_out))
