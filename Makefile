# Tripwire — every target creates or reuses .venv and installs what it needs, so each one
# works on a fresh machine that has only Python 3.11.

PYTHON ?= $(shell command -v python3.11 2>/dev/null || command -v python3)
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed-dev
RUN_STAMP := $(VENV)/.installed-run
BENCH_STAMP := $(VENV)/.installed-bench

.PHONY: run test bench lint venv clean browser tools

venv: $(STAMP)

# Three stamps: `run` installs the engine and its runtime dependencies only; `bench` adds the
# harnesses' extra (hdrhistogram, profilers); `test` and `lint` add the dev tools, which include
# the bench extra. Each reinstalls whenever the dependency set or the lock changes.
$(VENV)/bin/python:
	@$(PYTHON) -c 'import sys; sys.exit(0 if sys.version_info[:2] == (3, 11) else "Tripwire needs Python 3.11, found " + sys.version.split()[0])'
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip

$(RUN_STAMP): pyproject.toml constraints.txt | $(VENV)/bin/python
	$(BIN)/python -m pip install --quiet -c constraints.txt -e .
	@touch $(RUN_STAMP)

$(BENCH_STAMP): pyproject.toml constraints.txt | $(VENV)/bin/python
	$(BIN)/python -m pip install --quiet -c constraints.txt -e '.[bench]'
	@touch $(BENCH_STAMP) $(RUN_STAMP)

$(STAMP): pyproject.toml constraints.txt | $(VENV)/bin/python
	$(BIN)/python -m pip install --quiet -c constraints.txt -e '.[dev]'
	@touch $(STAMP) $(BENCH_STAMP) $(RUN_STAMP)

run: $(RUN_STAMP)
	$(BIN)/tripwire run

# The dashboard test drives Debian's Chromium, and the deployment kit's test checks the compose
# file with Debian's docker-compose; install what is missing (root or sudo).
browser:
	@if [ ! -x /usr/bin/chromium ]; then \
		echo "installing Debian chromium for the dashboard test"; \
		SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
		$$SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq chromium >/dev/null; \
	fi

tools: browser
	@if [ ! -x /usr/bin/docker-compose ]; then \
		echo "installing Debian docker-compose for the deployment kit's test"; \
		SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
		$$SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq docker-compose >/dev/null; \
	fi

# `make test` is what CI runs (.ci/run): the lint first, so a lint failure fails the build.
test: lint tools
	$(BIN)/python -m pytest -q

bench: $(BENCH_STAMP)
	$(BIN)/python -m bench.all

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy

clean:
	rm -rf $(VENV) .tripwire .pytest_cache .mypy_cache .ruff_cache
