"""The table of ``scripts/ett_isolation.sh``: each arm's held-out figures, mean and spread over seeds.

    python scripts/ett_isolation_table.py OUTPUTS_DIR SEED [SEED ...]
"""

from __future__ import annotations

import json
import statistics
import sys
from pathlib import Path

ARMS = {"tuned": "stage 2, tokenizer training", "frozen": "stage 2, tokenizer frozen (module.freeze_tokenizer)",
        "recon": "reconstruction only (no caption term)"}


def figures(report: dict) -> dict[str, float | None]:
    caption = report.get("semantic", {}).get("caption", {})
    return {"caption_loss": caption.get("caption_loss"), "psnr": report["psnr"],
            "usage": report.get("codebook_usage")}


def cell(values: list[float | None], digits: int, scale: float = 1.0) -> str:
    values = [v * scale for v in values if v is not None]
    if not values:
        return ""
    spread = f" ± {statistics.stdev(values):.{digits}f}" if len(values) > 1 else ""
    return f"{statistics.mean(values):.{digits}f}{spread} ({', '.join(f'{v:.{digits}f}' for v in values)})"


def main(outputs: Path, seeds: list[str]) -> None:
    print("| run | held-out caption loss | held-out PSNR (dB) | held-out code usage (%) |")
    print("| --- | --- | --- | --- |")
    rows = {}
    for arm, label in ARMS.items():
        reports = [outputs / f"ett_iso_{arm}_s{seed}" / "report.json" for seed in seeds]
        found = [figures(json.loads(path.read_text())) for path in reports if path.exists()]
        rows[arm] = found
        print(f"| {label}, {len(found)} seeds | {cell([f['caption_loss'] for f in found], 3)} | "
              f"{cell([f['psnr'] for f in found], 2)} | {cell([f['usage'] for f in found], 1, 100)} |")
    tuned, frozen = rows["tuned"], rows["frozen"]
    if tuned and frozen and len(tuned) == len(frozen):
        gains = [f["caption_loss"] - t["caption_loss"] for t, f in zip(tuned, frozen, strict=True)]
        print(f"\ncaption loss, frozen minus tuned, per seed: {', '.join(f'{g:+.3f}' for g in gains)} "
              f"(mean {statistics.mean(gains):+.3f})")


if __name__ == "__main__":
    main(Path(sys.argv[1]), sys.argv[2:])
