#!/usr/bin/env bash
# The autoregressive probe on the quick start.
#   bash scripts/probe_quickstart.sh table    the full recipe (555 s) trained, evaluated and probed
#                                            (eval.ar_probe=true): the README's rate-distortion table
#   bash scripts/probe_quickstart.sh compare  one change: 512 against 4,096 codes, each trained for STEPS steps
#                                            (a step count, not a time budget, so a busy machine changes nothing)
#                                            over SEEDS, each probed with the same prior settings
# Extra arguments after the mode go to every run.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
MODE=${1:-table}; shift || true
STEPS=${STEPS:-800}
SEEDS=${SEEDS:-"0 1 2"}
if [ "$MODE" = table ]; then
    $PY train.py experiment=quickstart eval.ar_probe=true probe.split=test run_name=quickstart_probe "$@"
    $PY scripts/probe_table.py table quickstart_probe
elif [ "$MODE" = compare ]; then
    runs=()
    for codes in 512 4096; do
        for seed in $SEEDS; do
            run=quickstart_codes${codes}_seed$seed
            $PY train.py experiment=quickstart eval.ar_probe=true probe.split=test quantizer.codebook_size=$codes \
                module.time_budget=null trainer.max_steps=$STEPS seed=$seed run_name=$run "$@"
            runs+=("$codes:$run")
        done
    done
    $PY scripts/probe_table.py compare "${runs[@]}"
else
    echo "usage: $0 table|compare [overrides]" >&2; exit 2
fi
