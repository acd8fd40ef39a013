# bertperf: `make demo` and `make test` are the two commands a newcomer needs; both run `setup`.
SHELL := /bin/bash
VENV  := .venv
PY    := $(VENV)/bin/python
PIP   := $(VENV)/bin/pip -q --disable-pip-version-check
DATA  := .data
STAMP := $(VENV)/.bertperf-setup
CSRC  := $(wildcard csrc/*/*.cpp csrc/*/*.h csrc/include/bertperf/*.h)

export PATH := $(abspath $(VENV))/bin:$(PATH)
export OMPI_ALLOW_RUN_AS_ROOT := 1
export OMPI_ALLOW_RUN_AS_ROOT_CONFIRM := 1
export TORCH_EXTENSIONS_DIR := $(abspath .cache/torch_extensions)

.PHONY: setup demo test bench clean

setup: $(STAMP)

# torch goes in first and alone, from the local CPU wheel; requirements.txt pins it again so no
# later install can pull a CUDA build. Then the project, editable, built against that torch.
$(STAMP): requirements.txt setup.py scripts/get_sample_data.py $(CSRC)
	@echo "== setup: $(VENV) (torch 2.13.0 CPU, pinned deps, bertperf editable, sample data)"
	@test -x $(PY) || python3 -m venv $(VENV)
	@$(PIP) install torch==2.13.0 2>&1 | grep -v "^WARNING: Location" || true
	@$(PIP) install -r requirements.txt 2>&1 | grep -v "^WARNING: Location" || true
	@$(PIP) install --no-build-isolation --no-deps -e . 2>&1 | grep -v "^WARNING: Location" || true
	@$(PY) -c "import torch, deepspeed, bertperf; assert torch.__version__.startswith('2.13.0+cpu'), torch.__version__" 2>/dev/null
	@$(PY) scripts/get_sample_data.py $(DATA)
	@touch $@
	@echo "== setup done"

demo: setup
	@bash scripts/demo.sh

test: setup
	@$(PY) -m pytest -q tests

clean:
	rm -rf $(VENV) build *.egg-info bertperf/*.so .cache runs

# cuda-build (not in CI): build and load the CUDA kernels (csrc/cuda/*.cu + the bindings compiled
# with -DBERTPERF_CUDA) against the CUDA build of torch, for sm_80 and sm_90, then check that every
# torch.ops.bertperf op has a CUDA kernel. Needs nvcc; no GPU (the module loads without one,
# calling it needs one). The CUDA torch lives in its own venv, .cache/venv-cuda (~5.4 GB, torch
# 2.14.1 + nvidia-* wheels via pip's configured indexes), so the CPU venv is never touched.
# JIT-built into $(TORCH_EXTENSIONS_DIR); the CPU kernels are JIT-built there too for that torch.
# CUDA_HOME defaults to /usr/local/cuda (torch needs it to find the toolkit's headers and cudart).
CUDA_VENV := .cache/venv-cuda
.PHONY: cuda-build
cuda-build:
	@test -x $(CUDA_VENV)/bin/python || python3 -m venv $(CUDA_VENV)
	@$(CUDA_VENV)/bin/pip -q --disable-pip-version-check install torch==2.14.1 numpy ninja 2>&1 | grep -v "^WARNING: Location" || true
	@cd $(CURDIR) && PYTHONPATH=$(CURDIR) TORCH_CUDA_ARCH_LIST="8.0;9.0" \
		CUDA_HOME="$${CUDA_HOME:-/usr/local/cuda}" \
		$(CUDA_VENV)/bin/python -m bertperf.ops._build cuda --jit
