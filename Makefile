# shelfsync — `make demo` runs the demo, `make test` runs the tests (both set up .venv first).
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: demo test test-fast lint typecheck bench clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[test]'
	touch $(STAMP)

demo: $(STAMP)
	$(PY) -m hub.demo

test: $(STAMP)
	bash .ci/test-services
	$(PY) -m pytest -q

typecheck: $(STAMP)
	$(PY) -m mypy protocol hub agent

bench: $(STAMP)
	$(PY) -m pip install --quiet -e '.[test,bench]'
	bash .ci/start-postgres  # the PostgreSQL rows are measured too, never left from an older run
	$(PY) -m bench.run_all

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache demo-data
