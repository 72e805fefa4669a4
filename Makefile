# make demo  : create .venv, install, run the whole study on the small demo config
# make test  : create .venv, install, run the test suite
PY ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
CONFIG ?= configs/demo.yaml
DATA ?=

.PHONY: venv test demo pipeline clean-demo

$(STAMP): requirements.txt constraints.txt
	$(PY) -m venv $(VENV)
	$(BIN)/pip install --quiet --disable-pip-version-check -r requirements.txt -c constraints.txt
	touch $(STAMP)

venv: $(STAMP)

test: $(STAMP)
	$(BIN)/python -m pytest

demo: $(STAMP)
	$(BIN)/python download_data.py --config $(CONFIG) $(if $(DATA),--from-folder $(DATA) --group-column date,)
