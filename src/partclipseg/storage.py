"""Where segment jobs read images from and write outputs to: local paths or ``pyarrow`` filesystem URIs.

* Inputs: ``read_input_bytes(source)`` reads a local file (refusing FIFOs, devices and other
  non-regular files without blocking on them) or a URI (``s3://``, ``gs://``, ``file://``, ... any
  filesystem ``pyarrow.fs.FileSystem.from_uri`` knows).
* Outputs: an ``OutputStore`` writes files under a root, each atomically: a local folder (temporary
  file in the same folder, fsync, rename) or a ``pyarrow`` filesystem (temporary object, then move;
  object stores publish an object whole, so a reader never sees half a file there either).

* One job at a time: ``OutputStore.lock()`` takes the output's job lock (``partclipseg-job.lock`` in the
  root), held by the process that plans the job (the local process, torchrun's rank 0, Ray's driver)
  until its report is written; the other ranks and Ray's workers write under it. A second job on the
  same output is refused (``OutputError``: one line, exit code 2) naming the holder (pid, host, since).
  A local folder uses ``fcntl.flock``: the kernel drops the lock when its process dies, so a killed
  job's lock is taken over at once. A ``pyarrow`` filesystem has no locks: the lock is a file holding
  the owner and a heartbeat the holder refreshes every ``LOCK_HEARTBEAT_S`` seconds; it is stale (taken
  over, with a note) when its heartbeat is older than ``LOCK_STALE_S`` or its process is gone from this
  host. Object stores have no compare-and-swap: a taker writes its record, waits ``LOCK_SETTLE_S`` and
  reads it back (two jobs starting within milliseconds of each other can still both win; a holder
  that finds another owner in the file stops at its next batch).

``pyarrow`` is imported only for URIs (it comes with the ``ray`` extra).
"""
from __future__ import annotations

import errno
import json
import os
import posixpath
import socket
import stat
import threading
import time
import uuid
from pathlib import Path
from typing import Callable

from .errors import ImageError, OutputError, PartCLIPSegError
from .io import atomic_write_bytes, json_text

LOCK_FILE = "partclipseg-job.lock"
LOCK_HEARTBEAT_S = 15.0  # a pyarrow-filesystem lock's holder rewrites its heartbeat this often
LOCK_STALE_S = 120.0  # ... and a lock whose heartbeat is older than this is a dead job's
LOCK_SETTLE_S = 1.0  # a taker reads its record back after this long (object stores have no compare-and-swap)


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

    def lock(self, log: Callable[[str], None] | None = None) -> "JobLock":
        """Take the output's job lock (after ``prepare``); ``OutputError`` when another job holds it."""
        raise NotImplementedError


# ============================================================================ job lock
def lock_record(owner: str) -> dict:
    """Who holds a job lock: a random ``owner`` id, pid, host, start time and heartbeat (epoch seconds)."""
    now = time.time()
    return {"owner": owner, "pid": os.getpid(), "host": socket.gethostname(), "started": now, "heartbeat": now}


def parse_lock_record(data: bytes | None) -> dict | None:
    try:
        record = json.loads(data) if data else None
    except ValueError:
        return None
    return record if isinstance(record, dict) else None


def describe_holder(record: dict | None) -> str:
    if not record:
        return "another segment job"
    since = record.get("started")
    when = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(since)) if isinstance(since, (int, float)) else "?"
    return f"another segment job (pid {record.get('pid', '?')} on {record.get('host', '?')}, since {when})"


def in_use_error(root: str, record: dict | None) -> OutputError:
    return OutputError(f"--out {root} is in use by {describe_holder(record)}: wait for it to finish or choose "
                       f"another --out")


def process_gone(record: dict) -> bool:
    """True when ``record``'s process was on this host and no longer runs."""
    pid = record.get("pid")
    if record.get("host") != socket.gethostname() or not isinstance(pid, int) or pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except OSError:  # EPERM: it runs under another user
        return False
    return False


class JobLock:
    """A held job lock; ``release()`` (or ``with``) gives it back, ``check()`` raises if it was lost."""

    root: str

    def check(self) -> None:
        pass

    def release(self) -> None:
        raise NotImplementedError

    def __enter__(self) -> "JobLock":
        return self

    def __exit__(self, *exc) -> None:
        self.release()


