"""Atomic file writing: write to a temporary file in the same folder, then rename.

A reader never sees a half-written file, and a killed process never leaves a truncated output
where a good one was before.
"""
from __future__ import annotations

import contextlib
import os
import threading
import tempfile
from pathlib import Path
from typing import Callable, Iterator


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; on success it is renamed onto ``path``.

    On error the temporary file is removed and ``path`` is left untouched.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        # mkstemp makes 0600 files, and some writers (safetensors) re-create the file: outputs get the usual mode
        os.chmod(tmp_path, 0o666 & ~_umask())
        with open(tmp_path, "rb+") as handle:
            os.fsync(handle.fileno())
        os.replace(tmp_path, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            tmp_path.unlink()
        raise


def _umask() -> int:
    """The process umask. Reading it means setting it, so the set-and-restore runs under a lock: output
    sets are written by several threads, and an unlocked pair can leave 022 behind for good."""
    with _UMASK_LOCK:
        mask = os.umask(0o022)
        os.umask(mask)
    return mask


_UMASK_LOCK = threading.Lock()


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_with(path: str | os.PathLike, writer: Callable[[Path], None]) -> None:
    """Call ``writer(tmp_path)`` and move the result onto ``path`` atomically."""
    with atomic_path(path) as tmp:
        writer(tmp)


# ---------------------------------------------------------------------------- JSON
def finite_json(value):
    """``value`` with every non-finite float (NaN, +-Inf) replaced by ``None`` (JSON ``null``).

    RFC 8259 has no NaN or Infinity; Python's ``json`` writes them as bare words that strict
    readers refuse. Containers are copied (dicts, lists, tuples -> lists); numpy scalars become floats.
    """
    import math

    if isinstance(value, bool) or value is None or isinstance(value, (int, str)):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: finite_json(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [finite_json(v) for v in value]
    if hasattr(value, "item") and getattr(value, "ndim", None) == 0:  # numpy / torch scalars
        return finite_json(value.item())
    return value


def json_text(value, indent: int | None = None, **kwargs) -> str:
    """The one way the package serialises JSON: valid RFC 8259 (non-finite floats -> null)."""
    import json

    return json.dumps(finite_json(value), indent=indent, allow_nan=False, **kwargs)


# ---------------------------------------------------------------------------- output locations
def fsync_dir(path: str | os.PathLike) -> None:
    """Flush a folder's entries (renames, new files) to disk; a no-op where folders cannot be opened."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _nearest_existing(path: Path) -> Path:
    path = path.absolute()
    while not path.exists() and path != path.parent:
        path = path.parent
    return path


def check_writable_folder(path: str | os.PathLike, what: str) -> None:
    """Refuse (``OutputError``) a folder that cannot be created or written to, or is a file.

    The nearest existing ancestor must be a writable folder; a probe file is written and removed
    there so that a full or read-only file system is found before any work is done.
    """
    from .errors import OutputError

    path = Path(path)
    if path.exists() and not path.is_dir():
        raise OutputError(f"{what} {path} is a file, not a folder")
    base = _nearest_existing(path)
    if not base.is_dir():
        raise OutputError(f"{what} {path}: {base} is a file, not a folder")
    if not os.access(base, os.W_OK | os.X_OK):
        raise OutputError(f"{what} {path}: {base} is not writable")
    try:
        fd, probe = tempfile.mkstemp(prefix=".partclipseg-probe-", dir=base)
        try:
            os.write(fd, b"x" * 4096)
            os.fsync(fd)
        finally:
            os.close(fd)
            os.unlink(probe)
    except OSError as exc:
        raise OutputError(f"{what} {path}: cannot write in {base}: {exc.strerror or exc}") from None


def check_writable_file(path: str | os.PathLike, what: str) -> None:
    """Refuse an output file whose place is a folder or cannot be written (see ``check_writable_folder``)."""
    from .errors import OutputError

    path = Path(path)
    if path.is_dir():
        raise OutputError(f"{what} {path} is a folder; give a file name")
    check_writable_folder(path.parent if str(path.parent) else Path("."), what)
