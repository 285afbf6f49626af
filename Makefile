# Two commands do everything on a fresh machine:  make demo   and   make test
# Both create the virtual environment (.venv, via uv and uv.lock) on first use.

PY      ?= python3
UV      := .tools/bin/uv
VENV    := .venv
STAMP   := $(VENV)/.synced

.PHONY: demo test lint typecheck bench services deployments clean

$(UV):
	$(PY) -m venv .tools
	.tools/bin/pip install --quiet --disable-pip-version-check 'uv>=0.5'

$(STAMP): $(UV) pyproject.toml uv.lock
	$(UV) sync --frozen --all-extras --compile-bytecode --python $(PY) --quiet
	@touch $@

demo: $(STAMP)
	$(VENV)/bin/ktlo demo

test: $(STAMP)
	bash .ci/packages
	bash .ci/services
	$(VENV)/bin/ruff check .
	$(VENV)/bin/mypy
	$(VENV)/bin/lint-imports --no-cache
	$(VENV)/bin/pytest $(PYTEST_ARGS)

lint: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

typecheck: $(STAMP)
	$(VENV)/bin/mypy

bench: $(STAMP)
	$(VENV)/bin/python -m bench

deployments: $(STAMP)
	$(VENV)/bin/ktlo deployments --write

clean:
	rm -rf $(VENV) .tools .ktlo .pytest_cache .mypy_cache .ruff_cache
