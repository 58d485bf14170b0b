# shelfsync — `make demo` runs the demo, `make test` runs the tests (both set up .venv first).
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: demo test typecheck bench clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[test]'
	touch $(STAMP)

demo: $(STAMP)
	$(PY) -m hub.demo

# One worker per logical CPU (at most 4), one test file per worker at a time: a file's module fixtures are made once.
# Most tests wait on processes, sockets and disks, so two workers halve the wall time on two cores.
test: $(STAMP)
	bash .ci/test-services
	$(PY) -m pytest -q -n logical --maxprocesses=4 --dist loadfile

typecheck: $(STAMP)
	$(PY) -m mypy protocol hub agent

bench: $(STAMP)
	$(PY) -m pip install --quiet -e '.[test,bench]'
	bash .ci/start-postgres  # the PostgreSQL rows are measured too, never left from an older run
	$(PY) -m bench.run_all

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache demo-data
