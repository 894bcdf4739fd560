# make demo: weightgen quickstart (zoo, encoders, generators, sample + evaluate).   make test: run the test suite.
# Both create .venv on first use and install with constraints.txt (torch==2.13.0, the local CPU wheel).
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo test bench lint clean

$(STAMP): pyproject.toml constraints.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --disable-pip-version-check --no-warn-script-location -c constraints.txt torch==2.13.0
	$(BIN)/pip install -q --disable-pip-version-check --no-warn-script-location -c constraints.txt -e '.[dev]'
	$(BIN)/python -c "import torch, weightgen; assert torch.__version__.startswith('2.13.0'), torch.__version__"
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/weightgen quickstart

test: $(STAMP)
	$(BIN)/python -m pytest tests

bench: $(STAMP)
	$(BIN)/python benchmarks/bench_zoo.py
	$(BIN)/weightgen zoo build configs/zoo/digits-mlp.yaml --out runs/zoo/digits-mlp --quiet
	$(BIN)/weightgen zoo build configs/zoo/digits-mlp-independent.yaml --out runs/zoo/digits-mlp-independent --quiet
	$(BIN)/python benchmarks/bench_encoders.py

lint: $(STAMP)
	$(BIN)/ruff check .

clean:
	rm -rf runs .pytest_cache
