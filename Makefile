# Two commands do all set-up (see README): `make ablation` and `make test`.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
# The package alone (what `make ablation` needs), without the test-only extras.
BASE   := $(VENV)/.installed-base
PIP    := $(BIN)/python -m pip --disable-pip-version-check
# Extra pytest arguments, e.g. `make test PYTEST_ARGS="-k models -x"`.
PYTEST_ARGS ?=
# The suite runs in two worker processes (pytest-xdist), a test file per worker at a time
# (module-scoped fixtures are built once); `make test PYTEST_WORKERS=0` runs it serially.
PYTEST_WORKERS ?= 2

.PHONY: venv test lint format ablation bench clean

venv: $(STAMP)

# Re-install only when the declared or pinned dependencies change. The torch extra (CPU
# build, pinned) is installed too so the PyTorch-parity tests of the benchmarks run.
$(STAMP): pyproject.toml constraints.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(PIP) install -q -c constraints.txt -e ".[dev,torch]"
	touch $(BASE) $(STAMP)

# `make ablation` on a fresh clone installs only the package (about a minute less than
# the full install with keras, torch and torchvision); an up-to-date full install serves too.
$(BASE): pyproject.toml constraints.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(PIP) install -q -c constraints.txt -e .
	touch $(BASE)

# --durations: CI's log names the slowest tests (the suite should stay under ~10 minutes).
test: $(STAMP)
	$(BIN)/python -m pytest $(if $(filter-out 0,$(PYTEST_WORKERS)),-n $(PYTEST_WORKERS) --dist loadfile) --durations=25 $(PYTEST_ARGS)

# ruff (config in pyproject.toml): lint rules and the formatter's check; `make format` fixes both.
lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

format: $(STAMP)
	$(BIN)/ruff check --fix .
	$(BIN)/ruff format .

ablation: $(if $(wildcard $(STAMP)),$(STAMP),$(BASE))
	$(BIN)/python -m experiments.ablation_bn_dropout

bench: $(STAMP)
	$(BIN)/python -m benchmarks.throughput

clean:
	rm -rf $(VENV) *.egg-info .pytest_cache
