# make demo  : create .venv, install, run the whole study on the small demo config
# make test  : create .venv, install, run the test suite
# make full-chain : config.yaml's EfficientNetV2-M through every stage on a slice of photos (time and memory)
# make study-cv DATA=DIR : the whole chain on FOLDS (5) group folds of the known species' photos, pooled (docs/study-cv.md)
# make app   : build the phone page (app/dist/) for the model predict.py picks, or MODEL=<folder or .tflite>
PY ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
DEV_STAMP := $(VENV)/.installed-dev
CONFIG ?= configs/demo.yaml
DATA ?=
GROUP ?= date
MODEL ?=
FOLDS ?= 5

.PHONY: venv test demo pipeline results app full-chain study-cv

$(STAMP): requirements.txt constraints.txt
	$(PY) -m venv $(VENV)
	$(BIN)/pip install --quiet --disable-pip-version-check -r requirements.txt -c constraints.txt
	touch $(STAMP)

# The test tools (pytest, hypothesis, selenium) come from requirements-dev.txt, on top of the runtime.
$(DEV_STAMP): $(STAMP) requirements-dev.txt
	$(BIN)/pip install --quiet --disable-pip-version-check -r requirements-dev.txt -c constraints.txt
	touch $(DEV_STAMP)

venv: $(STAMP)

test: $(DEV_STAMP)
	$(BIN)/python -m pytest

# make demo DATA=DIR imports DIR/<Species_name>/*.jpg (grouped by the GROUP column of DIR/manifest.csv) instead of downloading.
demo: $(STAMP)
	$(BIN)/python pipeline.py --config $(CONFIG) $(if $(DATA),--from-folder $(DATA) $(if $(and $(GROUP),$(wildcard $(DATA)/manifest.csv)),--group-column $(GROUP),),)

# Every known photo tested once: reports/cv/study_cv.md (resumable per fold; a complete fold is skipped).
study-cv: $(STAMP)
	$(BIN)/python pipeline.py --config $(CONFIG) --set study.cv_folds=$(FOLDS) $(if $(DATA),--from-folder $(DATA) $(if $(and $(GROUP),$(wildcard $(DATA)/manifest.csv)),--group-column $(GROUP),),)

pipeline: $(STAMP)
	$(BIN)/python pipeline.py --config config.yaml $(if $(DATA),--from-folder $(DATA) $(if $(and $(GROUP),$(wildcard $(DATA)/manifest.csv)),--group-column $(GROUP),),)

full-chain: $(STAMP)
	$(BIN)/python benchmarks/full_chain.py $(if $(DATA),--from-folder $(DATA),)

results: $(STAMP)
	$(BIN)/python update_results.py --config $(CONFIG)

# LiteRT.js from the npm registry, exactly as app/package-lock.json pins it.
app/node_modules/.package-lock.json: app/package.json app/package-lock.json
	cd app && npm ci --no-audit --no-fund

app: $(STAMP) app/node_modules/.package-lock.json
	$(BIN)/python build_app.py --config $(CONFIG) $(MODEL)
