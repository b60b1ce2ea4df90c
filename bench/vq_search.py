"""The nearest-code search alone: fp32 against the certified bf16 search, by lookup width and codebook size.

    THP_MEM_ALLOC_ENABLE=1 python bench/vq_search.py [--repeats 3] [--rows 8192]

For each shape, rows of two kinds: random (scores close together: several codes per bf16 window) and rows near a
code (one code per window, as trained features sit). Both searches must return the same indices (checked on every
shape); reported: the fastest of ``--repeats`` calls of each, in ms. ``search: auto`` picks bf16 on CPUs with AMX
only from ``BF16_CPU_MIN_DIM`` dims, where this table shows it ahead.
"""

from __future__ import annotations

import argparse
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # run from a checkout

SHAPES = ((131072, 8), (32768, 32), (16384, 64), (8192, 128), (4096, 256), (16384, 256))  # (codes, dims)


def fastest(rows, codes, precision: str, repeats: int) -> float:
    """Milliseconds of the fastest of ``repeats`` searches (after one warm-up)."""
    from vtok.quantizers.search import nearest_code

    nearest_code(rows, codes, cosine=False, precision=precision)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        nearest_code(rows, codes, cosine=False, precision=precision)
        times.append(time.perf_counter() - start)
    return min(times) * 1e3


def main() -> None:
    import torch

    from vtok.quantizers.search import bf16_search_is_fast, nearest_code

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--rows", type=int, default=8192)
    args = parser.parse_args()
    torch.manual_seed(0)
    amx = getattr(torch.cpu, "_is_amx_tile_supported", lambda: False)()
    print(f"AMX: {amx}; torch threads {torch.get_num_threads()}; "
          f"THP_MEM_ALLOC_ENABLE={os.environ.get('THP_MEM_ALLOC_ENABLE')}")
    print("| codes x dims | rows | fp32 ms | bf16 ms | fp32 / bf16 | auto picks |")
    print("|---|---|---|---|---|---|")
    for num_codes, dim in SHAPES:
        codes = torch.randn(num_codes, dim) * dim**-0.5
        near = codes[torch.randint(num_codes, (args.rows,))] + 0.1 * dim**-0.5 * torch.randn(args.rows, dim)
        for kind, rows in (("random", torch.randn(args.rows, dim)), ("near a code", near)):
            exact = nearest_code(rows, codes, cosine=False)
            if not torch.equal(nearest_code(rows, codes, cosine=False, precision="bf16"), exact):
                raise AssertionError(f"{num_codes} x {dim}, {kind}: bf16 and fp32 searches disagree")
            fp32, bf16 = (fastest(rows, codes, precision, args.repeats) for precision in ("fp32", "bf16"))
            pick = "bf16" if bf16_search_is_fast(torch.device("cpu"), dim) else "fp32"
            print(f"| {num_codes:,} x {dim} | {kind} | {fp32:.0f} | {bf16:.0f} | {fp32 / bf16:.2f}x | {pick} |",
                  flush=True)


if __name__ == "__main__":
    main()
