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

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e ".[dev]"
	touch $(STAMP)

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache
