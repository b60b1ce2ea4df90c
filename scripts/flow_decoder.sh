#!/usr/bin/env bash
# The flow decoder against a deterministic decoder, one thing changed: experiment=flextok_small (rectified-flow
# decoder, flow loss) and experiment=flextok_small_vit (ViT decoder of the same width and depth, L2 loss), the same
# encoder, bottleneck, data (the sample photos at 64 px), time budget and evaluation (the 8 test photos), each with
# training seeds 0, 1, 2. Prints the table of README "Generative decoders" (means and spread over the seeds).
#   bash scripts/flow_decoder.sh [extra overrides for every run, e.g. module.time_budget=60]
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
for seed in 0 1 2; do
    for preset in flextok_small flextok_small_vit; do
        $PY train.py experiment=$preset seed=$seed run_name=${preset}_seed$seed "$@"
    done
done
$PY scripts/flow_decoder_table.py outputs
