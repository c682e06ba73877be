# One command to set up and test, one to set up and run the demo.
# Both create .venv when missing; torch comes from the local wheel cache (see README).
PY ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
TORCH_PINS := torch==2.14.1 torchvision==0.29.1
STAMP := $(VENV)/.installed

.PHONY: setup test test-fast lint format demo bench-smoke examples-smoke clean

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	# torch first, pinned to the build on local disk, so nothing pulls a multi-GB download.
	$(BIN)/pip install -q $(TORCH_PINS)
	$(BIN)/pip install -q "torchaudio>=2.11,<2.12" $(TORCH_PINS)
	$(BIN)/pip install -q -e ".[all,dev]" $(TORCH_PINS)
	touch $(STAMP)

setup: $(STAMP)

test: $(STAMP)
	$(BIN)/python -m pytest -q

test-fast: $(STAMP)
	$(BIN)/python -m pytest -q -m "not slow"

lint: $(STAMP)
	$(BIN)/ruff check mmagent tests benchmarks examples
	$(BIN)/ruff format --check mmagent tests benchmarks examples

format: $(STAMP)
	$(BIN)/ruff check --fix mmagent tests benchmarks examples
	$(BIN)/ruff format mmagent tests benchmarks examples

demo: $(STAMP)
	$(BIN)/mmagent demo customer-service

bench-smoke: $(STAMP)
	$(BIN)/python -m benchmarks.run_all --smoke

examples-smoke: $(STAMP)
	$(BIN)/python -m examples.run_all --smoke

clean:
	rm -rf $(VENV) .pytest_cache
