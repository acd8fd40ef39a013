# bertperf: `make demo` and `make test` are the two commands a newcomer needs; both run `setup`.
SHELL := /bin/bash
VENV  := .venv
PY    := $(VENV)/bin/python
PIP   := $(VENV)/bin/pip -q --disable-pip-version-check
DATA  := .data
STAMP := $(VENV)/.bertperf-setup
CSRC  := $(wildcard csrc/*/*.cpp csrc/*/*.h csrc/include/bertperf/*.h)
# Debian packages `make setup` installs when missing (apt-get, non-interactive; root or sudo).
# Open MPI for `mpirun` / `deepspeed --launcher openmpi` launches (mpi4py's wheel loads its libmpi).
# Another need adds its own line, e.g. `APT_PACKAGES += chromium`.
APT_PACKAGES := openmpi-bin libopenmpi-dev
# Chromium (headless) renders `bertperf report`'s HTML page in tests/report.
APT_PACKAGES += chromium
# tcmalloc: training processes run on it (bertperf.utils.malloc: with it a step runs 4-16% faster).
APT_PACKAGES += libtcmalloc-minimal4

export PATH := $(abspath $(VENV))/bin:$(PATH)
export OMPI_ALLOW_RUN_AS_ROOT := 1
export OMPI_ALLOW_RUN_AS_ROOT_CONFIRM := 1
export TORCH_EXTENSIONS_DIR := $(abspath .cache/torch_extensions)

.PHONY: setup apt-deps demo test bench clean

setup: $(STAMP)

# Checks each of APT_PACKAGES with dpkg-query (a few ms when all are there: `make setup` stays a
# no-op) and installs only the missing ones: apt-get update, then install without recommends,
# waiting up to 5 min for a dpkg lock another install holds; apt's output is shown only on failure.
# Without apt-get (not Debian) it warns and goes on.
apt-deps:
	@missing=$$(for p in $(APT_PACKAGES); do \
		dpkg-query -W -f='$${Status}\n' $$p 2>/dev/null | grep -q '^install ok installed$$' || echo $$p; done); \
	if [ -z "$$missing" ]; then exit 0; fi; \
	if ! command -v apt-get >/dev/null; then \
		echo "== setup: WARNING: no apt-get; install these (or your system's equivalents) yourself:" $$missing; exit 0; fi; \
	sudo=; if [ "$$(id -u)" != 0 ]; then \
		if command -v sudo >/dev/null; then sudo="sudo -n"; else \
		echo "== setup: need root (or sudo) to apt-get install:" $$missing >&2; exit 1; fi; fi; \
	echo "== setup: apt-get install" $$missing; \
	log=$$(mktemp); export DEBIAN_FRONTEND=noninteractive; \
	if $$sudo apt-get -q -o DPkg::Lock::Timeout=300 update >$$log 2>&1 && \
		$$sudo apt-get -q -y -o DPkg::Lock::Timeout=300 install --no-install-recommends $$missing >>$$log 2>&1; \
	then rm -f $$log; else tail -n 20 $$log >&2; rm -f $$log; \
		echo "== setup: apt-get install failed for:" $$missing >&2; exit 1; fi

# torch goes in first and alone, from the local CPU wheel; requirements.txt pins it again so no
# later install can pull a CUDA build. Then the project, editable, built against that torch.
# apt-deps is order-only: it runs first on every `make setup`, but never forces a reinstall.
$(STAMP): requirements.txt setup.py scripts/get_sample_data.py $(CSRC) | apt-deps
	@echo "== setup: $(VENV) (torch 2.13.0 CPU, pinned deps, bertperf editable, sample data)"
	@test -x $(PY) || python3 -m venv $(VENV)
	@$(PIP) install torch==2.13.0 2>&1 | grep -v "^WARNING: Location" || true
	@$(PIP) install -r requirements.txt 2>&1 | grep -v "^WARNING: Location" || true
	@$(PIP) install --no-build-isolation --no-deps -e . 2>&1 | grep -v "^WARNING: Location" || true
	@$(PY) -c "import torch, deepspeed, bertperf; assert torch.__version__.startswith('2.13.0+cpu'), torch.__version__" 2>/dev/null
	@$(PY) -c "from mpi4py import MPI" 2>/dev/null || echo "== setup: WARNING: mpi4py cannot load an MPI library (Open MPI missing?): mpirun launches will fail"
	@$(PY) scripts/get_sample_data.py $(DATA)
	@touch $@
	@echo "== setup done"

demo: setup
	@bash scripts/demo.sh

test: setup
	@$(PY) -m pytest -q tests

# bench (not in CI; ~25 minutes, wants a quiet machine): the end-to-end matrix (bertperf vs
# Hugging Face), a per-op profile, padded batches with pad tokens skipped, the kernel benches,
# 1 -> 2 rank scaling of real pre-training runs, then the report (bench/results/ +
# bench/runs/scaling/ -> bench/report/).
bench: setup
	@$(PY) bench/bench_e2e.py --json bench/results/e2e.json
	@$(PY) bench/bench_e2e.py --profile bertperf eager fp32 --models tiny mini base --no-base512
	@$(PY) bench/bench_e2e.py --frameworks bertperf bertperf-unpad hf --min_len 32 --modes eager \
		--precisions fp32 --models tiny mini --no-base512 --json bench/results/e2e-unpad.json
	@$(PY) bench/bench_kernels.py
	@$(PY) bench/bench_scaling.py --out bench/runs/scaling
	@$(PY) -m bertperf.report.report bench/results bench/runs/scaling/ranks1 bench/runs/scaling/ranks2 --out bench/report

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
