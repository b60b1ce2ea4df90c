"""Quantizer speed and memory against vector-quantize-pytorch, in the same run.

    THP_MEM_ALLOC_ENABLE=1 python bench/quantizers.py [--repeats 5] [--cases vq16k,fsq]

Each case runs forward + backward in training mode on 8,192 tokens, in a fresh process per implementation;
peak memory is the growth of the resident set's high-water mark (reset just before the first pass) over the
resident set at that moment, so it counts the case's own temporaries and nothing imported before. Reported:
median time, peak memory, ratios (peer / vtok), and the fraction of this machine's measured fp32 matmul rate
that the case's nominal FLOPs reach.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time

TOKENS = 8192
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # run from a checkout

# name: (vtok config, peer constructor source, input dim, nominal FLOPs of the forward matmul-like work).
# Wide VQ cases use ``search: auto`` (bf16 with a certified re-rank where the CPU has AMX); ``*_fp32`` force fp32.
CASES = {
    "vq16k": ({"kind": "vq", "dim": 256, "codebook_size": 16384, "codebook_dim": None, "l2_normalize": False,
               "data_init": False},
              "VectorQuantize(dim=256, codebook_size=16384, decay=0.8, commitment_weight=0.25)", 256,
              2 * TOKENS * 16384 * 256),
    "vq16k_fp32": ({"kind": "vq", "dim": 256, "codebook_size": 16384, "codebook_dim": None, "l2_normalize": False,
                    "data_init": False, "search": "fp32"},
                   "VectorQuantize(dim=256, codebook_size=16384, decay=0.8, commitment_weight=0.25)", 256,
                   2 * TOKENS * 16384 * 256),
    "vq16k_cosine": ({"kind": "vq", "dim": 256, "codebook_size": 16384, "codebook_dim": None, "l2_normalize": True,
                      "data_init": False},
                     "VectorQuantize(dim=256, codebook_size=16384, use_cosine_sim=True, commitment_weight=0.25)", 256,
                     2 * TOKENS * 16384 * 256),
    "vq16k_lowdim8": ({"kind": "vq", "dim": 256, "codebook_size": 16384, "codebook_dim": 8, "l2_normalize": True,
                       "data_init": False},
                      "VectorQuantize(dim=256, codebook_size=16384, codebook_dim=8, use_cosine_sim=True, "
                      "commitment_weight=0.25)", 256, 2 * TOKENS * 16384 * 8),
    "fsq": ({"kind": "fsq", "levels": [8, 8, 8, 5, 5, 5], "dim": 256},
            "FSQ(levels=[8, 8, 8, 5, 5, 5], dim=256)", 256, 0),
    "lfq14": ({"kind": "lfq", "bits": 14, "dim": 256, "codebook_entropy": "exact"},
              "LFQ(dim=256, codebook_size=2**14, entropy_loss_weight=0.1, commitment_loss_weight=0.25)", 256,
              2 * TOKENS * 2**14),
    "lfq14_factorized": ({"kind": "lfq", "bits": 14, "dim": 256, "codebook_entropy": "factorized"},
                         "LFQ(dim=256, codebook_size=2**14, entropy_loss_weight=0.1, commitment_loss_weight=0.25)",
                         256, 0),
    "lfq18": ({"kind": "lfq", "bits": 18, "dim": 256, "codebook_entropy": "exact"},
              "LFQ(dim=256, codebook_size=2**18, entropy_loss_weight=0.1, commitment_loss_weight=0.25)", 256,
              2 * TOKENS * 2**18),
    "lfq18_factorized": ({"kind": "lfq", "bits": 18, "dim": 256, "codebook_entropy": "factorized"},
                         "LFQ(dim=256, codebook_size=2**18, entropy_loss_weight=0.1, commitment_loss_weight=0.25)",
                         256, 0),
    "bsq18": ({"kind": "bsq", "bits": 18, "dim": 256},
              "LFQ(dim=256, codebook_size=2**18, spherical=True, entropy_loss_weight=0.1, "
              "commitment_loss_weight=0.25)", 256, 0),
    "rvq4x4096": ({"kind": "residual", "dim": 256, "depth": 4,
                   "quantizer": {"kind": "vq", "codebook_size": 4096, "codebook_dim": None, "l2_normalize": False,
                                 "data_init": False}},
                  "ResidualVQ(dim=256, num_quantizers=4, codebook_size=4096)", 256, 4 * 2 * TOKENS * 4096 * 256),
    "rvq4x4096_fp32": ({"kind": "residual", "dim": 256, "depth": 4,
                        "quantizer": {"kind": "vq", "codebook_size": 4096, "codebook_dim": None, "l2_normalize": False,
                                      "data_init": False, "search": "fp32"}},
                       "ResidualVQ(dim=256, num_quantizers=4, codebook_size=4096)", 256, 4 * 2 * TOKENS * 4096 * 256),
}


def _status_mib(field: str) -> float:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024
    raise KeyError(field)


def _reset_peak() -> float:
    """Reset the resident-set high-water mark (Linux) and return the current resident set in MiB."""
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")
    return _status_mib("VmRSS")


def run_one(case: str, impl: str, repeats: int) -> dict:
    """In this process: build, warm up, time ``repeats`` forward+backward passes, report peak RSS growth."""
    import torch

    torch.manual_seed(0)
    config, peer_source, dim, _ = CASES[case]
    if impl == "vtok":
        from vtok.quantizers import build_quantizer

        module = build_quantizer(dict(config)).train()

        def step(z):
            out = module(z)
            loss = out.quantized.float().pow(2).mean() + sum(out.losses.values(), torch.zeros(()))
            loss.backward()
    else:
        import vector_quantize_pytorch as vqp

        peers = {name: getattr(vqp, name) for name in ("VectorQuantize", "FSQ", "LFQ", "ResidualVQ")}
        module = eval(peer_source, peers)
        module.train()

        def step(z):
            out = module(z)
            quantized, aux = out[0], out[-1] if len(out) > 2 else None
            loss = quantized.float().pow(2).mean()
            if aux is not None and torch.is_tensor(aux):
                loss = loss + aux.sum()
            loss.backward()

    z = torch.randn(1, TOKENS, dim)
    baseline = _reset_peak()
    times = []
    try:
        for i in range(repeats + 1):
            x = z.clone().requires_grad_()
            start = time.perf_counter()
            step(x)
            if i:  # the first pass is a warm-up
                times.append(time.perf_counter() - start)
    except RuntimeError as error:  # out of memory and similar
        return {"error": f"{type(error).__name__}: {str(error)[:200]}"}
    return {"seconds": statistics.median(times), "min": min(times), "max": max(times),
            "peak_mib": _status_mib("VmHWM") - baseline}


def matmul_gflops() -> float:
    import torch

    a, b = torch.randn(4096, 4096), torch.randn(4096, 4096)
    a @ b
    best = min(_timed(lambda: a @ b) for _ in range(5))
    return 2 * 4096**3 / best / 1e9


def _timed(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--cases", default=",".join(CASES))
    parser.add_argument("--one", nargs=2, metavar=("CASE", "IMPL"), help=argparse.SUPPRESS)
    parser.add_argument("--memory-limit-gib", type=float, default=16.0,
                        help="address-space cap per process, so a peer that runs out of memory fails cleanly")
    args = parser.parse_args()
    if args.one:
        limit = int(args.memory_limit_gib * 2**30)
        resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
        print(json.dumps(run_one(*args.one, args.repeats)))
        return

    peak = matmul_gflops()
    print(f"fp32 matmul 4096^3: {peak:.0f} GFLOP/s; torch threads {__import__('torch').get_num_threads()}")
    print("| case | vtok s (min-max) | peer s (min-max) | speed-up | vtok MiB | peer MiB | memory ratio | "
          "vtok % of matmul peak |")
    print("|---|---|---|---|---|---|---|---|")
    for case in args.cases.split(","):
        results = {}
        for impl in ("vtok", "peer"):
            proc = subprocess.run([sys.executable, __file__, "--one", case, impl, "--repeats", str(args.repeats),
                                   "--memory-limit-gib", str(args.memory_limit_gib)],
                                  capture_output=True, text=True, env=os.environ)
            lines = [line for line in proc.stdout.splitlines() if line.startswith("{")]
            error = (proc.stderr.strip().splitlines() or ["?"])[-1][:200]
            results[impl] = json.loads(lines[-1]) if lines else {"error": error}
        v, p = results["vtok"], results["peer"]
        flops = CASES[case][3]
        def fmt(r, k, f):
            return f.format(r[k]) if k in r else "fails"

        def timed(r):
            return f"{r['seconds']:.3f} ({r['min']:.3f}-{r['max']:.3f})" if "seconds" in r else "fails"
        speed = f"{p['seconds'] / v['seconds']:.1f}x" if "seconds" in v and "seconds" in p else "-"
        memory = f"{p['peak_mib'] / max(v['peak_mib'], 1):.1f}x" if "peak_mib" in v and "peak_mib" in p else "-"
        share = f"{100 * flops / v['seconds'] / 1e9 / peak:.0f}%" if flops and "seconds" in v else "-"
        print(f"| {case} | {timed(v)} | {timed(p)} | {speed} | "
              f"{fmt(v, 'peak_mib', '{:.0f}')} | {fmt(p, 'peak_mib', '{:.0f}')} | {memory} | {share} |", flush=True)
        for impl, r in results.items():
            if "error" in r:
                print(f"  {case} {impl}: {r['error']}", flush=True)


if __name__ == "__main__":
    main()
