# make demo: set up .venv and run the offline Flow-GRPO demo (tiny SD3, CPU, ~5 minutes)
# make test: set up .venv and run the test suite
VENV ?= .venv
PY := $(VENV)/bin/python

$(VENV)/.installed: setup.cfg pyproject.toml
	python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q torch==2.13.0
	$(PY) -m pip install -q -e ".[test]"
	touch $@

.PHONY: demo test lint
demo: $(VENV)/.installed
	$(PY) -m rl.train experiment=demo

test: $(VENV)/.installed
	$(PY) -m pytest -q

lint: $(VENV)/.installed
	$(VENV)/bin/ruff check .
