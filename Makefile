# Two commands do all the set-up: `make demo` and `make test`.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
PIP    := $(VENV)/bin/pip
STAMP  := $(VENV)/.installed
# torch/torchvision are pinned here (not in pyproject) so pip takes the CPU-capable
# wheels that lie on disk instead of pulling a multi-GB download; override on other machines.
TORCH_SPEC ?= torch==2.14.1 torchvision==0.29.1
PYTEST_ARGS ?=

.PHONY: setup demo test clean help

help:
	@echo "make demo   - set up .venv and run the synthetic end-to-end sorter demo"
	@echo "make test   - set up .venv and run the whole test suite"
	@echo "make clean  - remove runs/ and caches (keeps .venv)"

$(PY):
	$(PYTHON) -m venv $(VENV)
	$(PIP) install --quiet --upgrade pip

$(STAMP): $(PY) pyproject.toml
	@free=$$(df -Pk . | awk 'NR==2 {print int($$4 / 1048576)}'); [ "$$free" -ge 8 ] || \
		echo "warning: $$free GB of disk free here; the install needs about 8 GB (torch's CUDA build)" >&2
	$(PIP) install --quiet $(TORCH_SPEC)
	$(PIP) install --quiet -e ".[dev]"
	touch $(STAMP)

setup: $(STAMP)

demo: setup
	$(VENV)/bin/textile-sorter demo

test: setup
	$(PY) -m pytest $(PYTEST_ARGS)

clean:
	rm -rf runs .pytest_cache
