# Both targets create (or reuse) a local virtual environment and install from the project's own files.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.imgclf-installed

.PHONY: demo test lint bench clean mutation

$(STAMP): pyproject.toml constraints.txt
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --disable-pip-version-check -c constraints.txt -e '.[dev]'
	@touch $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/imgclf demo --out demo-output

# The web page's browser tests (tests/serving/test_serve_browser.py) drive Debian's Chromium. As root,
# `make test` installs it once (README: size and time); NO_BROWSER=1 skips the install (those tests then skip).
NO_BROWSER ?=
test: $(STAMP)
	@if [ -n "$(NO_BROWSER)" ] || command -v chromium >/dev/null; then :; \
	elif [ "$$(id -u)" = 0 ]; then \
	  echo "make test: installing Debian's chromium for the web page's browser tests (about 155 MB to download," \
	    "480 MB on disk, a minute or two; once only). Skip it: make test NO_BROWSER=1"; \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null \
	    && echo "make test: installed $$(chromium --version 2>/dev/null)"; \
	else \
	  echo "make test: no chromium and not root: the browser tests will be skipped (install: apt-get install chromium)"; \
	fi
	$(PY) -m ruff check src tests benchmarks
	$(PY) -m ruff format --check src tests benchmarks
	$(PY) -m mypy
	$(PY) -m pytest -q

lint: $(STAMP)
	$(PY) -m ruff check src tests benchmarks
	$(PY) -m ruff format --check src tests benchmarks
	$(PY) -m mypy

bench: $(STAMP)
	$(PY) benchmarks/bench_cpu.py

# Mutation testing (docs/testing.md); not part of `make test`. MUTANTS narrows the run, e.g.
# make mutation MUTANTS='imgclf.evaluation.*'
MUTANTS ?= imgclf.images.* imgclf.modelfile.* imgclf.training.optim.* imgclf.training.schedule.* imgclf.evaluation.*
mutation: $(STAMP)
	$(PY) -m pip install --quiet --disable-pip-version-check -c constraints.txt -e '.[dev,mutation]'
	rm -rf mutants
	$(PY) -m mutmut run --max-children 2 $(foreach m,$(MUTANTS),'$(m)')
	$(PY) -m mutmut results

clean:
	rm -rf $(VENV) demo-output .pytest_cache .ruff_cache .mypy_cache mutants
	@echo "kept the decode cache: $${IMGCLF_CACHE_DIR:-$${XDG_CACHE_HOME:-$$HOME/.cache}/imgclf} (see its size: imgclf cache info; delete it: imgclf cache clear)"