class FlockJobLock(JobLock):
    """``fcntl.flock`` on ``<root>/partclipseg-job.lock`` (the kernel releases it when the process dies)."""

    def __init__(self, root: str, path: Path, log: Callable[[str], None] | None):
        import fcntl

        self.root, self.path = root, path
        while True:
            try:
                fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o666)
            except OSError as exc:
                raise output_error(root, exc) from None
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                record = parse_lock_record(_read_fd(fd))
                os.close(fd)
                raise in_use_error(root, record) from None
            except OSError as exc:  # a filesystem without flock
                os.close(fd)
                raise output_error(root, exc) from None
            try:  # the holder before us may have removed the file after we opened it: lock the file that is there
                same = os.fstat(fd).st_ino == os.stat(path).st_ino
            except FileNotFoundError:
                same = False
            if same:
                break
            os.close(fd)
        self.fd = fd
        earlier = parse_lock_record(_read_fd(fd))
        if earlier and log:  # the file stays only when its job ended without releasing (killed)
            log(f"note: {describe_holder(earlier)} ended without releasing {LOCK_FILE} in {root}; taking it over")
        data = (json_text(lock_record(uuid.uuid4().hex)) + "\n").encode()
        os.ftruncate(fd, 0)
        os.pwrite(fd, data, 0)

    def release(self) -> None:
        if self.fd is None:
            return
        try:
            self.path.unlink()  # before unlocking: a job that opened this file re-checks the inode
        except OSError:
            pass
        os.close(self.fd)
        self.fd = None


def _read_fd(fd: int) -> bytes:
    try:
        return os.pread(fd, 1 << 16, 0)
    except OSError:
        return b""


class HeartbeatJobLock(JobLock):
    """A lock file with an owner and a heartbeat, for filesystems without locks (see the module docstring)."""

    def __init__(self, store: OutputStore, log: Callable[[str], None] | None):
        self.root, self.store = store.root, store
        self.owner = uuid.uuid4().hex
        self.lost: str | None = None
        current = parse_lock_record(store.read_bytes(LOCK_FILE))
        if current is not None:
            age = time.time() - float(current.get("heartbeat") or 0)
            if not (age > LOCK_STALE_S or process_gone(current)):
                raise in_use_error(self.root, current)
            if log:
                log(f"note: {describe_holder(current)} left {LOCK_FILE} in {self.root} (last heartbeat "
                    f"{age:.0f} s ago); taking it over")
        self.record = lock_record(self.owner)
        self._write()
        time.sleep(LOCK_SETTLE_S)
        now = parse_lock_record(store.read_bytes(LOCK_FILE))
        if not now or now.get("owner") != self.owner:
            raise in_use_error(self.root, now)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._beat, name="partclipseg-lock-heartbeat", daemon=True)
        self._thread.start()

    def _write(self) -> None:
        self.store.write_bytes(LOCK_FILE, (json_text(self.record) + "\n").encode())

    def _beat(self) -> None:
        while not self._stop.wait(LOCK_HEARTBEAT_S):
            try:
                now = parse_lock_record(self.store.read_bytes(LOCK_FILE))
                if not now or now.get("owner") != self.owner:
                    self.lost = describe_holder(now) if now else "a job that removed it"
                    return
                self.record["heartbeat"] = time.time()
                self._write()
            except (OSError, PartCLIPSegError):
                continue  # a passing network error: try again at the next beat

    def check(self) -> None:
        if self.lost:
            raise OutputError(f"--out {self.root}: {self.lost} took over the job lock ({LOCK_FILE}); "
                              f"stopping this job")

    def release(self) -> None:
        if self._stop.is_set():
            return
        self._stop.set()
        self._thread.join()
        try:
            now = parse_lock_record(self.store.read_bytes(LOCK_FILE))
            if now and now.get("owner") == self.owner:
                self.store.delete(LOCK_FILE)
        except (OSError, PartCLIPSegError):
            pass


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

    def lock(self, log: Callable[[str], None] | None = None) -> JobLock:
        try:
            import fcntl  # noqa: F401
        except ImportError:  # no flock (Windows): the heartbeat lock
            return HeartbeatJobLock(self, log)
        return FlockJobLock(self.root, self.local_path(LOCK_FILE), log)

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

    def lock(self, log: Callable[[str], None] | None = None) -> JobLock:
        return HeartbeatJobLock(self, log)

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
