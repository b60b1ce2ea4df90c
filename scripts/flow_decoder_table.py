"""The table of README "Generative decoders" from the reports of scripts/flow_decoder.sh: per decoder, the mean and
spread (standard deviation over training seeds) of test PSNR, SSIM and sharpness, PSNR against sampling steps and
against token count, decode speed, parameters and training steps.

    python scripts/flow_decoder_table.py outputs
"""

from __future__ import annotations

import csv
import json
import sys
from pathlib import Path

import numpy as np

PRESETS = {"flextok_small": "flow decoder (16 Euler steps)", "flextok_small_vit": "ViT decoder (one pass)"}


def spread(values: list[float], digits: int = 2) -> str:
    return f"{np.mean(values):.{digits}f} +- {np.std(values):.{digits}f}"


def main(outputs: Path) -> None:
    rows, steps_rows, token_rows = [], [], []
    for preset, label in PRESETS.items():
        reports = [json.loads(p.read_text()) for p in sorted(outputs.glob(f"{preset}_seed*/report.json"))]
        if not reports:
            continue
        def get(key: str, reports: list[dict] = reports) -> list[float]:
            return [r[key] for r in reports]

        trained = [r.get("train_steps", 0) for r in reports]
        rows.append(f"| {label} | {len(reports)} | {spread(get('psnr'))} dB | {spread(get('ssim'), 3)} | "
                    f"{spread(get('sharpness'))} | {np.mean(get('decode_images_per_second')):.0f} | "
                    f"{np.mean(trained):,.0f} |")
        ladder = reports[0]["psnr_vs_tokens"]
        token_rows.append(f"| {label} | " + " | ".join(
            spread([r["psnr_vs_tokens"][k] for r in reports]) for k in ladder) + " |")
        if "quality_vs_steps" in reports[0]:
            steps = reports[0]["quality_vs_steps"]
            steps_rows.append((list(steps), "| " + " | ".join(
                f"{spread([r['quality_vs_steps'][k]['psnr'] for r in reports])} dB "
                f"({np.mean([r['quality_vs_steps'][k]['images_per_second'] for r in reports]):.0f} img/s)"
                for k in steps) + " |"))
            for run in sorted(outputs.glob(f"{preset}_seed*")):  # held-out flow loss at fixed noise, by step
                with open(sorted(run.glob("csv/version_*/metrics.csv"))[-1]) as f:
                    curve = [(int(r["step"]), float(r["val/decoder_loss"])) for r in csv.DictReader(f)
                             if r.get("val/decoder_loss")]
                print(f"{run.name}: held-out flow loss " + ", ".join(f"step {s}: {v:.4f}" for s, v in curve))
            seeds = [r["psnr_over_seeds"]["std"] for r in reports]
            print(f"flow decoder: PSNR spread over sampling seeds (one model), mean over models "
                  f"{np.mean(seeds):.3f} dB")
    print("| decoder | training seeds | test PSNR | SSIM | sharpness | decode images/s | training steps |")
    print("| --- | --- | --- | --- | --- | --- | --- |")
    print("\n".join(rows))
    print("\nPSNR against tokens kept (k of 64):")
    ladder = list(reports[0]["psnr_vs_tokens"])
    print("| decoder | " + " | ".join(ladder) + " |")
    print("| --- |" + " --- |" * len(ladder))
    print("\n".join(token_rows))
    for keys, row in steps_rows:
        print("\nflow decoder, PSNR against sampling steps (decode speed):")
        print("| " + " | ".join(f"{k} steps" for k in keys) + " |")
        print("|" + " --- |" * len(keys))
        print(row)


if __name__ == "__main__":
    main(Path(sys.argv[1] if len(sys.argv) > 1 else "outputs"))
