# Set-up and entry points. Everything lands in .venv; system packages that set-up
# and the tests need (python3-venv, nginx, Chromium) are installed by scripts/install-system-packages
# when the machine allows it (root with apt-get) and reported otherwise.

PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo test venv system-packages bench clean

venv: $(STAMP)

$(STAMP): pyproject.toml
	PYTHON=$(PYTHON) bash scripts/install-system-packages venv
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[test,device]'
	touch $(STAMP)

system-packages:
	bash scripts/install-system-packages test

demo: venv
	$(BIN)/doorlock demo

test: venv system-packages
	$(BIN)/pytest -q

bench: venv
	$(BIN)/python bench/validate.py
	$(BIN)/python bench/compile.py
	$(BIN)/python bench/lock.py
	$(BIN)/python bench/receiver.py

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache .hypothesis
