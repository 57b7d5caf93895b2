# One entry point for people and CI: `make demo`, `make test`, `make bench`.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.advmon-installed

KAFKA_VERSION := $(shell sed -n 's:.*<kafka.version>\(.*\)</kafka.version>.*:\1:p' tests/kafka/pom.xml)
KAFKA_STAMP := .kafka/$(KAFKA_VERSION)/.fetched

.PHONY: install kafka demo test lint typecheck unit bench constraints clean

$(STAMP): pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -c constraints.txt -e ".[dev,demo]"
	touch $(STAMP)

install: $(STAMP)

## Apache Kafka's jars for the tests and benchmarks, from Maven Central (once; needs Java 17, Maven).
$(KAFKA_STAMP): tests/kafka/pom.xml
	mkdir -p $(dir $@)
	mvn --batch-mode --no-transfer-progress -f tests/kafka/pom.xml package >$(dir $@)maven.log 2>&1 \
		|| { cat $(dir $@)maven.log; exit 1; }
	@echo "Apache Kafka $(KAFKA_VERSION): $$(ls $(dir $@)libs | wc -l) jars in $(dir $@)libs"
	touch $@

kafka: $(KAFKA_STAMP)

## Run the end-to-end demo on embedded defaults.
demo: $(STAMP)
	$(BIN)/advmon demo

## Lint, type-check and run every test (unit and integration against real servers): the
## suite on Apache Kafka, then the tests marked embedded_broker on the demo's broker.
test: lint typecheck unit

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

typecheck: $(STAMP)
	$(BIN)/mypy

unit: $(STAMP) $(KAFKA_STAMP)
	$(BIN)/pytest
	$(BIN)/pytest --kafka=embedded

## Benchmarks; figures land in docs/benchmarks.md, docs/benchmarks-stream.md,
## docs/benchmarks-drift.md and docs/benchmarks-queries.md.
bench: $(STAMP) $(KAFKA_STAMP)
	$(BIN)/python -m benchmarks.squeeze_scoring
	$(BIN)/python -m benchmarks.worker_throughput
	$(BIN)/python -m benchmarks.drift_cost
	$(BIN)/python -m benchmarks.query_cost

## Re-pin every dependency after changing pyproject.toml.
constraints: $(STAMP)
	$(BIN)/python -m pip freeze --exclude-editable --exclude advmon > constraints.txt

clean:
	rm -rf $(VENV) .kafka build *.egg-info .mypy_cache .ruff_cache .pytest_cache demo-output
