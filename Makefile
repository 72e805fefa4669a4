# make demo  : create .venv, install, run the whole study on the small demo config
# make test  : create .venv, install, run the test suite
PY ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
CONFIG ?= configs/demo.yaml
DATA ?=
GROUP ?= date

.PHONY: venv test demo pipeline results

$(STAMP): requirements.txt constraints.txt
	$(PY) -m venv $(VENV)
	$(BIN)/pip install --quiet --disable-pip-version-check -r requirements.txt -c constraints.txt
	touch $(STAMP)

venv: $(STAMP)

test: $(STAMP)
	$(BIN)/python -m pytest

# make demo DATA=DIR imports DIR/<Species_name>/*.jpg (grouped by the GROUP column of DIR/manifest.csv) instead of downloading.
demo: $(STAMP)
	$(BIN)/python pipeline.py --config $(CONFIG) $(if $(DATA),--from-folder $(DATA) $(if $(and $(GROUP),$(wildcard $(DATA)/manifest.csv)),--group-column $(GROUP),),)

pipeline: $(STAMP)
	$(BIN)/python pipeline.py --config config.yaml $(if $(DATA),--from-folder $(DATA) $(if $(and $(GROUP),$(wildcard $(DATA)/manifest.csv)),--group-column $(GROUP),),)

results: $(STAMP)
	$(BIN)/python update_results.py --config $(CONFIG)
