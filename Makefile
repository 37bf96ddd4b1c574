# Set-up is part of every target: the first run creates .venv and installs taylorprune with its
# test tools; later runs reinstall only when pyproject.toml changes.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: quickstart test lint format clean

quickstart: $(STAMP)
	$(BIN)/taylorprune run recipes/quickstart.yaml

# Two test processes (pytest-xdist), one torch thread each; a module's tests stay in one process
# so that its shared fixtures (trained twins) are built once.
TEST_WORKERS ?= 2

test: $(STAMP) lint
	$(BIN)/pytest -n $(TEST_WORKERS) --dist loadscope

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

format: $(STAMP)
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

# --no-compile: byte-compiling every installed module (torch alone has thousands) took 40 s of a
# 95 s install on 2 cores; Python compiles the few hundred that are imported on first use instead.
$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet --no-compile -e ".[dev]"
	touch $(STAMP)

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache
