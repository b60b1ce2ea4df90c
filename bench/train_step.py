"""A whole training step against diffusers' ``VQModel`` / ``AutoencoderKL`` on the same architecture, in one run.

    THP_MEM_ALLOC_ENABLE=1 python bench/train_step.py [--repeats 5] [--cases vq,kl] [--batch 4] [--size 128]

The network on both sides: a conv f8 autoencoder, 4 levels of 64-128-256-256 channels, 2 residual blocks per
encoder level (3 per decoder level), one mid attention block with a residual block on each side, GroupNorm(32),
4 latent channels; VQ with 8,192 codes, or a diagonal Gaussian (KL). One step: forward, L1 + bottleneck loss,
backward, AdamW. Each implementation runs in its own process; reported: median step time over ``--repeats`` after a
warm-up, the spread (min-max), the FLOPs of the step as ``torch.utils.flop_counter`` counts them, the share of this
machine's measured fp32 GEMM rate that reaches (MFU), and peak memory (growth of the resident set's high-water mark).

On a GPU (the same comparison, both sides switched alike):

    python bench/train_step.py --device cuda --bf16 --channels-last --compile --batch 32 --size 256 --repeats 20

``--bf16`` runs forward and loss under bf16 autocast (MFU then against the bf16 GEMM rate), ``--channels-last`` puts
weights and images in NHWC, ``--compile`` wraps each side's step loss in ``torch.compile``; peak memory on CUDA is
``torch.cuda.max_memory_allocated``.
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

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # run from a checkout

WIDTHS = (64, 128, 256, 256)
LATENT = 4
CODES = 8192


def build(impl: str, case: str):
    """``(model, step_loss(images) -> loss)`` for one side."""

    if impl == "vtok":
        from vtok import Tokenizer

        trunk = {"kind": "conv", "channels": WIDTHS[0], "channel_mult": [w // WIDTHS[0] for w in WIDTHS],
                 "num_res_blocks": 2, "attention": True}
        quantizer = ({"kind": "vq", "codebook_size": CODES, "codebook_dim": None, "l2_normalize": False,
                      "data_init": False} if case == "vq" else {"kind": "gaussian", "kl_weight": 1e-6})
        out_dim = LATENT if case == "vq" else 2 * LATENT
        model = Tokenizer(encoder={**trunk, "out_dim": out_dim}, quantizer=quantizer, decoder=trunk, image_size=128)

        def step_loss(images):
            output = model(images)
            return (output.reconstruction - images).abs().mean() + sum(output.losses.values())

        return model, step_loss
    from diffusers import AutoencoderKL, VQModel

    common = {"in_channels": 3, "out_channels": 3, "block_out_channels": WIDTHS, "layers_per_block": 2,
              "latent_channels": LATENT, "norm_num_groups": 32,
              "down_block_types": ("DownEncoderBlock2D",) * 4, "up_block_types": ("UpDecoderBlock2D",) * 4}
    if case == "vq":
        model = VQModel(**common, num_vq_embeddings=CODES, vq_embed_dim=LATENT)

        def step_loss(images):
            h = model.encode(images).latents
            quantized, commitment, _ = model.quantize(h)
            return (model.decode(quantized, force_not_quantize=True).sample - images).abs().mean() + commitment

        return model, step_loss
    model = AutoencoderKL(**common)

    def step_loss(images):
        posterior = model.encode(images).latent_dist
        reconstruction = model.decode(posterior.sample()).sample
        return (reconstruction - images).abs().mean() + 1e-6 * posterior.kl().mean()

    return model, step_loss


def _status_kib(field: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field):
                return int(line.split()[1])
    return 0


def run_one(impl: str, case: str, repeats: int, batch: int, size: int, device: str = "cpu", bf16: bool = False,
            channels_last: bool = False, compile: bool = False) -> dict:
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    torch.manual_seed(0)
    model, step_loss = build(impl, case)
    model.train().to(device)
    images = torch.rand(batch, 3, size, size, device=device) * 2 - 1
    if channels_last:
        model.to(memory_format=torch.channels_last)
        images = images.contiguous(memory_format=torch.channels_last)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
    loss_fn = torch.compile(step_loss) if compile else step_loss

    def forward(fn):
        with torch.autocast(device_type=device.split(":")[0], dtype=torch.bfloat16, enabled=bf16):
            return fn(images)

    def sync() -> None:
        if device.startswith("cuda"):
            torch.cuda.synchronize()

    def step() -> None:
        optimizer.zero_grad(set_to_none=True)
        forward(loss_fn).backward()
        optimizer.step()

    with FlopCounterMode(display=False) as counter:
        forward(step_loss).backward()
    flops = counter.get_total_flops()
    optimizer.zero_grad(set_to_none=True)
    with open("/proc/self/clear_refs", "w") as f:  # reset the high-water mark to the current resident set
        f.write("5")
    base = _status_kib("VmRSS")
    for _ in range(3 if compile else 1):  # warm-up (and compilation)
        step()
    sync()
    if device.startswith("cuda"):
        torch.cuda.reset_peak_memory_stats()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        step()
        sync()
        times.append(time.perf_counter() - start)
    peak = (torch.cuda.max_memory_allocated() // 1024 if device.startswith("cuda")
            else _status_kib("VmHWM") - base)
    return {"median": statistics.median(times), "min": min(times), "max": max(times), "flops": flops,
            "peak_mib": peak / 1024, "params": sum(p.numel() for p in model.parameters())}


def gemm_gflops(device: str = "cpu", bf16: bool = False) -> float:
    import torch

    dtype = torch.bfloat16 if bf16 else torch.float32
    a, b = (torch.randn(4096, 4096, device=device, dtype=dtype) for _ in range(2))
    a @ b
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(3):
        a @ b
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    return 3 * 2 * 4096**3 / (time.perf_counter() - start) / 1e9


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--cases", default="vq,kl")
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--size", type=int, default=128)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--bf16", action="store_true", help="bf16 autocast for forward and loss")
    parser.add_argument("--channels-last", action="store_true")
    parser.add_argument("--compile", action="store_true", help="torch.compile each side's step loss")
    parser.add_argument("--one", nargs=2, metavar=("IMPL", "CASE"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    switches = [*(["--bf16"] if args.bf16 else []), *(["--channels-last"] if args.channels_last else []),
                *(["--compile"] if args.compile else [])]
    if args.one:
        print(json.dumps(run_one(*args.one, args.repeats, args.batch, args.size, args.device, args.bf16,
                                 args.channels_last, args.compile)))
        return
    peak = gemm_gflops(args.device, args.bf16)
    print(f"{'bf16' if args.bf16 else 'fp32'} GEMM 4096^3 on {args.device}: {peak:.0f} GFLOP/s; "
          f"switches: {' '.join(switches) or 'none'}; THP_MEM_ALLOC_ENABLE={os.environ.get('THP_MEM_ALLOC_ENABLE')}")
    print("| case | diffusers s (min-max) | vtok s (min-max) | vtok / peer speed | MFU peer | MFU vtok | "
          "GFLOP per step (peer, vtok) | params M (peer, vtok) | peak MiB (peer, vtok) |")
    print("|---|---|---|---|---|---|---|---|---|")
    for case in args.cases.split(","):
        results = {}
        for impl in ("diffusers", "vtok"):
            proc = subprocess.run([sys.executable, __file__, "--one", impl, case, "--repeats", str(args.repeats),
                                   "--batch", str(args.batch), "--size", str(args.size), "--device", args.device,
                                   *switches],
                                  capture_output=True, text=True)
            if proc.returncode:
                sys.exit(f"{impl} {case} failed:\n{proc.stderr[-3000:]}")
            results[impl] = json.loads(proc.stdout.strip().splitlines()[-1])
        d, v = results["diffusers"], results["vtok"]
        mfu = {k: r["flops"] / r["median"] / 1e9 / peak for k, r in results.items()}
        print(f"| {case} | {d['median']:.2f} ({d['min']:.2f}-{d['max']:.2f}) | {v['median']:.2f} "
              f"({v['min']:.2f}-{v['max']:.2f}) | {d['median'] / v['median']:.2f}x | {mfu['diffusers']:.0%} | "
              f"{mfu['vtok']:.0%} | {d['flops'] / 1e9:.1f}, {v['flops'] / 1e9:.1f} | {d['params'] / 1e6:.1f}, "
              f"{v['params'] / 1e6:.1f} | {d['peak_mib']:.0f}, {v['peak_mib']:.0f} |")


if __name__ == "__main__":
    resource.setrlimit(resource.RLIMIT_AS, (16 * 2**30, 16 * 2**30))
    main()
