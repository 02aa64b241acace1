# One entry point for setting up, testing, the demo and the benchmarks.
# Everything is installed into .venv by `make install` (a dependency of every target), on a fresh machine too;
# `make test` also builds .venv-mirror (the Hub-mirror server the download tests run).
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
# torch first, pinned: 2.13.0 is a CPU build here; letting pip pick torch would pull several GB of CUDA packages.
TORCH  ?= torch==2.13.0

.PHONY: install test demo bench lint format docs clean

install: $(STAMP)

# PYTHONWARNINGS=ignore on the editable install: setuptools' information-only notices are not for the user.
$(STAMP): pyproject.toml Makefile
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q $(TORCH)
	PYTHONWARNINGS=ignore $(BIN)/python -m pip install -q -e '.[test,metrics]'
	touch $@

test: install
	$(BIN)/python -m pytest -q -n 2 --durations=15

lint: install
	$(BIN)/ruff check llmtune tests bench
	$(BIN)/ruff format --check llmtune tests bench

format: install
	$(BIN)/ruff format llmtune tests bench
	$(BIN)/ruff check --fix llmtune tests bench

docs: install
	$(BIN)/python -m llmtune.docgen > docs/recipes.md

# CPU benchmarks (about 10 minutes; docs/benchmarks.md); BENCH_ARGS=--quick checks the suite in a minute or two.
bench: install
	$(BIN)/python -m bench.run_all $(BENCH_ARGS)

# The pipeline on the built-in data, CPU only: a tiny base -> pt -> sft -> dpo, each recipe reading the previous
# run's output dir; then a reward model on the sft model and best-of-N data from it; then GRPO from the sft run with
# that reward model as its reward, compared with the sft run (reward-model score, exact match); and a topic classifier
# on the base. Re-running replaces the runs.
DEMO_SET := --set output.overwrite=true
demo: install
	test -f data/builtin/eval_cls.jsonl || $(BIN)/llmtune synth-data data/builtin --overwrite
	test -d runs/demo/base || $(BIN)/llmtune init-model runs/demo/base --preset tiny
	$(BIN)/llmtune pt --recipe recipes/demo/pt.yaml $(DEMO_SET)
	$(BIN)/llmtune sft --recipe recipes/demo/sft-lora.yaml $(DEMO_SET)
	@echo "== before (pretrained base) vs after LoRA SFT, on held-out tasks: loss, perplexity, exact match =="
	$(BIN)/llmtune eval --model runs/demo/pt --compare runs/demo/sft --data data/builtin/eval_messages.jsonl \
		--max-samples 96 --max-new-tokens 16 --show 4 --out runs/demo/eval-sft.json
	$(BIN)/llmtune dpo --recipe recipes/demo/dpo.yaml $(DEMO_SET)
	@echo "== answers after SFT vs after DPO, on held-out prompts =="
	$(BIN)/llmtune eval --model runs/demo/sft --compare runs/demo/dpo --data data/builtin/eval_messages.jsonl \
		--max-samples 32 --max-new-tokens 16 --show 4
	$(BIN)/llmtune rm --recipe recipes/demo/rm.yaml $(DEMO_SET)
	$(BIN)/llmtune bon --model runs/demo/sft --reward runs/demo/rm --prompts data/builtin/eval_preference.jsonl \
		--n 4 --max-new-tokens 32 --out runs/demo/bon --overwrite
	$(BIN)/llmtune eval --model runs/demo/dpo --reference runs/demo/sft --data data/builtin/eval_preference.jsonl \
		--no-generate
	$(BIN)/llmtune eval --model runs/demo/rm --data data/builtin/eval_preference.jsonl
	@echo "== an exam (MMLU prompt and scoring, 5-shot per subject): base vs SFT =="
	$(BIN)/llmtune eval --model runs/demo/pt --compare runs/demo/sft --data data/builtin/eval_mc.jsonl \
		--shots 5 --dev data/builtin/dev_mc.jsonl
	@echo "== a topic classifier (LoRA, 3 labels) on the base: held-out accuracy, then a few predictions =="
	$(BIN)/llmtune cls --recipe recipes/demo/cls.yaml $(DEMO_SET)
	$(BIN)/llmtune eval --model runs/demo/cls --data data/builtin/eval_cls.jsonl
	$(BIN)/llmtune predict --model runs/demo/cls --data data/builtin/eval_cls.jsonl --max-samples 5
	$(BIN)/llmtune report runs/demo/pt runs/demo/sft runs/demo/dpo runs/demo/rm --out runs/demo/report.html
	$(BIN)/llmtune grpo --recipe recipes/demo/grpo.yaml $(DEMO_SET)
	@echo "== after SFT vs after GRPO (reward: the demo reward model + exact match), on held-out prompts =="
	$(BIN)/llmtune eval --model runs/demo/sft --compare runs/demo/grpo --data data/builtin/eval_messages.jsonl \
		--max-samples 64 --max-new-tokens 16 --reward runs/demo/rm --show 4

clean:
	rm -rf runs/demo data/builtin .cache/llmtune

# --- llmtune download tests: the olah Hub mirror, in its own venv (olah pins psutil 5.9.8 and pulls fastapi,
# uvicorn...; none of that belongs in .venv). tests/hubmirror.py runs it from there, and installs it itself if absent.
MIRROR_VENV ?= .venv-mirror
OLAH        ?= olah==0.5.4

# Only the tests need it: `make test` builds it, `make demo` and the rest do not.
.PHONY: mirror-env
test: $(MIRROR_VENV)/.installed
mirror-env: $(MIRROR_VENV)/.installed

$(MIRROR_VENV)/.installed: Makefile
	test -x $(MIRROR_VENV)/bin/python || $(PYTHON) -m venv $(MIRROR_VENV)
	$(MIRROR_VENV)/bin/python -m pip install -q $(OLAH)
	touch $@
# --- end of the llmtune download block

# --- reliability soak (not in `make test`): long seeded chains of SIGKILLs (mid-step, mid-checkpoint-save) and
# file-size-limit failures on one run per seed, each resumed and compared with the uninterrupted run.
SOAK_KILLS ?= 25
.PHONY: soak
soak: install
	LLMTUNE_SOAK_KILLS=$(SOAK_KILLS) $(BIN)/python -m pytest -q -s -p no:cacheprovider tests/test_crash_resume.py -k soak
# --- end of the reliability soak block
