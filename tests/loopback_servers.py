"""HTTP servers on 127.0.0.1 that stand in for Google Drive and the Hugging Face hub in tests.

* ``FileServer`` serves files by path with ``Content-Length``, a strong ``ETag``, ``Accept-Ranges`` and
  ``Range`` requests (206 + ``Content-Range``); it can cut the connection after N bytes for the first
  ``cuts`` responses, throttle, and it logs every request (method, path, Range header).
* ``HubServer`` is a ``FileServer`` that answers ``/{repo}/resolve/{revision}/{file}`` the way
  ``huggingface_hub`` expects (``X-Repo-Commit``, ``ETag`` = sha256 of the file, 404 with
  ``X-Error-Code: EntryNotFound`` for a missing file).
"""
from __future__ import annotations

import hashlib
import re
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


class FileServer:
    def __init__(self, files: dict[str, bytes], *, cut_after: int | None = None, cuts: int = 0,
                 chunk: int = 1 << 16, delay: float = 0.0) -> None:
        self.files = dict(files)
        self.cut_after, self.cuts, self.chunk, self.delay = cut_after, cuts, chunk, delay
        self.log: list[tuple[str, str, str | None]] = []
        self._lock = threading.Lock()
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):  # quiet
                pass

            def do_HEAD(self):
                server._handle(self, head=True)

            def do_GET(self):
                server._handle(self, head=False)

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    # ------------------------------------------------------------------ life cycle
    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.httpd.server_address[1]}"

    def __enter__(self) -> "FileServer":
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop()

    def stop(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()

    def gets(self, path_part: str = "") -> list[tuple[str, str, str | None]]:
        return [r for r in self.log if r[0] == "GET" and path_part in r[1]]

    # ------------------------------------------------------------------ serving
    def lookup(self, path: str) -> tuple[bytes | None, dict[str, str]]:
        return self.files.get(path), {}

    def _handle(self, handler: BaseHTTPRequestHandler, head: bool) -> None:
        rng = handler.headers.get("Range")
        with self._lock:
            self.log.append((handler.command, handler.path, rng))
        data, extra = self.lookup(handler.path)
        if data is None:
            handler.send_response(404)
            for key, value in extra.items():
                handler.send_header(key, value)
            handler.send_header("Content-Length", "0")
            handler.end_headers()
            return
        etag = '"' + hashlib.sha256(data).hexdigest() + '"'
        start = 0
        status = 200
        match = re.fullmatch(r"bytes=(\d+)-", rng or "")
        if_range = handler.headers.get("If-Range")
        if match and (if_range is None or if_range == etag):
            start = int(match[1])
            status = 206
        body = data[start:]
        handler.send_response(status)
        handler.send_header("Content-Type", "application/octet-stream")
        handler.send_header("Content-Length", str(len(body)))
        handler.send_header("ETag", etag)
        handler.send_header("Accept-Ranges", "bytes")
        if status == 206:
            handler.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
        for key, value in extra.items():
            handler.send_header(key, value)
        handler.end_headers()
        if head:
            return
        with self._lock:
            cut = self.cuts > 0 and self.cut_after is not None and len(body) > 0
            if cut:
                self.cuts -= 1
        limit = max(0, self.cut_after - start) if cut else len(body)
        try:
            sent = 0
            while sent < limit:
                piece = body[sent:min(limit, sent + self.chunk)]
                handler.wfile.write(piece)
                sent += len(piece)
                if self.delay:
                    time.sleep(self.delay)
            handler.wfile.flush()
        except (BrokenPipeError, ConnectionResetError):
            return
        if cut:  # drop the connection in the middle of the body
            handler.close_connection = True
            import socket

            try:
                handler.connection.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass


class HubServer(FileServer):
    """``files`` maps ``"{repo}/{filename}"`` to bytes."""

    COMMIT = "0123456789abcdef0123456789abcdef01234567"

    def lookup(self, path: str):
        match = re.fullmatch(r"/(?P<repo>[^/]+/[^/]+)/resolve/(?P<rev>[^/]+)/(?P<file>[^?]+)(\?.*)?", path)
        if not match:
            return None, {"X-Error-Code": "RepoNotFound"}
        data = self.files.get(f"{match['repo']}/{match['file']}")
        if data is None:
            return None, {"X-Error-Code": "EntryNotFound", "X-Repo-Commit": self.COMMIT}
        return data, {"X-Repo-Commit": self.COMMIT}

