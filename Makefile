# One command each (see README):
#   make book   set up .venv, execute every notebook at the cpu profile with papermill, build the book
#   make test   set up .venv, then lint, unit tests and the book's nbval checks (what CI runs)
# Everything runs in the project's own virtual environment (.venv), never the system Python.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
LOCK ?= requirements/lock.txt
PROFILE ?= cpu
NOTEBOOKS = book/metrics.ipynb book/table1.ipynb book/fig2.ipynb book/fig3.ipynb book/theory.ipynb book/theory_trained.ipynb book/performance.ipynb
export KD2M_PROGRESS ?= 0

.PHONY: setup lock test unit nbval lint execute build book clean

# The venv is (re)installed when pyproject.toml or the lock change; the stamp records success.
$(VENV)/.installed: pyproject.toml $(LOCK)
	@$(PYTHON) -c 'import sys; v = sys.version_info[:2]; assert (3, 11) <= v, f"kd2m needs Python >= 3.11, {sys.executable} is {v[0]}.{v[1]}: make PYTHON=python3.11 ..."'
	[ -x $(PY) ] || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --upgrade pip
	$(PY) -m pip install -c $(LOCK) -e ".[book,test]"
	touch $@

setup: $(VENV)/.installed

# Rewrite the lock from what the venv holds now (after deliberately upgrading a package).
lock: setup
	{ sed -n '1,3p' $(LOCK); $(PY) -m pip freeze --exclude-editable; } > $(LOCK).new && mv $(LOCK).new $(LOCK)

unit: setup
	$(PY) -m pytest -q tests

nbval: setup
	$(PY) -m pytest -q -p no:cacheprovider --nbval-lax book/

lint: setup
	$(PY) -m ruff check kd2m tests
	$(PY) -m ruff format --check kd2m tests
	$(PY) -m mypy

test: setup lint unit nbval

# Executes the notebooks in place (outputs stored in them) at $(PROFILE), in toc order:
# runs trained by one chapter are loaded, not retrained, by the next.
execute: setup
	for nb in $(NOTEBOOKS); do \
	  [ -f $$nb ] || continue; \
	  $(PY) -m papermill --cwd book $$nb $$nb -f book/params/$(PROFILE)/$$(basename $$nb .ipynb).yaml -k python3 || exit 1; \
	  $(PY) -m jupytext --sync $$nb >/dev/null || exit 1; \
	done

# Renders the stored outputs (execute_notebooks: off), warnings as errors.
build: setup
	$(VENV)/bin/jupyter-book build . -W -n --keep-going

book: setup execute build

clean:
	rm -rf _build
