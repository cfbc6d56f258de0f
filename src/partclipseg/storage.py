"""Where segment jobs read images from and write outputs to: local paths or ``pyarrow`` filesystem URIs.

* Inputs: ``read_input_bytes(source)`` reads a local file (refusing FIFOs, devices and other
  non-regular files without blocking on them) or a URI (``s3://``, ``gs://``, ``file://``, ... any
  filesystem ``pyarrow.fs.FileSystem.from_uri`` knows).
* Outputs: an ``OutputStore`` writes files under a root, each atomically: a local folder (temporary
  file in the same folder, fsync, rename) or a ``pyarrow`` filesystem (temporary object, then move;
  object stores publish an object whole, so a reader never sees half a file there either).

``pyarrow`` is imported only for URIs (it comes with the ``ray`` extra).
"""
from __future__ import annotations

import errno
import os
import posixpath
import stat
import uuid
from pathlib import Path

from .errors import ImageError, OutputError, PartCLIPSegError
from .io import atomic_write_bytes


def is_uri(text: str) -> bool:
    """``scheme://...`` (a single-letter scheme would be a Windows drive, not a URI)."""
    scheme, sep, _ = str(text).partition("://")
    return bool(sep) and len(scheme) > 1 and scheme.replace("+", "").replace("-", "").isalnum()


def arrow_filesystem(uri: str):
    """``(pyarrow filesystem, path inside it)`` for a URI; a clear error when pyarrow is missing."""
    try:
        from pyarrow import fs as pafs
    except ImportError:
        raise PartCLIPSegError(f"{uri}: reading or writing URIs needs pyarrow: pip install 'partclipseg[ray]'") from None
    try:
        return pafs.FileSystem.from_uri(uri)
    except Exception as exc:  # pyarrow raises ArrowInvalid / OSError / ValueError for bad URIs
        raise PartCLIPSegError(f"{uri}: not a usable filesystem URI ({exc})") from None


def file_kind(mode: int) -> str:
    """A word for a non-regular file type, for error messages."""
    for test, word in ((stat.S_ISFIFO, "a FIFO"), (stat.S_ISSOCK, "a socket"), (stat.S_ISCHR, "a character device"),
                       (stat.S_ISBLK, "a block device"), (stat.S_ISDIR, "a folder")):
        if test(mode):
            return word
    return "not a regular file"


def read_input_bytes(source: str) -> bytes:
    """The bytes of an input image. Local files are opened non-blocking and must be regular files
    (a FIFO named ``x.jpg`` would otherwise block forever); raises ``ImageError``."""
    if is_uri(source):
        filesystem, path = arrow_filesystem(source)
        try:
            with filesystem.open_input_file(path) as handle:
                return handle.read()
        except (OSError, ValueError) as exc:
            raise ImageError(f"{source}: cannot read ({exc})") from None
    try:
        fd = os.open(source, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0))
    except OSError as exc:
        raise ImageError(f"{source}: cannot open ({exc.strerror})") from None
    try:
        mode = os.fstat(fd).st_mode
        if not stat.S_ISREG(mode):
            raise ImageError(f"{source}: {file_kind(mode)}, not a regular file; refused")
        chunks = []
        while True:
            chunk = os.read(fd, 1 << 20)
            if not chunk:
                break
            chunks.append(chunk)
        return b"".join(chunks)
    except OSError as exc:
        raise ImageError(f"{source}: cannot read ({exc.strerror})") from None
    finally:
        os.close(fd)




def output_error(where: str, exc: OSError) -> OutputError:
    reason = exc.strerror or str(exc)
    if exc.errno in (errno.ENOSPC, errno.EDQUOT, errno.EFBIG):
        reason += " (the disk or quota is full)"
    return OutputError(f"cannot write to --out {where}: {reason}")


