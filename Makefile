# One entry point for people and CI: `make demo`, `make test`, `make bench`.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.advmon-installed

KAFKA_VERSION := $(shell sed -n 's:.*<kafka.version>\(.*\)</kafka.version>.*:\1:p' tests/kafka/pom.xml)
KAFKA_STAMP := .kafka/$(KAFKA_VERSION)/.fetched

# deploy/kubernetes is rendered by kustomize and its prometheus-operator objects validated
# against the operator's CRDs by tests/deploy/test_kubernetes.py; both are pinned here.
KUSTOMIZE_VERSION := v5.8.0
PROMETHEUS_OPERATOR_VERSION := v0.87.1
K8S_TOOLS := .tools
K8S_STAMP := $(K8S_TOOLS)/.k8s-tools-$(KUSTOMIZE_VERSION)-$(PROMETHEUS_OPERATOR_VERSION)
PROMETHEUS_OPERATOR_MODULE := github.com/prometheus-operator/prometheus-operator

# tests/packaging builds the package and installs it into a fresh virtualenv from here,
# without the index: the build requirements and the runtime dependencies, as pinned.
WHEELHOUSE := .wheelhouse
WHEELHOUSE_STAMP := $(WHEELHOUSE)/.fetched

.PHONY: install kafka k8s-tools wheelhouse demo test lint typecheck unit bench constraints clean

$(STAMP): pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -c constraints.txt -e ".[demo,attacks,mlflow]" --group dev
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

## kustomize and prometheus-operator's CRDs for the Kubernetes manifests' tests (once; needs Go).
$(K8S_STAMP):
	mkdir -p $(K8S_TOOLS)/bin $(K8S_TOOLS)/crds
	GOBIN=$(abspath $(K8S_TOOLS)/bin) go install sigs.k8s.io/kustomize/kustomize/v5@$(KUSTOMIZE_VERSION)
	go mod download $(PROMETHEUS_OPERATOR_MODULE)@$(PROMETHEUS_OPERATOR_VERSION)
	crds="$$(go env GOMODCACHE)/$(PROMETHEUS_OPERATOR_MODULE)@$(PROMETHEUS_OPERATOR_VERSION)/example/prometheus-operator-crd" \
		&& install -m 644 "$$crds/monitoring.coreos.com_podmonitors.yaml" \
			"$$crds/monitoring.coreos.com_prometheusrules.yaml" $(K8S_TOOLS)/crds/
	@echo "kustomize $$($(K8S_TOOLS)/bin/kustomize version) in $(K8S_TOOLS)/bin," \
		"prometheus-operator $(PROMETHEUS_OPERATOR_VERSION) CRDs in $(K8S_TOOLS)/crds"
	touch $@

k8s-tools: $(K8S_STAMP)

## The wheels a fresh install of advmon needs, for tests/packaging (once; from the index).
$(WHEELHOUSE_STAMP): pyproject.toml constraints.txt $(STAMP)
	rm -rf $(WHEELHOUSE) && mkdir -p $(WHEELHOUSE)
	$(BIN)/python -c 'import tomllib; p = tomllib.load(open("pyproject.toml", "rb")); \
		print("\n".join(p["project"]["dependencies"] + p["build-system"]["requires"]))' \
		>$(WHEELHOUSE)/requirements.txt
	$(BIN)/python -m pip download --quiet -c constraints.txt -r $(WHEELHOUSE)/requirements.txt \
		-d $(WHEELHOUSE)
	@echo "$$(ls $(WHEELHOUSE)/*.whl | wc -l) wheels in $(WHEELHOUSE)"
	touch $@

wheelhouse: $(WHEELHOUSE_STAMP)

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

unit: $(STAMP) $(KAFKA_STAMP) $(K8S_STAMP) $(WHEELHOUSE_STAMP)
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
## name==version for every package, also one installed from a file or URL (pip freeze
## would write its path, which no other machine has).
constraints: $(STAMP)
	$(BIN)/python -m pip list --format=freeze --exclude-editable --exclude advmon \
		--exclude pip --exclude setuptools --exclude wheel > constraints.txt

clean:
	rm -rf $(VENV) .kafka $(K8S_TOOLS) $(WHEELHOUSE) build dist *.egg-info .mypy_cache .ruff_cache .pytest_cache demo-output
