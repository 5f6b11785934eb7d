# Two commands do everything: `make demo` (trains the three headline models on bundled data) and
# `make test`. Both create .venv and install the package on first use.
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-stamp
DEMO_DIR ?= outputs/demo/$(shell date +%Y-%m-%d_%H-%M-%S)
DEMO_EPOCHS ?= 5

.PHONY: install demo test lint bench bench-train bench-scratch clean

$(STAMP): pyproject.toml
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	# No torch pin: pip resolves a torch/torchvision pair built for each other (see README).
	$(PY) -m pip install --quiet -e ".[dev]"
	touch $(STAMP)

install: $(STAMP)

demo: install
	$(PY) scripts/train.py -m dataset=digits model=standard,depthwise,densenet4 \
		trainer.epochs=$(DEMO_EPOCHS) trainer.batch_size=32 trainer.fast=true trainer.progress_bar=false \
		hydra.sweep.dir=$(DEMO_DIR)
	$(PY) scripts/report.py $(DEMO_DIR)

test: install
	$(PY) -m pytest -q -n 2

lint: install
	$(PY) -m ruff check src tests scripts
	$(PY) -m ruff format --check src tests scripts

bench: install
	$(PY) scripts/bench.py

bench-scratch: install
	$(PY) scripts/bench_scratch.py

clean:
	rm -rf outputs/runs outputs/multirun outputs/demo .pytest_cache
