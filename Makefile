# Two commands do everything on a fresh machine: `make demo` (the main job) and `make test`.
# Everything is installed into ignored folders of this checkout (.venv, .cache) or the tools' own caches.

VENV    := .venv
BIN     := $(VENV)/bin
STAMP   := $(VENV)/.installed
CONFIG  ?= config/rampart.example.yaml

.PHONY: help install services services-down status topics demo bench test lint unit integration clean

help:
	@echo "make demo       install, start the services, create keys and topics, run the pipeline"
	@echo "make test       install, start the services, lint, run every test"
	@echo "make services   start Kafka, Redis, Prometheus, Jaeger on 127.0.0.1 (make services-down stops them)"
	@echo "make bench      run the benchmarks (results in benchmarks/results/)"
	@echo "make lint       ruff and mypy --strict"

# The fast path's native module (native/, Rust): pip builds it with maturin, which runs cargo.
NATIVE  := native/Cargo.toml native/Cargo.lock native/pyproject.toml native/rampart_native.pyi $(wildcard native/src/*.rs)
CARGO   := $(HOME)/.cargo/bin

$(STAMP): pyproject.toml $(NATIVE)
	python3 -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[dev]'
	PATH="$(CARGO):$$PATH" $(BIN)/pip install -q ./native
	deploy/compose/validator/build.sh
	touch $(STAMP)

install: $(STAMP)
	python3 scripts/services install

services: install
	python3 scripts/services up

services-down:
	python3 scripts/services down

status:
	python3 scripts/services status

topics: services
	$(BIN)/rampart --config $(CONFIG) topics create

demo: services
	CONFIG=$(CONFIG) $(BIN)/python scripts/demo.py

# Rampart and an OpenTelemetry Collector built here (benchmarks/peer/), side by side on the same load.
bench: services
	scripts/build-peer
	$(BIN)/python -m benchmarks.peer_bench
	$(BIN)/python -m benchmarks.scaling_bench

lint: $(STAMP)
	$(BIN)/ruff check rampart ingest processors sinks schemas tests benchmarks scripts
	$(BIN)/mypy

unit: $(STAMP)
	$(BIN)/pytest tests/unit

integration: services
	$(BIN)/pytest tests/integration tests/e2e

test: services lint
	$(BIN)/pytest

clean: services-down
	rm -rf .cache $(VENV) secrets
