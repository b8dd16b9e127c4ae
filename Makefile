# One command each (see README):
#   make test   set up, then run the unit tests and the book's nbval checks (what CI runs)
#   make book   set up, execute every notebook at the cpu profile with papermill, build the book
PY ?= python3
PROFILE ?= cpu
NOTEBOOKS = book/metrics.ipynb book/table1.ipynb book/fig2.ipynb book/fig3.ipynb book/theory.ipynb book/performance.ipynb
export KD2M_PROGRESS ?= 0

.PHONY: setup test unit nbval lint execute build book clean

setup:
	$(PY) -m pip install -e ".[book,test]"

unit:
	$(PY) -m pytest -q tests

nbval:
	$(PY) -m pytest -q -p no:cacheprovider --nbval-lax book/

lint:
	$(PY) -m ruff check kd2m tests
	$(PY) -m ruff format --check kd2m tests
	$(PY) -m mypy

test: setup lint unit nbval

# Executes the notebooks in place (outputs stored in them) at $(PROFILE), in toc order:
# runs trained by one chapter are loaded, not retrained, by the next.
execute:
	for nb in $(NOTEBOOKS); do \
	  [ -f $$nb ] || continue; \
	  $(PY) -m papermill --cwd book $$nb $$nb -f book/params/$(PROFILE).yaml -k python3 || exit 1; \
	  $(PY) -m jupytext --sync $$nb >/dev/null || exit 1; \
	done

build:
	$(PY) -m jupyter_book build . -W -n --keep-going

book: setup execute build

clean:
	rm -rf _build
