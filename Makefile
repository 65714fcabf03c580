# Two commands do all set-up on a fresh clone: `make run` and `make test`.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed-dev
PEERS  := $(VENV)/.installed-peers
KAFKA_PORT ?= 9092

.PHONY: install test lint format run bench simulate schemas kafka-up kafka-down clean

install: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -e '.[dev]'
	touch $@

$(PEERS): $(STAMP)
	$(BIN)/python -m pip install -q -e '.[dev,peers]'
	touch $@

test: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/python -m pytest -q -p no:cacheprovider

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

format: $(STAMP)
	$(BIN)/ruff check --fix .
	$(BIN)/ruff format .

run: $(STAMP)
	$(BIN)/python -m seedworker.dev.demo --port $(KAFKA_PORT) $(DEMO_ARGS)

simulate: $(STAMP)
	$(BIN)/seedworker simulate

schemas: $(STAMP)
	$(BIN)/seedworker schemas --write

bench: $(PEERS)
	$(BIN)/python -m bench

kafka-up: $(STAMP)
	$(BIN)/python -m seedworker.dev.local_kafka up --port $(KAFKA_PORT)

kafka-down: $(STAMP)
	$(BIN)/python -m seedworker.dev.local_kafka down

clean:
	rm -rf $(VENV) .cache var build *.egg-info
