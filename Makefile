# NextBest — every command a developer or CI needs. Only python3 (3.11+) and make are required.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
PROTOS := $(shell find protos -name '*.proto')
INSTALLED := $(VENV)/.installed
# Every install takes the versions tested and measured (constraints.txt; `make lock` re-resolves them).
PIP_INSTALL := $(BIN)/pip install -q -c constraints.txt

.PHONY: install lock protos run seed certs test test-unit test-integration test-e2e test-fuzz lint bench bench-quick clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip

# Generated code is never committed or edited: one step writes gen/ from protos/.
gen/.stamp: $(PROTOS) constraints.txt | $(BIN)/python
	$(PIP_INSTALL) grpcio-tools
	rm -rf gen && mkdir -p gen
	$(BIN)/python -m grpc_tools.protoc -I protos --python_out=gen --pyi_out=gen --grpc_python_out=gen $(PROTOS)
	touch $@

# The editable install maps the generated `nextbest` package, so it runs after code generation.
$(INSTALLED): pyproject.toml constraints.txt gen/.stamp
	$(PIP_INSTALL) -e '.[test,bench]'
	touch $@

install: $(INSTALLED)

## lock: re-resolve pyproject.toml's dependency ranges in a clean virtualenv and write the versions to constraints.txt
lock:
	rm -rf $(VENV)-lock && $(PYTHON) -m venv $(VENV)-lock && $(VENV)-lock/bin/pip install -q --upgrade pip
	$(VENV)-lock/bin/pip install -q -e '.[test,bench,lint,report]'
	{ sed -n '/^#/p' constraints.txt; $(VENV)-lock/bin/pip freeze --exclude-editable | grep -v '^nextbest'; } > constraints.new
	mv constraints.new constraints.txt && rm -rf $(VENV)-lock

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
	$(PIP_INSTALL) -e '.[lint]'
	$(BIN)/ruff check libs services cli tests
	cd protos && npx --yes @bufbuild/buf lint

clean:
	rm -rf $(VENV) gen var .pytest_cache
