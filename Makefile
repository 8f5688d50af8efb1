# Two commands do all the set-up on a fresh machine: `make demo` and `make test`.
# The environment lives in .venv; constraints.txt pins this machine's exact versions
# (torch 2.13.0 CPU build), while pyproject.toml declares the range supported for users.
# The cluster extra (submitit, for compare --launcher slurm|submitit-local) is installed so
# that its tests run.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo test test-fast lint format bench docs-figures clean

$(STAMP): pyproject.toml constraints.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check -c constraints.txt -e ".[dev,cluster]"
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/normlab compare

# Tests that form torch.distributed groups run after the rest, one at a time.
test: $(STAMP)
	$(BIN)/python -m pytest -n 2 --dist loadfile -q -m "not ddp"
	$(BIN)/python -m pytest -p no:xdist -q -m ddp

test-fast: $(STAMP)
	$(BIN)/python -m pytest -n 2 -q -m "not slow and not ddp"

lint: $(STAMP)
	$(BIN)/ruff check src tests benchmarks
	$(BIN)/ruff format --check src tests benchmarks

format: $(STAMP)
	$(BIN)/ruff format src tests benchmarks
	$(BIN)/ruff check --fix src tests benchmarks

bench: $(STAMP)
	$(BIN)/python benchmarks/bench_step.py

# Every figure of the guide in docs/ (docs/figures/*.png), several minutes on 2 cores.
docs-figures: $(STAMP)
	$(BIN)/python docs/make_figures.py

clean:
	rm -rf $(VENV) build *.egg-info src/*.egg-info .pytest_cache .ruff_cache
