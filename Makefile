# NextBest — every command a developer or CI needs. Only python3 (3.11+) and make are required.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
PROTOS := $(shell find protos -name '*.proto')
INSTALLED := $(VENV)/.installed

.PHONY: install protos run seed certs test test-unit test-integration test-e2e test-fuzz lint bench bench-quick clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip

# Generated code is never committed or edited: one step writes gen/ from protos/.
gen/.stamp: $(PROTOS) | $(BIN)/python
	$(BIN)/pip install -q 'grpcio-tools>=1.66'
	rm -rf gen && mkdir -p gen
	$(BIN)/python -m grpc_tools.protoc -I protos --python_out=gen --pyi_out=gen --grpc_python_out=gen $(PROTOS)
	touch $@

# The editable install maps the generated `nextbest` package, so it runs after code generation.
$(INSTALLED): pyproject.toml gen/.stamp
	$(BIN)/pip install -q -e '.[test,bench]'
	touch $@

install: $(INSTALLED)
protos: gen/.stamp

## run: set everything up, seed the demo retailer once, start the five services (Ctrl-C stops them)
run: install
	$(BIN)/nextbest mesh run

seed: install
	$(BIN)/nextbest demo seed

## certs: a development CA and per-service TLS certificates in var/certs (offline; see README "Transport security")
certs: install
	$(BIN)/nextbest certs create --out var/certs

## test: every tier — unit, integration (SQLite and PostgreSQL), fuzz, end-to-end
test: install
	$(BIN)/python -m pytest tests

test-unit: install
	$(BIN)/python -m pytest tests/unit
test-integration: install
	$(BIN)/python -m pytest tests/integration
test-e2e: install
	$(BIN)/python -m pytest tests/e2e
## test-fuzz: every public RPC fuzzed with hypothesis (HYPOTHESIS_PROFILE=deep for a long run)
test-fuzz: install
	$(BIN)/python -m pytest tests/fuzz

## bench: the load benchmark of the whole mesh against a same-run fan-out baseline (results/ gets JSON + PNG)
bench: install
	$(BIN)/nextbest bench

bench-quick: install
	$(BIN)/nextbest bench --quick

lint: install
	$(BIN)/pip install -q -e '.[lint]'
	$(BIN)/ruff check libs services cli tests
	cd protos && npx --yes @bufbuild/buf lint

clean:
	rm -rf $(VENV) gen var .pytest_cache
