# make demo: the operator's main job on the local stack.  make test: the whole suite.
VENV   := .venv
PYTHON ?= python3
BIN    := $(VENV)/bin

.PHONY: venv stack-up stack-down test lint unit crds chart lock demo bench clean

venv: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[test]'
	touch $@

stack-up: venv
	scripts/dev-stack up

stack-down:
	@if [ -x $(BIN)/python ]; then scripts/dev-stack down; fi

lint: venv
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy
	$(BIN)/lint-imports

unit: venv
	scripts/pytest-strict tests/unit

# Starts the stack if none is running, runs lint and every test, and stops what it started.
test: lint
	scripts/with-stack scripts/pytest-strict tests

crds: venv
	$(BIN)/habitat-operator crds --output crds/
	$(BIN)/habitat-operator reference --output docs/reference/
	$(BIN)/python scripts/sync_chart.py

# The Helm chart's copies of the CRDs, RBAC rules and alerts.
chart: venv
	$(BIN)/python scripts/sync_chart.py

# The image's Python dependencies, pinned by hash (tests/unit/test_image.py checks it against pyproject.toml).
lock: venv
	echo "setuptools>=68" | $(BIN)/uv pip compile --quiet pyproject.toml - --generate-hashes \
		--python-version 3.11 --python-platform x86_64-manylinux_2_28 -o requirements.lock

demo: venv
	scripts/with-stack scripts/demo

bench: venv
	scripts/with-stack sh -c "$(BIN)/python -m bench.backup && $(BIN)/python -m bench.restore && $(BIN)/python -m bench.s3_memory && $(BIN)/python -m bench.objects && $(BIN)/python -m bench.migration && $(BIN)/python -m bench.scale && $(BIN)/python -m bench.replay && $(BIN)/python -m bench.pitr"

clean: stack-down
	rm -rf $(VENV) .bin
