# Two commands on a fresh machine with python3 (>= 3.11) and make:
#   make demo   - create .venv, install, run the main job (a simulated experiment)
#   make test   - create/update .venv, run the whole test suite
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed-stamp

.PHONY: demo test install clean

install: $(STAMP)

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev,mpi]'
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/bp-plugin demo --out out/demo $(DEMO_ARGS)

test: $(STAMP)
	$(BIN)/python -m pytest -q

clean:
	rm -rf $(VENV) out build *.egg-info
