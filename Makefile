# make demo: set up .venv and run the offline Flow-GRPO demo (tiny SD3, CPU, ~5 minutes)
# make test: set up .venv and run the test suite
# make parity: build the official reward packages' environments (.venv-parity, several GB, once)
#              and run the parity tests against them (tests/parity, pytest marker "parity")
# make test-compile: the inductor (torch.compile) checks left out of make test (minutes on 2 cores)
VENV ?= .venv
PY := $(VENV)/bin/python

$(VENV)/.installed: setup.cfg pyproject.toml
	python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q torch==2.13.0
	DS_BUILD_OPS=0 $(PY) -m pip install -q -e ".[test]"
	touch $@

PARITY_ENVS ?= .venv-parity

.PHONY: demo test test-compile lint parity
demo: $(VENV)/.installed
	$(PY) -m rl.train experiment=demo

test: $(VENV)/.installed
	$(PY) -m pytest -q

parity: $(VENV)/.installed
	bash tests/parity/make_envs.sh $(PARITY_ENVS)
	PARITY_ENVS=$(PARITY_ENVS) $(PY) -m pytest -m parity -q -s tests/parity

test-compile: $(VENV)/.installed
	$(PY) -m pytest -q -m compile

lint: $(VENV)/.installed
	$(VENV)/bin/ruff check .
