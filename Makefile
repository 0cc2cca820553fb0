# Fresh-machine entry points: every target creates .venv when it is missing.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# CPU build of torch (already on disk on the project's machines). GPU users: create .venv and install
# their own torch build first (see README); an installed torch satisfies the requirement and is kept.
TORCH_SPEC ?= torch==2.13.0
PYTEST_ARGS ?=

.PHONY: setup test demo clean

$(BIN)/bokeh: pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -c "import torch" 2>/dev/null || $(BIN)/python -m pip install --quiet "$(TORCH_SPEC)"
	$(BIN)/python -m pip install --quiet -e ".[dev]"
	touch $(BIN)/bokeh

setup: $(BIN)/bokeh

test: setup
	$(BIN)/python -m pytest $(PYTEST_ARGS)

demo: setup
	$(BIN)/bokeh estimate demo/photos/*.jpg --depth sidecar --mask depth

clean:
	rm -rf $(VENV) build *.egg-info
