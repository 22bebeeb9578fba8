# The two quick-start commands of the README: `make demo` (the main job) and `make test`.
# Each installs what is missing first: torch from local disk, then stafast (with its C++
# extension) without build isolation, so the installed torch is used. The install is skipped
# when stafast is already installed from this checkout and no build input changed since.
PY ?= python3
PIP := $(PY) -m pip install --disable-pip-version-check -q
STAMP := build/.installed
BUILD_INPUTS := $(shell find csrc -type f) setup.py pyproject.toml

.PHONY: install demo test bench
install:
	@if [ -f $(STAMP) ] && [ -z "$$(find $(BUILD_INPUTS) -newer $(STAMP))" ] && \
	    $(PY) -c "import os, torch, stafast, stafast._C; assert os.path.samefile(os.path.dirname(stafast.__file__), 'stafast')" 2>/dev/null; \
	then echo "stafast: installed from this checkout, up to date"; \
	else $(PIP) torch==2.14.1 torchvision==0.29.1 ninja && \
	     $(PIP) --no-build-isolation -e ".[test,dali]" && mkdir -p build && touch $(STAMP); fi

# The main job: train on the embedded synthetic MARS-layout set (generated once into ~/.cache/stafast).
demo: install
	$(PY) -m stafast.train --dataset synthetic --output runs/synthetic

# Without a GPU, Triton kernels are tested on CPU tensors through the interpreter.  Then the GPU
# check runs end to end on the CPU at toy sizes, so that its first run on a GPU cannot trip on it.
test: install
	@if ! $(PY) -c 'import sys, torch; sys.exit(not torch.cuda.is_available())'; then export TRITON_INTERPRET=1; fi; \
	$(PY) -m pytest tests -q -p no:cacheprovider -rs && PY=$(PY) bash bench/gpu_check.sh --dry-run

bench: install
	$(PY) -m pytest bench --benchmark-only
