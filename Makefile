# Every target creates or reuses .venv; the first run installs torch (CPU build), then raycv.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.raycv-installed

.PHONY: venv demo test bench clean

venv: $(STAMP)

$(STAMP): pyproject.toml scripts/setup_venv.sh scripts/cpu_torchvision.py
	PYTHON=$(PYTHON) VENV=$(VENV) bash scripts/setup_venv.sh
	touch $(STAMP)

demo: $(STAMP)
	$(PY) jobs/demo.py

test: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/lint-imports
	$(PY) -m pytest tests -q --durations=15

bench: $(STAMP)
	$(PY) jobs/bench.py --quick

clean:
	rm -rf runs data .pytest_cache
