# Two commands do all set-up on a fresh machine:
#   make demo   create .venv, install pinned dependencies, run the quickstart (pipeline.yaml)
#   make test   same set-up, then the test suite
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: setup demo test clean-runs

$(STAMP): pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet -c constraints.txt -e ".[test]"
	touch $(STAMP)

setup: $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/pipeline run pipeline.yaml

test: $(STAMP)
	$(PY) -m pytest -q

clean-runs:
	rm -rf runs
