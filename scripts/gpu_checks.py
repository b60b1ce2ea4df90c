"""The CUDA checks of the evidence issue, in one process: the certified bf16 nearest-code search against fp32
on 100k rows (with cuBLAS's reduced-precision reduction allowed and held off), and its speed.

    python scripts/gpu_checks.py
"""

from __future__ import annotations

import json
import time

import torch

from vtok.quantizers.search import nearest_code


def timed(z: torch.Tensor, codes: torch.Tensor, cosine: bool, precision: str, repeats: int = 3) -> float:
    nearest_code(z, codes, cosine=cosine, precision=precision)
    torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(repeats):
        nearest_code(z, codes, cosine=cosine, precision=precision)
    torch.cuda.synchronize()
    return (time.perf_counter() - start) / repeats


def main() -> None:
    device = torch.device("cuda")
    print(json.dumps({"torch": torch.__version__, "gpu": torch.cuda.get_device_name(),
                      "reduced_precision_default": torch.backends.cuda.matmul.allow_bf16_reduced_precision_reduction}))
    results = []
    for num_codes, dim, cosine in ((16384, 8, False), (16384, 8, True), (16384, 256, False), (65536, 32, False),
                                   (4096, 1024, False), (1024, 8, False)):
        g = torch.Generator(device=device).manual_seed(0)
        codes = torch.randn(num_codes, dim, device=device, generator=g)
        picks = codes[torch.randint(num_codes, (100_000,), device=device, generator=g)]
        rows = {"random": torch.randn(100_000, dim, device=device, generator=g),
                "near_codes": picks + 0.01 * torch.randn(100_000, dim, device=device, generator=g),
                "far_rows": picks * torch.logspace(0, 2, 100_000, device=device)[:, None]}
        if cosine:
            codes = torch.nn.functional.normalize(codes, dim=1)
            rows = {k: torch.nn.functional.normalize(v, dim=1) for k, v in rows.items()}
        for name, z in rows.items():
            exact = nearest_code(z, codes, cosine=cosine)
            fast = nearest_code(z, codes, cosine=cosine, precision="bf16")
            mismatches = int((fast != exact).sum())
            # where they differ, the distances must tie in fp32 (the documented exception)
            if mismatches:
                differ = fast != exact
                d_fast = (z[differ] - codes[fast[differ]]).pow(2).sum(1)
                d_exact = (z[differ] - codes[exact[differ]]).pow(2).sum(1)
                ties = int(torch.isclose(d_fast, d_exact, rtol=1e-6, atol=1e-6).sum())
            else:
                ties = 0
            t32, t16 = timed(z, codes, cosine, "fp32"), timed(z, codes, cosine, "bf16")
            result = {"codes": num_codes, "dim": dim, "cosine": cosine, "rows": name, "mismatches": mismatches,
                      "mismatches_that_tie": ties, "fp32_ms": round(t32 * 1e3, 2), "bf16_ms": round(t16 * 1e3, 2)}
            results.append(result)
            print(json.dumps(result), flush=True)
    print("ALL_EXACT" if all(r["mismatches"] == r["mismatches_that_tie"] for r in results) else "MISMATCH")


if __name__ == "__main__":
    main()
