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

# The main job on bundled data, fully offline: procedural scenes + the demo photos -> dataset -> report.
DEMO_OUT ?= demo_out
demo: setup
	rm -rf $(DEMO_OUT)
	$(BIN)/bokeh estimate demo/photos/*.jpg --depth sidecar --mask depth
	$(BIN)/bokeh render demo/photos/street_8.jpg --sweep 0,5,10,20,30 -o $(DEMO_OUT)/render
	$(BIN)/bokeh demo-data -o $(DEMO_OUT)/scenes --count 24
	$(BIN)/bokeh build $(DEMO_OUT)/scenes demo/photos -o $(DEMO_OUT)/dataset --depth sidecar --mask depth --synthetic-levels 4
	$(BIN)/bokeh report $(DEMO_OUT)/dataset -o $(DEMO_OUT)/report.html
	@echo "demo done: open $(DEMO_OUT)/report.html and $(DEMO_OUT)/render/street_8_sweep.png"

clean:
	rm -rf $(VENV) build *.egg-info $(DEMO_OUT)
