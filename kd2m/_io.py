"""File boundaries: atomic writes, checked reads, checksums and locks.

A file is either its old content or its new one, never a partial one. Every failure to
read or write a file raises :class:`FileError`, whose message names the file and the way
out ("delete X and rerun", "disk full while writing X").
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import pickle
import tempfile
import warnings
import zipfile
from collections.abc import Callable
from contextlib import contextmanager
from pathlib import Path

import torch

__all__ = [
    "FileError",
    "atomic_write",
    "atomic_torch_save",
    "atomic_json",
    "read_json",
    "torch_load",
    "file_sha256",
    "probe_writable",
    "path_lock",
]


class FileError(RuntimeError):
    """A file could not be read or written; the message names it and the way out."""

    def __init__(self, path, message: str):
        super().__init__(message)
        self.path = Path(path)


def _write_reason(path: Path, exc: OSError) -> str:
    code = getattr(exc, "errno", None)
    if code in (errno.ENOSPC, errno.EDQUOT):
        return (
            f"disk full while writing {path}: free space on its file system (or set "
            "KD2M_DATA to another data root) and rerun"
        )
    if code in (errno.EACCES, errno.EPERM, errno.EROFS):
        return (
            f"cannot write {path} ({exc.strerror or exc}): make {path.parent} writable "
            "or set KD2M_DATA (or root=) to a writable data root"
        )
    if code in (errno.EEXIST, errno.ENOTDIR):
        return (
            f"cannot write {path}: a file stands where a directory is needed "
            f"({exc.filename or path}): move it away or set KD2M_DATA (or root=) to "
            "another data root"
        )
    return f"writing {path} failed ({exc!r}): check the file system of {path.parent} and rerun"


def atomic_write(path: Path, write: Callable[[str], object]) -> None:
    """Call ``write(tmp)`` on a temporary file beside ``path``, then rename it to ``path``."""
    path = Path(path)
    tmp = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
        os.close(fd)
        write(tmp)
        os.replace(tmp, path)
    except OSError as exc:
        raise FileError(path, _write_reason(path, exc)) from exc
    finally:
        if tmp is not None:
            Path(tmp).unlink(missing_ok=True)


def _torch_save(obj, tmp: str) -> None:
    # through a Python file object, so that a full disk surfaces as OSError(ENOSPC) rather
    # than torch's "enforce fail at inline_container.cc"
    with open(tmp, "wb") as f:
        torch.save(obj, f)
        f.flush()
        os.fsync(f.fileno())


def atomic_torch_save(obj, path: Path) -> None:
    atomic_write(path, lambda tmp: _torch_save(obj, tmp))


def atomic_json(obj, path: Path) -> None:
    text = json.dumps(obj, indent=1) + "\n"
    atomic_write(path, lambda tmp: Path(tmp).write_text(text))


def read_json(path: Path | str, remedy: str):
    """``json.loads`` of ``path``; a missing, unreadable or truncated file raises
    :class:`FileError` naming it and ``remedy``."""
    path = Path(path)
    try:
        return json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise FileError(path, f"cannot read {path} ({exc}): {remedy}") from exc


_LOAD_ERRORS = (
    RuntimeError,
    OSError,
    EOFError,
    ValueError,
    KeyError,
    TypeError,
    AttributeError,
    IndexError,
    pickle.UnpicklingError,
    zipfile.BadZipFile,
)


def torch_load(path: Path | str, remedy: str, **kwargs):
    """``torch.load(path, **kwargs)``; any failure (truncated, garbled, not a torch file)
    raises :class:`FileError` naming the path and ``remedy``."""
    path = Path(path)
    try:
        return torch.load(path, **kwargs)
    except _LOAD_ERRORS as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise FileError(path, f"cannot read {path} ({first}): {remedy}") from exc


def file_sha256(path: str | os.PathLike, chunk: int = 1 << 22) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def probe_writable(directory: Path) -> None:
    """Create ``directory`` and write (then delete) a small file in it, so that a read-only
    or full store fails before any work, with a message that names it."""
    directory = Path(directory)
    probe = directory / f".write-probe-{os.getpid()}"
    try:
        directory.mkdir(parents=True, exist_ok=True)
        with open(probe, "wb") as f:
            f.write(b"kd2m" * 1024)
            f.flush()
            os.fsync(f.fileno())
    except OSError as exc:
        raise FileError(directory, _write_reason(directory, exc)) from exc
    finally:
        try:
            probe.unlink(missing_ok=True)
        except OSError:
            pass


@contextmanager
def path_lock(lock_path: Path, what: str):
    """An exclusive inter-process lock (``filelock``: ``fcntl`` on POSIX, also on shared
    file systems that support it) held while the ``with`` block runs. Warns once when it
    has to wait for another process."""
    from filelock import FileLock, Timeout

    lock_path = Path(lock_path)
    try:
        lock_path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise FileError(lock_path, _write_reason(lock_path, exc)) from exc
    lock = FileLock(str(lock_path))
    try:
        lock.acquire(timeout=0)
    except Timeout:
        warnings.warn(f"waiting for another process that holds {lock_path} ({what})", stacklevel=3)
        lock.acquire()
    except OSError as exc:
        raise FileError(lock_path, _write_reason(lock_path, exc)) from exc
    try:
        yield
    finally:
        lock.release()
