# The two quick-start commands of the README: `make demo` (the main job) and `make test`.
# Each installs what is missing first: torch from local disk, then stafast (with its C++
# extension when csrc/ has sources) without build isolation, so the installed torch is used.
PY ?= python3
PIP := $(PY) -m pip install --disable-pip-version-check -q

.PHONY: install demo test bench
install:
	$(PIP) torch==2.14.1 torchvision==0.29.1 ninja
	$(PIP) --no-build-isolation -e ".[test]"

demo: install
	$(PY) -m stafast.demo

# Without a GPU, Triton kernels are tested on CPU tensors through the interpreter.
test: install
	@if ! $(PY) -c 'import sys, torch; sys.exit(not torch.cuda.is_available())'; then export TRITON_INTERPRET=1; fi; \
	$(PY) -m pytest tests -q -p no:cacheprovider

bench: install
	$(PY) -m pytest bench --benchmark-only
