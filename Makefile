# smartbench — the two commands: `make bench` and `make test`. Both install what they need first.
PY      := .venv/bin/python
STAMP   := .venv/.installed
FMNIST  := /usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz
export WANDB_MODE ?= offline
export WANDB_SILENT ?= true
# cells in parallel for `make bench` (each worker gets cores / workers CPU threads)
BENCH_WORKERS ?= 2

.PHONY: install bench test clean-results

install: $(STAMP)

$(STAMP): requirements.txt requirements-mm.txt pyproject.toml scripts/build_mmcv.sh scripts/mmcv_unity.py
	@test -f $(FMNIST) || { command -v apt-get >/dev/null && \
	  (apt-get install -y -q dataset-fashion-mnist >/dev/null 2>&1 || \
	   (apt-get update -q >/dev/null && apt-get install -y -q dataset-fashion-mnist >/dev/null)) \
	  || echo "warning: could not install dataset-fashion-mnist; set SMARTBENCH_DATA to a Fashion-MNIST copy"; }
	test -x $(PY) || python3 -m venv .venv
	$(PY) -m pip install -q -r requirements.txt
	$(PY) -m pip install -q wheel ninja
	scripts/build_mmcv.sh $(PY)
	$(PY) -m pip install -q -r requirements-mm.txt
	$(PY) -m pip install -q --no-deps --no-build-isolation -e .
	touch $(STAMP)

bench: install
	.venv/bin/smartbench suite run quick --workers $(BENCH_WORKERS)
	.venv/bin/smartbench table quick --format md

test: install
	$(PY) -m pytest -q tests
