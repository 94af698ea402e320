# ddrom — single entry point. `make demo` and `make test` install what is missing first.
VENV    ?= .venv
PY      := $(VENV)/bin/python
NP      ?= 2
MPIRUN  := OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1 mpirun --oversubscribe
CASE    ?= cases/demo.toml

.PHONY: install demo test test-fast bench clean help

help:
	@echo "make demo   - install if needed, run the default case on $(NP) ranks"
	@echo "make test   - install if needed, run the test suite (1 rank, then MPI tests on 3 ranks)"
	@echo "make test-fast - the unit and MPI tests without end-to-end pipelines and infrastructure (minutes)"
	@echo "make bench  - run the benchmarks (tables + JSON in benchmarks/results/)"

install:
	@VENV=$(VENV) bash scripts/install.sh

demo: install
	$(MPIRUN) -n $(NP) $(VENV)/bin/ddrom run $(CASE)

test:
	@VENV=$(VENV) WITH_DOLFINX=1 WITH_CALCULIX=1 bash scripts/install.sh
	PY=$(PY) bash scripts/run-tests.sh

test-fast: install
	PY=$(PY) MARKERS="not slow and not infra" bash scripts/run-tests.sh

bench: install
	@mkdir -p benchmarks/results
	$(MPIRUN) -n 1 $(PY) benchmarks/hf_newton.py --json benchmarks/results/hf_newton_np1.json
	$(MPIRUN) -n 2 $(PY) benchmarks/hf_newton.py --json benchmarks/results/hf_newton_np2.json

clean:
	rm -rf out benchmarks/results .pytest_cache
