# Two commands on a fresh machine: `make demo` and `make test`.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
TORCH_PIN := torch==2.14.1 torchvision==0.29.1
DEMO_OUT ?= demo_out

.PHONY: install demo test test-fast lint bench clean

$(BIN)/python:
	$(PY) -m venv $(VENV)
	$(BIN)/pip install --upgrade pip

$(STAMP): $(BIN)/python setup.cfg pyproject.toml
	$(BIN)/pip install $(TORCH_PIN)
	$(BIN)/pip install -e .[dev]
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(BIN)/backbone-ssl demo --out $(DEMO_OUT)

test: $(STAMP)
	$(BIN)/python -m pytest -q

test-fast: $(STAMP)
	$(BIN)/python -m pytest -q -m "not slow"

lint: $(STAMP)
	$(BIN)/ruff check backbone_ssl downstream tests benchmarks

clean:
	rm -rf $(DEMO_OUT) .pytest_cache
