"""Tables from probe runs (``scripts/probe_quickstart.sh``).

    python scripts/probe_table.py table RUN                  the rate-distortion table of one run
    python scripts/probe_table.py compare LABEL:RUN ...      probe against reconstruction, mean +- std per label
"""

from __future__ import annotations

import json
import statistics
import sys
from collections import defaultdict
from pathlib import Path


def load(run: str) -> tuple[dict, dict]:
    report = json.loads(Path(f"outputs/{run}/report.json").read_text())
    probe = json.loads(Path(f"outputs/{run}/probe/probe_report.json").read_text())
    return report, probe


def table(run: str) -> None:
    _, probe = load(run)
    rd = probe["rate_distortion"]
    print(f"{probe['images']} held-out photos ({probe['split']}), tokenizer PSNR {rd['tokenizer']['psnr']:.2f} dB")
    print("| rate | bits per pixel |\n| --- | --- |")
    print(f"| tokens x log2(vocab), raw | {probe['raw_bits_per_pixel']:.4f} |")
    print(f"| under the prior ({probe['bits_per_token']:.3f} bits per token) | "
          f"{probe['bits_per_pixel_under_prior']:.4f} |")
    print(f"| coded bytes ({probe['verified_round_trips']} round trips exact) | {probe['coded_bits_per_pixel']:.4f} |")
    print(f"| JPEG at the same PSNR per image | {rd['jpeg']['bits_per_pixel']:.4f} |")
    print(f"| WebP at the same PSNR per image | {rd['webp']['bits_per_pixel']:.4f} |")


def spread(values: list[float], fmt: str) -> str:
    std = statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{format(statistics.mean(values), fmt)} +- {format(std, fmt)}"


def compare(pairs: list[str]) -> None:
    rows: dict[str, list[tuple[dict, dict]]] = defaultdict(list)
    for pair in pairs:
        label, run = pair.split(":", 1)
        rows[label].append(load(run))
    print("| codes | seeds | test PSNR (dB) | codebook usage | probe bits per token | of raw | "
          "coded bits per pixel | probe sample FID |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- |")
    for label, runs in rows.items():
        psnr = [r["psnr"] for r, _ in runs]
        usage = [r.get("codebook_usage", float("nan")) * 100 for r, _ in runs]
        bits = [p["bits_per_token"] for _, p in runs]
        share = [p["bits_per_token"] / p["raw_bits_per_token"] * 100 for _, p in runs]
        coded = [p["coded_bits_per_pixel"] for _, p in runs]
        fid = [p["sample_fid"] for _, p in runs if p.get("sample_fid") is not None]
        print(f"| {label} | {len(runs)} | {spread(psnr, '.2f')} | {spread(usage, '.0f')}% | {spread(bits, '.3f')} | "
              f"{spread(share, '.0f')}% | {spread(coded, '.4f')} | {spread(fid, '.1f') if fid else 'n/a'} |")


if __name__ == "__main__":
    mode, *args = sys.argv[1:]
    table(*args) if mode == "table" else compare(args)
