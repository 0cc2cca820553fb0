# Fresh-machine entry points: every target creates .venv when it is missing.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# CPU build of torch (already on disk on the project's machines). GPU users: create .venv and install
# their own torch build first (see README); an installed torch satisfies the requirement and is kept.
TORCH_SPEC ?= torch==2.13.0
PYTEST_ARGS ?=

.PHONY: setup test docs-check demo clean

$(BIN)/bokeh: pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -c "import torch" 2>/dev/null || $(BIN)/python -m pip install --quiet "$(TORCH_SPEC)"
	$(BIN)/python -m pip install --quiet -e ".[dev]"
	touch $(BIN)/bokeh

setup: $(BIN)/bokeh

test: setup
	$(BIN)/python -m pytest $(PYTEST_ARGS)

# Only the runnable blocks of README.md and docs/ (tests/test_docs_commands.py; `make test` runs them too).
docs-check: setup
	$(BIN)/python -m pytest tests/test_docs_commands.py $(PYTEST_ARGS)

# The whole loop on bundled data, fully offline: procedural scenes + the demo photos -> dataset -> report
# -> tiny model trained from scratch -> sample sweep -> evaluation (LVCorr, calibration, consistency).
# demo/stage.py runs each stage under a banner with its time, then sums up what to open and the targets.
DEMO_OUT ?= demo_out
# Few scenes, so that the tiny model learns each of them in its CPU budget.
DEMO_SCENES ?= 8
# K guided 2x and the caption not guided (two model passes a step): backgrounds blur further at high K.
DEMO_GUIDANCE ?= --guidance-scale 1 --bokeh-guidance 2
# Grounded sweeps: the first 10 of 25 steps at the pivot's K for every image, which holds the caption's scene at
# high K. The evaluation takes four seeds (--seeds), so that rare scene switches count in "grounded more consistent".
DEMO_SWEEP ?= --grounding-steps 20 --shared-steps 10 --steps 25 $(DEMO_GUIDANCE)
STAGE = $(BIN)/python demo/stage.py run --log $(DEMO_OUT)/stages.jsonl
demo: setup
	rm -rf $(DEMO_OUT)
	@echo "make demo: the whole loop on bundled data, offline, in 8 stages into $(DEMO_OUT)/;" \
	    "about 13 minutes on 2 cores, most of it training the tiny model (stage 6)"
	@$(STAGE) --stage 1/8 --title "Estimate K of the demo photos" \
	    --what "bokeh level K of each bundled photo from its EXIF lens data and depth sidecar" -- \
	    $(BIN)/bokeh estimate demo/photos/*.jpg --depth sidecar --mask depth
	@$(STAGE) --stage 2/8 --title "Render a K sweep of one photo" \
	    --what "the depth-aware defocus renderer on street_8.jpg at K = 0, 5, 10, 20, 30 ($(DEMO_OUT)/render)" -- \
	    $(BIN)/bokeh render demo/photos/street_8.jpg --depth sidecar --sweep 0,5,10,20,30 -o $(DEMO_OUT)/render
	@$(STAGE) --stage 3/8 --title "Draw the demo scenes" \
	    --what "$(DEMO_SCENES) procedural scenes with exact depth, subject masks and captions" -- \
	    $(BIN)/bokeh demo-data -o $(DEMO_OUT)/scenes --count $(DEMO_SCENES)
	@$(STAGE) --stage 4/8 --title "Build the dataset" \
	    --what "every scene and photo rendered at K = 5, 10, ..., 30 (each scene gets a K = 30), on a local Ray" -- \
	    $(BIN)/bokeh build $(DEMO_OUT)/scenes demo/photos -o $(DEMO_OUT)/dataset --depth sidecar --mask depth --levels 5,10,15,20,25,30
	@$(STAGE) --stage 5/8 --title "Report on the dataset" --what "K per photo, the renders, what was filtered" -- \
	    $(BIN)/bokeh report $(DEMO_OUT)/dataset -o $(DEMO_OUT)/report.html
	@$(STAGE) --stage 6/8 --title "Train the tiny model" \
	    --what "configs/tiny.yaml from scratch on the CPU, with a progress bar: about 85 % of the demo's time" -- \
	    $(BIN)/bokeh train configs/tiny.yaml data.dataset=$(DEMO_OUT)/dataset run.output_dir=$(DEMO_OUT)/tiny
	head -q -n1 $(DEMO_OUT)/scenes/scene_0000[0-2].txt > $(DEMO_OUT)/prompts.txt
	@$(STAGE) --stage 7/8 --title "Sample a K sweep" \
	    --what "one training caption at K = 0, 6, ..., 30, grounded on K = 15 ($(DEMO_OUT)/samples)" -- \
	    $(BIN)/bokeh sample --checkpoint $(DEMO_OUT)/tiny --prompt "$$(head -n1 $(DEMO_OUT)/prompts.txt)" \
	    --bokeh 0 6 12 18 24 30 --pivot 15 $(DEMO_SWEEP) --seed 100 -o $(DEMO_OUT)/samples
	@$(STAGE) --stage 8/8 --title "Evaluate" \
	    --what "3 captions x 4 seeds: LVCorr, blur against renders of each K = 0 sample, scene consistency" -- \
	    $(BIN)/bokeh eval --checkpoint $(DEMO_OUT)/tiny --prompts $(DEMO_OUT)/prompts.txt --dataset $(DEMO_OUT)/dataset \
	    --reference render --seeds 100,101,102,103 --grounded $(DEMO_SWEEP) --reference-photos demo/photos/street_8.jpg -o $(DEMO_OUT)/eval
	@$(BIN)/python demo/stage.py summary $(DEMO_OUT)

clean:
	rm -rf $(VENV) build *.egg-info $(DEMO_OUT)
