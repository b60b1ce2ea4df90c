"""What a flow decoder's sampling costs: images per second against steps, against one pass of a deterministic decoder
of about the same parameters, and a batched call against decoding the same images one at a time.

    THP_MEM_ALLOC_ENABLE=1 python bench/flow_decode.py [--preset flextok_small --batch 16 --repeats 5]

Both decoders are the presets' (``flextok_small``: flow, 4 adaLN blocks; ``flextok_small_vit``: ViT, 6 blocks, about
the same parameters) at their training size, untrained (speed does not depend on the weights), in eval mode under
``torch.no_grad``, timed on the same random tokens in one process, alternating, best of ``--repeats``.
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # run from a checkout


def build(preset: str):
    from hydra import compose, initialize_config_dir
    from hydra.utils import instantiate

    configs = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "configs")
    with initialize_config_dir(version_base="1.3", config_dir=configs):
        cfg = compose(config_name="train", overrides=[f"experiment={preset}"])
    return instantiate(cfg.model).eval()


def best_seconds(fn, repeats: int) -> float:
    fn()  # warm-up
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


def main() -> None:
    import torch

    parser = argparse.ArgumentParser()
    parser.add_argument("--preset", default="flextok_small")
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--steps", type=int, nargs="+", default=[1, 4, 16, 25])
    args = parser.parse_args()
    torch.manual_seed(0)
    flow, vit = build(args.preset), build(f"{args.preset}_vit")
    size = flow.image_size
    images = torch.rand(args.batch, 3, size, size) * 2 - 1
    print(f"# {platform.processor() or platform.machine()}, torch {torch.__version__}, {torch.get_num_threads()} "
          f"threads, THP_MEM_ALLOC_ENABLE={os.environ.get('THP_MEM_ALLOC_ENABLE', '0')}; batch {args.batch} at "
          f"{size} px; flow decoder {sum(p.numel() for p in flow.decoder.parameters()) / 1e6:.2f} M, ViT decoder "
          f"{sum(p.numel() for p in vit.decoder.parameters()) / 1e6:.2f} M parameters")
    with torch.no_grad():
        tokens, vit_tokens = flow.encode(images), vit.encode(images)
        one_pass = best_seconds(lambda: vit.decode(vit_tokens), args.repeats)
        print(f"ViT decoder, one pass: {args.batch / one_pass:,.0f} images/s")
        print("| steps | solver | images/s | x the ViT decoder's time |")
        print("| --- | --- | --- | --- |")
        for solver in ("euler", "heun"):
            for steps in args.steps:
                seconds = best_seconds(lambda s=steps, o=solver: flow.decode(tokens, steps=s, solver=o), args.repeats)
                print(f"| {steps} | {solver} | {args.batch / seconds:,.1f} | {seconds / one_pass:.1f} |")
        steps = 16
        batched = best_seconds(lambda: flow.decode(tokens, steps=steps), args.repeats)
        for i in range(2):  # warm-up
            flow.decode_indices(tokens.indices[i: i + 1], steps=steps)
        start = time.perf_counter()
        for i in range(args.batch):
            flow.decode_indices(tokens.indices[i: i + 1], steps=steps)
        one_by_one = time.perf_counter() - start
        guided = best_seconds(lambda: flow.decode(tokens, steps=steps, guidance=2.0), args.repeats)
    print(f"{steps} Euler steps: one batched call {args.batch / batched:,.1f} images/s, one image per call "
          f"{args.batch / one_by_one:,.1f} images/s ({one_by_one / batched:.1f}x slower); with guidance 2.0 "
          f"{args.batch / guided:,.1f} images/s ({guided / batched:.2f}x the unguided time: both branches in one pass)")


if __name__ == "__main__":
    main()
