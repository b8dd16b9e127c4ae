"""Helpers shared by the command-line tests (test_store, test_sweep)."""

from __future__ import annotations


def forbid_training(monkeypatch) -> None:
    """Make any training fail the test: for requests that must fail, or list, first."""

    def fit(*args, **kwargs):
        raise AssertionError("trained although nothing should train here")

    monkeypatch.setattr("kd2m.runs.fit", fit)


def run_cli(args: list[str], capsys) -> tuple[int, str, str]:
    """``python -m kd2m ARGS`` in this process: exit code, stdout, stderr."""
    from kd2m.__main__ import main

    rc = main(args)
    out = capsys.readouterr()
    return rc, out.out, out.err
