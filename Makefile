# The two quick-start commands (README): `make demo` and `make test`.
# Both set the machine up first: Debian packages (as root, only when missing) and .venv.

PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
APT_PACKAGES := containerd runc busybox-static umoci gcc libc6-dev
HOST_TOOLS := containerd runc ctr umoci busybox gcc

.PHONY: setup host-tools demo test lint unit integration bench protos backends clean

setup: host-tools $(VENV)/.installed

host-tools:
	@missing=""; for t in $(HOST_TOOLS); do command -v $$t >/dev/null 2>&1 || missing="$$missing $$t"; done; \
	if [ -n "$$missing" ]; then \
		if [ "$$(id -u)" = 0 ]; then \
			echo "installing$$missing (apt: $(APT_PACKAGES))"; \
			apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $(APT_PACKAGES) >/dev/null; \
		else \
			echo "missing:$$missing -- run as root, or: sudo apt-get install -y $(APT_PACKAGES)"; exit 1; \
		fi; \
	fi

$(VENV)/.installed: pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[dev]'
	@touch $@

demo: setup
	$(BIN)/otelbridge demo

test: setup lint
	$(BIN)/pytest

lint: setup
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy
	$(BIN)/lint-imports

unit: setup
	$(BIN)/pytest tests/unit

integration: setup
	$(BIN)/pytest tests/integration

bench: setup
	$(BIN)/python benchmarks/replay.py
	$(BIN)/python benchmarks/memory.py
	$(BIN)/python benchmarks/processor.py
	$(BIN)/python benchmarks/hook.py
	$(BIN)/python benchmarks/live.py

protos: setup
	PYTHON=$(BIN)/python scripts/gen-protos

# the OpenTelemetry Collector and Jaeger v2 of the integration tests, built (or reused
# from ~/.cache/otelbridge-backends) by scripts/backends; the tests run it themselves
# (docs/backends.md)
backends:
	scripts/backends

clean:
	rm -rf $(VENV) .mypy_cache .ruff_cache .pytest_cache .hypothesis
