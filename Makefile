# Set-up and the two everyday jobs. Every target creates the virtual environment first if needed.
#   make classify DIR=path/to/images [OUT=scores.csv] [ARGS="-m default --threshold 0.5"]
#   make test
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
OUT ?= deepfake_scores.csv
export HF_HUB_OFFLINE := 1

.PHONY: install install-test classify test

$(BIN)/activate:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip

# The main job needs only the package; the tests need the test extra on top of it.
$(VENV)/.installed-base: $(BIN)/activate pyproject.toml
	$(BIN)/python -m pip install --quiet -e .
	touch $@

$(VENV)/.installed: $(BIN)/activate pyproject.toml
	$(BIN)/python -m pip install --quiet -e ".[test]"
	touch $@ $(VENV)/.installed-base

install: $(VENV)/.installed-base

install-test: $(VENV)/.installed

classify: install
	@test -n "$(DIR)" || { echo "usage: make classify DIR=path/to/images [OUT=scores.csv]"; exit 2; }
	$(BIN)/deepfake-toolkit classify "$(DIR)" -o "$(OUT)" $(ARGS)

# -rs lists every skipped test with its reason.
test: install-test
	$(BIN)/python -m pytest -q -rs
