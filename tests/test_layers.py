"""The library imports none of the book's stack; no function in kd2m/ is over 80 lines."""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
LIBRARY = [
    "kd2m",
    "kd2m.metrics",
    "kd2m.data",
    "kd2m.models",
    "kd2m.train",
    "kd2m.runs",
    "kd2m.profiles",
    "kd2m.stats",
    "kd2m.sweep",
    "kd2m.theory",
    "kd2m.__main__",
]
BOOK_STACK = ("matplotlib", "pandas", "umap", "papermill")
MAX_FUNCTION_LINES = 80


def _loaded_after_import(module: str) -> list[str]:
    """Top-level packages of BOOK_STACK in sys.modules after importing ``module`` alone,
    in a fresh interpreter (so that no other test has imported them already)."""
    code = (
        f"import json, sys, {module}\n"
        f"print(json.dumps(sorted({{m.split('.')[0] for m in sys.modules}} & {set(BOOK_STACK)!r})))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, check=True
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


@pytest.mark.parametrize("module", LIBRARY)
def test_library_module_imports_no_book_package(module):
    assert _loaded_after_import(module) == [], (
        f"importing {module} loads {_loaded_after_import(module)}: the library must not import "
        "the book's stack (move the code to kd2m.book, or import inside the function)"
    )


def test_the_check_sees_a_book_module():
    # the check above can fail: kd2m.book.studies imports pandas for its first table
    code = "import json, sys; import kd2m.book.studies as s; s.table([{'a': 1.0}]); "
    code += "print(json.dumps('pandas' in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT)
    if "ModuleNotFoundError" in out.stderr:
        pytest.skip("pandas (the book extra) is not installed")
    assert json.loads(out.stdout.strip().splitlines()[-1]) is True


def _long_functions(root: Path) -> list[str]:
    long = []
    for path in sorted(root.rglob("*.py")):
        tree = ast.parse(path.read_text(), filename=str(path))
        for node in ast.walk(tree):
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                n = node.end_lineno - node.lineno + 1
                if n > MAX_FUNCTION_LINES:
                    long.append(f"{path.relative_to(root.parent)}:{node.lineno} {node.name} ({n})")
    return long


def test_no_function_over_80_lines():
    assert _long_functions(ROOT / "kd2m") == []


def test_the_length_check_finds_a_long_function(tmp_path):
    pkg = tmp_path / "pkg"
    pkg.mkdir()
    body = "\n".join(f"    x{i} = {i}" for i in range(MAX_FUNCTION_LINES))
    (pkg / "m.py").write_text(f"def short():\n    return 1\n\n\ndef long():\n{body}\n")
    assert [s.split()[1] for s in _long_functions(pkg)] == ["long"]
