# The two commands a new user needs: `make run` and `make test`. Everything else is set up by them.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
KAFKA_LIBS := .cache/kafka/libs/.fetched
export STRANDLINE_KAFKA_BOOTSTRAP ?= 127.0.0.1:9092

.PHONY: run test lint schemas kafka kafka-stop clean install emulators

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip

$(VENV)/.installed: pyproject.toml | $(BIN)/python
	$(BIN)/pip install -q -e '.[dev]'
	touch $@

install: $(VENV)/.installed

$(KAFKA_LIBS): scripts/kafka/pom.xml | $(BIN)/python
	$(BIN)/python scripts/kafka_broker.py fetch
	touch $@

## Watch examples/data with an embedded default: SQLite catalog in .strandline/, a local Kafka started if none answers.
run: install $(KAFKA_LIBS)
	$(BIN)/python scripts/kafka_broker.py ensure
	$(BIN)/strandline watch examples/data

## The GCS and Azure emulators the bucket tests start: built/installed once into .cache/ (needs go / npm;
## skipped, saying why, when they are missing, and then those tests skip too).
emulators: install
	$(BIN)/python scripts/gcs_server.py install --optional
	$(BIN)/python scripts/azurite_server.py install --optional

## The whole test suite, against a real Kafka broker started for the session.
test: install $(KAFKA_LIBS) emulators
	$(BIN)/python -m pytest $(PYTEST_ARGS)

lint: install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy

## Regenerate schemas/json from the pydantic models.
schemas: install
	$(BIN)/python -m schemas.generate

kafka: install $(KAFKA_LIBS)
	$(BIN)/python scripts/kafka_broker.py ensure

kafka-stop:
	$(BIN)/python scripts/kafka_broker.py stop

clean:
	rm -rf $(VENV) .cache .strandline .pytest_cache .mypy_cache .ruff_cache
