"""Structure of the Jupyter Book: notebooks, their text copies, the toc and the profiles.

These tests read files only; they never execute a notebook (``pytest --nbval-lax book/``
does that). They check that

* every notebook under ``book/`` has exactly one ``parameters`` cell, its first code cell
  (papermill injects the profile right after it);
* no notebook stores an error output or a progress bar (tqdm text or widget);
* every notebook is paired with an up-to-date MyST text copy ``book/_md/<name>.md``
  (jupytext, configured in ``jupytext.toml``), and every text copy has its notebook;
* ``_toc.yml`` lists every notebook of ``book/``, and every toc entry exists;
* each chapter has ``book/params/cpu/<chapter>.yaml`` and ``book/params/paper/<chapter>.yaml``
  naming exactly its parameters, and the cpu file holds the parameters cell's defaults.
"""

from __future__ import annotations

import ast
import json
import re
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
BOOK = ROOT / "book"
TEXT_DIR = BOOK / "_md"  # where jupytext.toml puts the paired text copies
TEXT_FORMAT = "md:myst"
PROFILES = ("cpu", "paper")
SKIP_PARTS = {"_build", ".ipynb_checkpoints", "_md"}


def _notebooks() -> list[Path]:
    return sorted(
        p for p in BOOK.rglob("*.ipynb") if not SKIP_PARTS.intersection(p.relative_to(BOOK).parts)
    )


NOTEBOOKS = _notebooks()
IDS = [str(p.relative_to(ROOT)) for p in NOTEBOOKS]


def _load(path: Path) -> dict:
    return json.loads(path.read_text(encoding="utf-8"))


def _text(value) -> str:
    return "".join(value) if isinstance(value, list) else (value or "")


def _code_cells(nb: dict) -> list[dict]:
    return [c for c in nb["cells"] if c["cell_type"] == "code"]


def _tags(cell: dict) -> list[str]:
    return list(cell.get("metadata", {}).get("tags", []))


def test_the_book_has_notebooks():
    assert NOTEBOOKS, f"no notebook found under {BOOK}"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=IDS)
def test_parameters_cell_is_the_first_code_cell(path):
    cells = _code_cells(_load(path))
    assert cells, f"{path.name} has no code cell"
    tagged = [i for i, c in enumerate(cells) if "parameters" in _tags(c)]
    assert tagged == [0], (
        f"{path.name}: the `parameters` tag must be on the first code cell and only there; "
        f"found it on code cells {tagged}"
    )


# tqdm writes "42%|████      | 42/100 [00:01<00:02, 20.1it/s]" and redraws with "\r";
# tqdm.auto in a kernel without ipywidgets warns "TqdmWarning: IProgress not found"
_PROGRESS = re.compile(
    r"\d+%\|.*\||\d+(\.\d+)?\s*(it|s)/(s|it)\]|\r(?!\n)|TqdmWarning|IProgress not found"
)


@pytest.mark.parametrize("path", NOTEBOOKS, ids=IDS)
def test_no_stored_errors_or_progress_bars(path):
    problems = []
    for i, cell in enumerate(_code_cells(_load(path))):
        for out in cell.get("outputs", []):
            kind = out.get("output_type")
            if kind == "error":
                error = f"{out.get('ename')}: {out.get('evalue')}"
                problems.append(f"code cell {i}: stored error {error}")
            elif kind == "stream":
                text = _text(out.get("text"))
                if _PROGRESS.search(text):
                    where = out.get("name")
                    problems.append(f"code cell {i}: progress bar in {where}: {text[:80]!r}")
                if out.get("name") == "stderr" and "Traceback" in text:
                    problems.append(f"code cell {i}: traceback on stderr")
            elif kind in ("display_data", "execute_result"):
                data = out.get("data", {})
                if "application/vnd.jupyter.widget-view+json" in data:
                    problems.append(f"code cell {i}: widget output (tqdm.notebook?)")
                if _PROGRESS.search(_text(data.get("text/plain"))):
                    problems.append(f"code cell {i}: progress bar in text/plain output")
    assert not problems, f"{path.name}:\n" + "\n".join(problems)


@pytest.mark.parametrize("path", NOTEBOOKS, ids=IDS)
def test_text_copy_is_in_sync(path):
    jupytext = pytest.importorskip("jupytext")
    from jupytext.config import load_jupytext_config

    text_path = TEXT_DIR / path.relative_to(BOOK).with_suffix(".md")
    assert text_path.exists(), (
        f"{path.name} has no text copy {text_path.relative_to(ROOT)}: "
        f"run `jupytext --sync {path.relative_to(ROOT)}`"
    )
    config = load_jupytext_config(str(path))
    expected = jupytext.writes(jupytext.read(path), fmt=TEXT_FORMAT, config=config)
    stored = text_path.read_text(encoding="utf-8")
    assert stored.rstrip("\n") == expected.rstrip("\n"), (
        f"{text_path.relative_to(ROOT)} is out of sync with {path.relative_to(ROOT)}: "
        f"run `jupytext --sync {path.relative_to(ROOT)}` and commit both files"
    )


