# One entry point for setting up, testing, the demo and the benchmarks.
# Everything is installed into .venv by `make install` (a dependency of every target), on a fresh machine too.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
# torch first, pinned: 2.13.0 is a CPU build here; letting pip pick torch would pull several GB of CUDA packages.
TORCH  ?= torch==2.13.0

.PHONY: install test demo bench lint format docs clean

install: $(STAMP)

$(STAMP): pyproject.toml Makefile
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q $(TORCH)
	$(BIN)/python -m pip install -q -e '.[test,metrics]'
	touch $@

test: install
	$(BIN)/python -m pytest -q

lint: install
	$(BIN)/ruff check llmtune tests bench
	$(BIN)/ruff format --check llmtune tests bench

format: install
	$(BIN)/ruff format llmtune tests bench
	$(BIN)/ruff check --fix llmtune tests bench

docs: install
	$(BIN)/python -m llmtune.docgen > docs/recipes.md

bench: install
	$(BIN)/python bench/cli_start.py

clean:
	rm -rf runs/demo data/builtin .cache/llmtune
