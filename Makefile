# Two commands on a fresh machine with Python >= 3.11 and pip:
#   make run    install into .venv, then train the default model on the built-in digits
#   make test   install into .venv (with the dev extras), then run the whole test suite
VENV ?= .venv
PYTHON ?= python3
BIN := $(VENV)/bin

.PHONY: run test lint clean

$(BIN)/activate:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip

$(VENV)/.installed: pyproject.toml | $(BIN)/activate
	$(BIN)/pip install --quiet -e ".[dev,onednn]"
	touch $@

run: $(VENV)/.installed
	$(BIN)/jresnet train

test: $(VENV)/.installed
	$(BIN)/pytest -q

lint: $(VENV)/.installed
	$(BIN)/ruff check jresnet tests experiments

clean:
	rm -rf $(VENV) runs .pytest_cache .hypothesis
