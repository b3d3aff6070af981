# Set-up and the two everyday jobs. Every target creates the virtual environment first if needed.
#   make classify DIR=path/to/images [OUT=scores.csv] [ARGS="-m default --threshold 0.5"]
#   make test
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
OUT ?= deepfake_scores.csv
export HF_HUB_OFFLINE := 1

.PHONY: install classify test

$(BIN)/activate:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip

$(VENV)/.installed: $(BIN)/activate pyproject.toml
	$(BIN)/python -m pip install --quiet -e ".[test]"
	touch $@

install: $(VENV)/.installed

classify: install
	@test -n "$(DIR)" || { echo "usage: make classify DIR=path/to/images [OUT=scores.csv]"; exit 2; }
	$(BIN)/deepfake-toolkit classify "$(DIR)" -o "$(OUT)" $(ARGS)

test: install
	$(BIN)/python -m pytest -q
