# make test | make demo | make bench — each creates or refreshes .venv with what it needs.
# torch==2.13.0 is installed first (constraints.txt): a plain `torch` would pull GBs of CUDA.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip --disable-pip-version-check
EXTRAS_test := test,bench,dev,nni,edge
EXTRAS_demo := bench,nni,edge
SUITE ?= quick
JOBS ?= 1

.PHONY: test demo bench lint clean

$(PY):
	$(PYTHON) -m venv $(VENV)

$(VENV)/.stamp-%: pyproject.toml constraints.txt | $(PY)
	$(PIP) install -q -c constraints.txt torch==2.13.0
	$(PIP) install -q -c constraints.txt -e ".[$(EXTRAS_$*)]"
	touch $@

test: $(VENV)/.stamp-test
	$(PY) -m pytest

demo: $(VENV)/.stamp-demo
	$(PY) -m benchmarks run --suite quick

bench: $(VENV)/.stamp-demo
	$(PY) -m benchmarks run --suite $(SUITE) --jobs $(JOBS)

lint: $(VENV)/.stamp-test
	$(VENV)/bin/ruff check cut_plugin pam_plugin adapters benchmarks tests
	$(VENV)/bin/ruff format --check cut_plugin pam_plugin adapters benchmarks tests
	$(VENV)/bin/mypy cut_plugin pam_plugin adapters

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
