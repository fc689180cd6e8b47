# Two commands on a fresh machine with Python 3.11+: `make demo` and `make test`.
PYTHON ?= $(shell for p in python3.13 python3.12 python3.11 python3; do \
	command -v $$p >/dev/null 2>&1 && $$p -c 'import sys; sys.exit(sys.version_info < (3, 11))' && { echo $$p; break; }; done)
VENV := .venv
BIN := $(VENV)/bin
QUICKSTART := examples/quickstart
FLOWSTONE := ../../$(BIN)/flowstone

.PHONY: demo test lint typecheck bench clean

$(BIN)/python:
	@test -n "$(PYTHON)" || { echo "Python 3.11+ is required" >&2; exit 1; }
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip

$(VENV)/.stamp-dev: pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	touch $@

demo: $(VENV)/.stamp-dev
	rm -rf $(QUICKSTART)/.flowstone
	cd $(QUICKSTART) && $(FLOWSTONE) check
	cd $(QUICKSTART) && $(FLOWSTONE) graph
	cd $(QUICKSTART) && $(FLOWSTONE) materialize daily_report --partition 2025-01-15
	cd $(QUICKSTART) && $(FLOWSTONE) materialize daily_report --partition 2025-01-16 --parallel 2
	cd $(QUICKSTART) && $(FLOWSTONE) materialize daily_report --partition 2025-01-16
	cd $(QUICKSTART) && $(FLOWSTONE) runs
	cd $(QUICKSTART) && $(FLOWSTONE) assets
	cd $(QUICKSTART) && $(FLOWSTONE) lineage upstream daily_report --partition 2025-01-15
	cd $(QUICKSTART) && $(FLOWSTONE) lineage impact user_profiles
	cd $(QUICKSTART) && $(FLOWSTONE) catalog rebuild --dry-run

lint: $(VENV)/.stamp-dev
	$(BIN)/ruff check src tests benchmarks examples
	$(BIN)/ruff format --check src tests benchmarks examples

typecheck: $(VENV)/.stamp-dev
	$(BIN)/mypy

test: lint typecheck
	$(BIN)/pytest

bench: $(VENV)/.stamp-dev
	$(BIN)/python benchmarks/chain.py 1000
	$(BIN)/python benchmarks/wide.py 1000
	$(BIN)/python benchmarks/defload.py 10000
	$(BIN)/python benchmarks/partitions.py 365
	$(BIN)/python benchmarks/partition_scale.py
	$(BIN)/python benchmarks/io.py 1000000
	$(BIN)/python benchmarks/telemetry.py 1000
	$(BIN)/python benchmarks/queue_throughput.py
	$(BIN)/python benchmarks/daemon_tick.py

clean:
	rm -rf $(VENV) $(QUICKSTART)/.flowstone .pytest_cache .mypy_cache .ruff_cache