def test_every_text_copy_has_its_notebook():
    orphans = [
        str(p.relative_to(ROOT))
        for p in sorted(TEXT_DIR.rglob("*.md"))
        if not (BOOK / p.relative_to(TEXT_DIR)).with_suffix(".ipynb").exists()
    ]
    assert not orphans, f"text copies without a notebook: {orphans}"


def test_jupytext_pairing_is_configured():
    config = (ROOT / "jupytext.toml").read_text(encoding="utf-8")
    assert re.search(r'^formats\s*=\s*"ipynb,_md//md:myst"', config, re.M), (
        "jupytext.toml must pair notebooks with book/_md/<name>.md (formats)"
    )


def _toc_files(node) -> list[str]:
    files = []
    if isinstance(node, dict):
        for key, value in node.items():
            if key in ("file", "root") and isinstance(value, str):
                files.append(value)
            else:
                files += _toc_files(value)
    elif isinstance(node, list):
        for item in node:
            files += _toc_files(item)
    return files


def _toc() -> list[str]:
    return _toc_files(yaml.safe_load((ROOT / "_toc.yml").read_text(encoding="utf-8")))


def test_toc_entries_exist():
    missing = [
        entry
        for entry in _toc()
        if not any((ROOT / entry).with_suffix(s).exists() for s in (".ipynb", ".md"))
        and not (ROOT / entry).exists()
    ]
    assert not missing, f"_toc.yml names files that do not exist: {missing}"


def test_every_notebook_is_in_the_toc():
    listed = {str(Path(entry).with_suffix("")) for entry in _toc()}
    absent = [
        str(p.relative_to(ROOT))
        for p in NOTEBOOKS
        if str(p.relative_to(ROOT).with_suffix("")) not in listed
    ]
    assert not absent, f"notebooks missing from _toc.yml: {absent}"


def _profile(name: str, chapter: str) -> dict:
    path = BOOK / "params" / name / f"{chapter}.yaml"
    assert path.exists(), f"{path.relative_to(ROOT)} is missing: every chapter has one per profile"
    data = yaml.safe_load(path.read_text(encoding="utf-8"))
    assert isinstance(data, dict), f"{path.relative_to(ROOT)} must be a YAML mapping"
    return data


def _parameters(nb: Path) -> dict:
    """The names and default values of a notebook's ``parameters`` cell."""
    cell = next(c for c in _code_cells(_load(nb)) if "parameters" in _tags(c))
    values = {}
    for node in ast.parse(_text(cell["source"])).body:
        assert isinstance(node, ast.Assign) and len(node.targets) == 1, (
            f"{nb.name}: the parameters cell holds only plain assignments"
        )
        values[node.targets[0].id] = ast.literal_eval(node.value)
    return values


@pytest.mark.parametrize("nb", NOTEBOOKS, ids=IDS)
def test_each_chapter_gets_exactly_its_own_parameters(nb):
    """book/params/<profile>/<chapter>.yaml names exactly the chapter's parameters (papermill
    injects nothing a chapter does not read), and the cpu file holds the cell's defaults, so
    the page and the parameters it was executed with cannot contradict each other."""
    cell = _parameters(nb)
    for name in PROFILES:
        data = _profile(name, nb.stem)
        assert data.get("profile") == name, f"params/{name}/{nb.stem}.yaml: profile: {name}"
        assert set(data) == set(cell), (
            f"params/{name}/{nb.stem}.yaml: only in the file {sorted(set(data) - set(cell))}, "
            f"only in the cell {sorted(set(cell) - set(data))}"
        )
    cpu = _profile("cpu", nb.stem)
    differ = {k: (cell[k], cpu[k]) for k in cell if cell[k] != cpu[k]}
    assert not differ, f"{nb.name}: parameters cell vs params/cpu/{nb.stem}.yaml: {differ}"


def test_no_parameter_file_without_its_chapter():
    stems = {nb.stem for nb in NOTEBOOKS}
    stray = [
        str(p.relative_to(ROOT))
        for p in (BOOK / "params").rglob("*.yaml")
        if p.parent.name not in PROFILES or p.stem not in stems
    ]
    assert not stray, f"parameter files with no chapter or profile: {stray}"
