# Quick start: `make demo` (the main job on CPU with a tiny model), `make test` (the test suite).
PYTHON ?= python3.11
VENV ?= .venv
STAMP := $(VENV)/.installed-stamp

.PHONY: demo test test-fast install bench clean

$(STAMP): pyproject.toml
	test -x $(VENV)/bin/python || $(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install -q -e '.[dev]'
	$(VENV)/bin/ace-jax tasks prepare  # built-in tasks and their tuned references (once per machine)
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/ace-jax demo

test: $(STAMP)
	$(VENV)/bin/python -m pytest -q --durations=15 tests

test-fast: $(STAMP)
	$(VENV)/bin/python -m pytest -q -m "not slow" tests

clean:
	rm -rf $(VENV) .jax_cache runs
