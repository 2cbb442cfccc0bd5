# Quick start: `make demo` (the main job on CPU with a tiny model), `make test` (the test suite).
# Both first make sure the system parts are there (scripts/system_deps.sh), then the venv.
PYTHON ?= python3.11
VENV ?= .venv
STAMP := $(VENV)/.installed-stamp
# Test processes (pytest-xdist; each test file stays in one): compiles are single-threaded, so
# two workers keep both of CI's two cores busy.
TEST_WORKERS ?= 2

.PHONY: demo test test-fast install system-demo system-test bench clean

$(STAMP): pyproject.toml
	test -x $(VENV)/bin/python || $(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install -q -e '.[dev]'
	$(VENV)/bin/ace-jax tasks prepare  # built-in tasks and their tuned references (once per machine)
	$(VENV)/bin/ace-jax tasks --suite contrast prepare  # the ablation's contrast suite (once per machine)
	touch $(STAMP)

install: $(STAMP)

system-demo:
	@bash scripts/system_deps.sh demo

system-test:
	@bash scripts/system_deps.sh test

demo: system-demo
	@$(MAKE) --no-print-directory install
	$(VENV)/bin/ace-jax demo

test: system-test
	@$(MAKE) --no-print-directory install
	$(VENV)/bin/python -m pytest -q -n $(TEST_WORKERS) --dist loadfile --durations=15 tests

test-fast: system-test
	@$(MAKE) --no-print-directory install
	$(VENV)/bin/python -m pytest -q -n $(TEST_WORKERS) --dist loadfile -m "not slow" tests

clean:
	rm -rf $(VENV) .jax_cache runs
