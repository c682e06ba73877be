# One command to set up and test, one to set up and run the demo.
# Both create .venv when missing; torch comes from the local wheel cache (see README).
PY ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
TORCH_PINS := torch==2.14.1 torchvision==0.29.1
STAMP := $(VENV)/.installed

.PHONY: setup system browser test test-slow test-all lint format demo bench-smoke examples-smoke clean

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	# torch first, pinned to the build on local disk, so nothing pulls a multi-GB download.
	$(BIN)/pip install -q $(TORCH_PINS)
	$(BIN)/pip install -q "torchaudio>=2.11,<2.12" $(TORCH_PINS)
	$(BIN)/pip install -q -e ".[all,dev]" $(TORCH_PINS)
	touch $(STAMP)

# System packages the tests use, from Debian, installed with apt-get when missing (as root, or
# through sudo): chromium for the page's browser tests (Playwright cannot download its own here),
# postgresql for the fit search shared by workers (the tests start a private cluster).
CHROMIUM ?= /usr/bin/chromium
system:
	@missing=""; test -x $(CHROMIUM) || missing="chromium"; \
	  { command -v initdb >/dev/null || ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1; } || missing="$$missing postgresql"; \
	  test -z "$$missing" || { \
	  if [ "$$(id -u)" = 0 ]; then SUDO=; elif command -v sudo >/dev/null; then SUDO=sudo; \
	  else echo "error: missing system packages:$$missing; install them (apt-get install$$missing) as root" >&2; exit 1; fi; \
	  $$SUDO apt-get update -q && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -q $$missing; }
browser: system

setup: $(STAMP) system

# The suite (under 10 minutes on 2 cores); the longer end-to-end tests (marked slow) run in
# `make test-slow`, which CI runs too; `make test-all` runs both in one go.
test: $(STAMP) system
	MMAGENT_CHROMIUM=$(CHROMIUM) $(BIN)/python -m pytest -q -m "not slow"

test-slow: $(STAMP) system
	MMAGENT_CHROMIUM=$(CHROMIUM) $(BIN)/python -m pytest -q -m slow

test-all: $(STAMP) system
	MMAGENT_CHROMIUM=$(CHROMIUM) $(BIN)/python -m pytest -q

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
