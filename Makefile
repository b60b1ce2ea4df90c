# vtok: `make quickstart` trains and evaluates the embedded default on this CPU; `make test` runs the tests.
# Both create/refresh .venv first. GPU users: see README ("Installing on a GPU machine").

VENV   ?= .venv
PYTHON ?= python3
PY     := $(VENV)/bin/python
# The CPU/CI machines have these two wheels on local disk; other versions download gigabytes.
TORCH  ?= torch==2.14.1 torchvision==0.29.1
PYTEST_ARGS ?=

# Huge pages for torch's CPU allocator: 1.5-1.8x faster on large temporaries.
export THP_MEM_ALLOC_ENABLE = 1

.PHONY: install quickstart test test-fast test-minimum lint bench clean

$(VENV)/.installed: pyproject.toml Makefile
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q $(TORCH)
	$(PY) -m pip install -q -e '.[dev]'
	# taming-transformers' reference Encoder / Decoder for the import tests; its declared dependencies (Lightning
	# 1.x among them) are not needed for those modules, so it goes in without them
	$(PY) -m pip install -q --no-deps taming-transformers-rom1504==0.0.6 einops==0.8.2
	touch $@

install: $(VENV)/.installed

quickstart: install
	$(PY) train.py experiment=quickstart

test: install
	$(PY) -m pytest -q $(PYTEST_ARGS)

# Ruff, pinned in pyproject.toml with its rule set; CI runs it before the tests.
lint: install
	$(PY) -m ruff check .

# The declared minimum Lightning (pyproject.toml) with this machine's torch: a toy run on one process, DDP and FSDP.
# Older torch wheels are not on this machine's disk with a matching torchvision (PyPI's are gigabytes of CUDA):
# torch's minimum is not checked here (see pyproject.toml).
MIN_VENV ?= .venv-min
test-minimum:
	$(PYTHON) -m venv $(MIN_VENV)
	$(MIN_VENV)/bin/python -m pip install -q $(TORCH)
	$(MIN_VENV)/bin/python -m pip install -q -e . lightning==2.4.0
	$(MIN_VENV)/bin/python -c "import lightning; assert lightning.__version__ == '2.4.0', lightning.__version__"
	rm -rf $(MIN_VENV)/run && mkdir -p $(MIN_VENV)/run && ln -s $(CURDIR)/train.py $(CURDIR)/configs $(MIN_VENV)/run/
	cd $(MIN_VENV)/run && ../bin/python train.py experiment=quickstart scale=toy data=synthetic eval.split=val \
		trainer.max_steps=3 evaluate=true
	cd $(MIN_VENV)/run && ../bin/python train.py experiment=vqgan_f16 scale=toy data=synthetic trainer=ddp \
		trainer.accelerator=cpu trainer.devices=2 trainer.max_steps=3
	cd $(MIN_VENV)/run && ../bin/python train.py experiment=titok_s128 scale=toy data=synthetic trainer=fsdp \
		trainer.accelerator=cpu trainer.devices=2 trainer.max_steps=3
	@echo "lightning 2.4.0 (the declared minimum) trains on one process, DDP and FSDP"

test-fast: install
	$(PY) -m pytest -q -m "not slow" $(PYTEST_ARGS)

# Quantizer speed/memory against vector-quantize-pytorch, whole train steps against diffusers, the data path against
# webdataset + PIL + torchvision, and where a quick-start step goes (bench/RESULTS.md).
bench: install
	$(PY) -m pip install -q -e '.[dev,bench]'
	$(PY) bench/quantizers.py --repeats 3
	$(PY) bench/vq_search.py
	$(PY) bench/train_step.py --repeats 5
	$(PY) bench/data.py --repeats 3
	$(PY) bench/quickstart_step.py --steps 200

clean:
	rm -rf outputs data/samples .pytest_cache
