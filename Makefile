# The two commands of the README. Each one sets up .venv first if needed (offline-safe).
.PHONY: setup book test lint lab

setup:
	@bash scripts/setup_env.sh

## Execute every chapter (tutorial profile) with papermill, then build the HTML book.
## Two chapters at once by default, each in its own process (the same numbers as one after
## another: JOBS=1).
JOBS ?= 2
book: setup
	.venv/bin/python -m residual_core.runner book --jobs $(JOBS)

## Run the test suite and the linter.
test: setup
	.venv/bin/python -m pytest -q
	.venv/bin/ruff check .

lint: setup
	.venv/bin/ruff check .

## JupyterLab on notebooks/: the chapters open as notebooks, edits are saved to their .py source.
lab: setup
	bash scripts/lab.sh
