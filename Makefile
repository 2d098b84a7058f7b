# einscade developer entry points.  Everything runs inside ./.venv.
#
#   make demo       show a compiled cascade, write its explain report, torch.compile two
#                   models with the backend and check them against eager (creates .venv)
#   make test       lint + format check + test suite + timm tests (what .ci/run runs)
#   make test-timm  the timm model tests (timm + torchvision in .venv/extras, see below)
#   make test-slow  only the tests marked `slow`
#
# torch is installed explicitly *before* the package so that pip never resolves
# torch on its own (which on Linux would pull the CUDA build and nvidia-* wheels).

SHELL := /bin/bash
.SHELLFLAGS := -eu -o pipefail -c
.DEFAULT_GOAL := test

PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
PIP := $(BIN)/python -m pip
PIP_FLAGS := --quiet --no-input --disable-pip-version-check --progress-bar off
STAMP := $(VENV)/.stamp
NATIVE_STAMP := $(VENV)/.native-stamp
NATIVE_SOURCE := einscade/codegen/native/attend.cpp

TORCH_VERSION := 2.13.0
TORCH_CPU_INDEX := https://download.pytorch.org/whl/cpu
TORCH_LOCAL_WHEELS := /opt/wheels
# CPU torch wheels do not pin triton (CUDA ones do); keep it on the release line
# torch 2.13 is built against instead of whatever newest pyproject allows.
TRITON_SPEC := triton~=3.7.0

PYTEST_WORKERS ?= 2
# timm needs torchvision, whose only wheel for torch 2.13 fails to load its operators beside
# the CPU torch and then breaks `import transformers` in the same process. So timm and
# torchvision never enter the venv: they go to a side folder that only the timm tests put
# on their path (tests/frontends/fx/models.py declares the missing operator schemas first).
EXTRAS := $(VENV)/extras
EXTRAS_SPEC := timm==1.0.31 torchvision==0.28.0
LINT_PATHS := einscade tests examples

.PHONY: venv extras demo test test-timm test-slow lint format clean

venv: $(STAMP) $(NATIVE_STAMP)

$(BIN)/python:
	@$(PYTHON) -c 'import sys; sys.exit(sys.version_info < (3, 10))' \
		|| { echo "error: $(PYTHON) is older than 3.10" >&2; exit 1; }
	$(PYTHON) -m venv $(VENV)

# Order-only dependency on the interpreter, so the venv directory's mtime never
# triggers a reinstall; editing pyproject.toml does.
$(STAMP): pyproject.toml | $(BIN)/python
	@if command -v nvidia-smi >/dev/null 2>&1; then \
		echo ">> GPU found: installing torch==$(TORCH_VERSION)"; \
		$(PIP) install $(PIP_FLAGS) "torch==$(TORCH_VERSION)"; \
	else \
		wheel=$$(ls $(TORCH_LOCAL_WHEELS)/torch-$(TORCH_VERSION)+cpu*.whl 2>/dev/null | head -n 1 || true); \
		if [ -n "$$wheel" ]; then \
			echo ">> no GPU: installing local CPU wheel $$wheel"; \
			$(PIP) install $(PIP_FLAGS) "$$wheel"; \
		else \
			echo ">> no GPU: installing torch==$(TORCH_VERSION) from $(TORCH_CPU_INDEX)"; \
			$(PIP) install $(PIP_FLAGS) --index-url $(TORCH_CPU_INDEX) "torch==$(TORCH_VERSION)"; \
		fi; \
	fi
	@echo ">> installing einscade (editable) with test extras"
	$(PIP) install $(PIP_FLAGS) -e '.[test]' "$(TRITON_SPEC)"
	@touch $@

# The torch target's native CPU kernel, compiled for this machine into the einscade cache
# ahead of time, so that no first call compiles (without a C++ compiler it says so and the
# torch target uses its matmul kernel).
$(NATIVE_STAMP): $(NATIVE_SOURCE) $(STAMP)
	$(BIN)/python -m einscade.codegen.native
	@touch $@

extras: $(EXTRAS)/.stamp

$(EXTRAS)/.stamp: $(STAMP)
	@echo ">> installing $(EXTRAS_SPEC) into $(EXTRAS) (no dependencies: torch stays the CPU one)"
	$(PIP) install $(PIP_FLAGS) --no-deps --target $(EXTRAS) $(EXTRAS_SPEC)
	@touch $@

demo: venv
	$(BIN)/einscade show neighborhood_2d --grid 56x56 --kernel 7x7
	$(BIN)/einscade opt neighborhood_2d --grid 56x56 --kernel 7x7 \
		--pipeline 'defer-div,online-softmax,tile{p=8x16,m=64},dce'
	$(BIN)/einscade explain neighborhood_2d --grid 56x56 --kernel 7x7 --out einscade-report
	$(BIN)/python examples/torch_compile_demo.py

lint: venv
	$(BIN)/ruff check $(LINT_PATHS)
	$(BIN)/ruff format --check $(LINT_PATHS)

test: lint extras
	$(BIN)/python -m pytest -n $(PYTEST_WORKERS)
	$(MAKE) --no-print-directory test-timm

# The timm models (torch.compile and ONNX), slow ones included, with timm on the path.
test-timm: extras
	PYTHONPATH=$(EXTRAS) $(BIN)/python -m pytest -n $(PYTEST_WORKERS) -m 'slow or not slow' -k timm

test-slow: venv
	$(BIN)/python -m pytest -n $(PYTEST_WORKERS) -m slow

format: venv
	$(BIN)/ruff check --fix $(LINT_PATHS)
	$(BIN)/ruff format $(LINT_PATHS)

clean:
	rm -rf build dist .pytest_cache .ruff_cache .hypothesis einscade-dump einscade-report
	find . -path ./$(VENV) -prune -o \
		\( -name __pycache__ -o -name '*.egg-info' \) -type d -print0 \
		| xargs -0 -r rm -rf
