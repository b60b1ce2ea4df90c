#!/usr/bin/env bash
# The autoregressive probe on the quick start: the full recipe (555 s) trained, evaluated and probed
# (eval.ar_probe=true), then one change at a time: 512 against 4,096 codes, each trained for a shorter budget and
# probed with the same prior settings. Prints the README's rate-distortion table and the comparison.
#   bash scripts/probe_quickstart.sh [extra overrides for every run]
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
$PY train.py experiment=quickstart eval.ar_probe=true probe.split=test run_name=quickstart_probe "$@"
for codes in 512 4096; do
    $PY train.py experiment=quickstart eval.ar_probe=true probe.split=test quantizer.codebook_size=$codes module.time_budget=150 \
        run_name=quickstart_codes$codes "$@"
done
$PY - <<'PY'
import json
from pathlib import Path

def show(run):
    report = json.loads(Path(f"outputs/{run}/report.json").read_text())
    probe = json.loads(Path(f"outputs/{run}/probe/probe_report.json").read_text())
    return report, probe

report, probe = show("quickstart_probe")
rd = probe["rate_distortion"]
print(f"quick start, {probe['images']} held-out photos centre-cropped to 64 px ({probe['split']}), "
      f"tokenizer PSNR {rd['tokenizer']['psnr']:.2f} dB:")
print("| rate | bits per pixel |\n| --- | --- |")
print(f"| tokens x log2(512), raw | {probe['raw_bits_per_pixel']:.4f} |")
print(f"| under the prior ({probe['bits_per_token']:.3f} bits per token) | {probe['bits_per_pixel_under_prior']:.4f} |")
print(f"| coded bytes (range coder, {probe['verified_round_trips']} round trips exact) | {probe['coded_bits_per_pixel']:.4f} |")
print(f"| JPEG at the same PSNR per image | {rd['jpeg']['bits_per_pixel']:.4f} |")
print(f"| WebP at the same PSNR per image | {rd['webp']['bits_per_pixel']:.4f} |")
print("\n| codes | test PSNR | held-out probe bits per token | of raw | coded bpp | codebook usage |")
print("| --- | --- | --- | --- | --- | --- |")
for codes in (512, 4096):
    report, probe = show(f"quickstart_codes{codes}")
    raw = probe["raw_bits_per_pixel"] * 64
    print(f"| {codes} | {report['psnr']:.2f} dB | {probe['bits_per_token']:.3f} | {probe['bits_per_token'] / raw:.0%} | "
          f"{probe['coded_bits_per_pixel']:.4f} | {report.get('codebook_usage', 0):.0%} |")
PY