class OutputStore:
    """Files under one root, written atomically. ``name`` arguments are relative posix paths."""

    root: str

    def write_bytes(self, name: str, data: bytes) -> None:
        raise NotImplementedError

    def read_bytes(self, name: str) -> bytes | None:
        """The file's bytes, or None when it does not exist."""
        raise NotImplementedError

    def exists(self, name: str) -> bool:
        raise NotImplementedError

    def delete(self, name: str) -> None:
        """Remove the file if it exists; ``OutputError`` when that fails."""
        raise NotImplementedError

    def local_path(self, name: str) -> Path | None:
        """The file's local path (None on a remote filesystem)."""
        return None

    def prepare(self) -> None:
        """Create the root; raise ``OutputError`` when it is not a writable folder."""
        raise NotImplementedError


class LocalStore(OutputStore):
    def __init__(self, root: str | os.PathLike):
        self.root = os.fspath(root)

    def local_path(self, name: str) -> Path:
        return Path(self.root, *name.split("/"))

    def prepare(self) -> None:
        root = Path(self.root)
        if root.exists() and not root.is_dir():
            raise OutputError(f"--out {self.root} exists and is not a folder")
        try:
            root.mkdir(parents=True, exist_ok=True)
        except FileExistsError:
            raise OutputError(f"--out {self.root}: a file is in the way of the folder") from None
        except OSError as exc:
            raise output_error(self.root, exc) from None
        if not os.access(root, os.W_OK | os.X_OK):
            raise OutputError(f"cannot write to --out {self.root}: permission denied")

    def write_bytes(self, name: str, data: bytes) -> None:
        path = self.local_path(name)
        try:
            atomic_write_bytes(path, data)
        except OSError as exc:
            raise output_error(self.root, exc) from None

    def read_bytes(self, name: str) -> bytes | None:
        try:
            return self.local_path(name).read_bytes()
        except (FileNotFoundError, NotADirectoryError, IsADirectoryError):
            return None

    def exists(self, name: str) -> bool:
        return self.local_path(name).is_file()

    def delete(self, name: str) -> None:
        try:
            self.local_path(name).unlink()
        except (FileNotFoundError, NotADirectoryError):
            pass
        except OSError as exc:
            raise output_error(self.root, exc) from None


class ArrowStore(OutputStore):
    """A ``pyarrow`` filesystem URI (``s3://bucket/out``, ``gs://...``, ``file:///...``)."""

    def __init__(self, uri: str):
        self.root = uri.rstrip("/")
        self.filesystem, self.base = arrow_filesystem(self.root)

    def _path(self, name: str) -> str:
        return posixpath.join(self.base, name)

    def prepare(self) -> None:
        from pyarrow import fs as pafs

        try:
            info = self.filesystem.get_file_info(self.base)
            if info.type == pafs.FileType.File:
                raise OutputError(f"--out {self.root} exists and is not a folder")
            self.filesystem.create_dir(self.base, recursive=True)
        except OSError as exc:
            raise output_error(self.root, exc) from None

    def write_bytes(self, name: str, data: bytes) -> None:
        path = self._path(name)
        parent = posixpath.dirname(path)
        tmp = posixpath.join(parent, f".{posixpath.basename(path)}.{uuid.uuid4().hex[:8]}.tmp")
        try:
            self.filesystem.create_dir(parent, recursive=True)
            with self.filesystem.open_output_stream(tmp) as handle:
                handle.write(data)
            self.filesystem.move(tmp, path)
        except OSError as exc:
            try:
                self.filesystem.delete_file(tmp)
            except OSError:
                pass
            raise output_error(self.root, exc) from None

    def read_bytes(self, name: str) -> bytes | None:
        from pyarrow import fs as pafs

        path = self._path(name)
        if self.filesystem.get_file_info(path).type != pafs.FileType.File:
            return None
        with self.filesystem.open_input_file(path) as handle:
            return handle.read()

    def exists(self, name: str) -> bool:
        from pyarrow import fs as pafs

        return self.filesystem.get_file_info(self._path(name)).type == pafs.FileType.File

    def delete(self, name: str) -> None:
        if self.exists(name):
            try:
                self.filesystem.delete_file(self._path(name))
            except OSError as exc:
                raise output_error(self.root, exc) from None


def open_store(out: str | os.PathLike) -> OutputStore:
    """A local folder or a pyarrow filesystem URI."""
    text = os.fspath(out)
    return ArrowStore(text) if is_uri(text) else LocalStore(text)
