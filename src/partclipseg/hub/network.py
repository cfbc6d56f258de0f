"""The network side of the downloads: which failures are retried and how they are reported.

Retries are for transient failures only (a cut or refused connection, a timeout, HTTP 408/429/5xx), one
short ``retrying (n/N) in Xs: reason`` line each (``huggingface_hub`` keeps its own count, 5; its two log
lines per retry are folded into that one line). A host name that does not resolve (no network or no
DNS: ``socket.gaierror`` however ``requests``, ``urllib3``, ``httpx`` or ``gdown`` wrap it) is never
retried: the hub's host is looked up before the first request (unless a proxy is configured for it or
``HF_HUB_OFFLINE`` is set), and a redirect to a host that does not resolve stops the download at once
(for the hub: while ``huggingface_hub`` logs warnings, its default). ``PARTCLIPSEG_DOWNLOAD_RETRIES``
(default 3) is the number of reconnections of a ``gdown`` download (each resuming where the bytes stopped).
"""
from __future__ import annotations

import logging
import os
import random
import re
import socket
import sys
import threading
import time
from contextlib import contextmanager
from pathlib import Path
from urllib.parse import urlsplit

RETRIES_ENV = "PARTCLIPSEG_DOWNLOAD_RETRIES"
TRANSIENT_STATUS = (408, 429, 500, 502, 503, 504)  # HTTP answers worth another try


class HostNotResolved(Exception):
    """A download host has no DNS answer (offline, or no DNS): never retried."""

    def __init__(self, host: str) -> None:
        super().__init__(unresolved_text(host))
        self.host = host


def unresolved_text(host: str) -> str:
    return f"the host {host} could not be resolved (no network or no DNS: offline?)"


#: what a failed name lookup says, however a library wraps it (glibc, macOS, Windows, urllib3)
_DNS_TEXT = re.compile(r"Name or service not known|Temporary failure in name resolution|"
                       r"nodename nor servname provided|No address associated with hostname|"
                       r"getaddrinfo failed|Failed to resolve '", re.IGNORECASE)
_RESOLVE_HOST = re.compile(r"Failed to resolve '([^'\s]+)'")
_URL_IN_TEXT = re.compile(r"https?://[^\s'\"<>]+")


def _exception_chain(exc: BaseException):
    """``exc`` and every exception linked to it (cause, context, ``reason``, exception arguments), depth first."""
    seen: set[int] = set()
    stack = [exc]
    while stack:
        item = stack.pop()
        if id(item) in seen or len(seen) > 100:
            continue
        seen.add(id(item))
        yield item
        linked = [item.__cause__, item.__context__, getattr(item, "reason", None), *getattr(item, "args", ())]
        stack.extend(reversed([e for e in linked if isinstance(e, BaseException)]))


def unresolved_host(exc: BaseException, url: str = "") -> str | None:
    """The host whose name lookup failed somewhere in ``exc``'s chain, else None (``url``'s host when the
    chain says a lookup failed but not for which host)."""
    chain = list(_exception_chain(exc))
    for item in chain:
        if isinstance(item, HostNotResolved):
            return item.host
    if not any(isinstance(item, socket.gaierror) or type(item).__name__ == "NameResolutionError"
               or _DNS_TEXT.search(str(item)) for item in chain):
        return None
    for item in chain:
        match = _RESOLVE_HOST.search(str(item))
        if match:
            return match[1]
    for item in chain:  # httpx errors carry their request
        try:
            host = item.request.url.host  # type: ignore[attr-defined]
        except Exception:
            continue
        if host:
            return str(host)
    return urlsplit(url).hostname or url or "of the download address"


def _check_resolvable(url: str) -> None:
    """``HostNotResolved`` at once when ``url``'s host has no DNS answer (skipped where a proxy is used)."""
    parts = urlsplit(url)
    host = parts.hostname
    if not host or _proxied(parts.scheme, host):
        return
    try:
        socket.getaddrinfo(host, parts.port or (443 if parts.scheme == "https" else 80), type=socket.SOCK_STREAM)
    except socket.gaierror:
        raise HostNotResolved(host) from None
    except (OSError, UnicodeError, ValueError):
        pass  # anything else is the download's to report


def _proxied(scheme: str, host: str) -> bool:
    """Whether requests to ``host`` go through a proxy (which then resolves the name, not this machine)."""
    import urllib.request

    proxies = urllib.request.getproxies()
    if not (proxies.get(scheme) or proxies.get("all")):
        return False
    try:
        return not urllib.request.proxy_bypass(host)
    except Exception:
        return True


def _retry_text(exc: BaseException) -> str:
    """A short reason for a retry line: the HTTP status, gdown's own first line, or the innermost error."""
    response = getattr(exc, "response", None)
    status = getattr(response, "status_code", None)
    if status is not None:
        return shorten(f"HTTP {status} {getattr(response, 'reason', '') or ''}".strip(), 160)
    if type(exc).__module__.startswith("gdown") and first_line(exc):
        return shorten(first_line(exc).rstrip("."), 160)
    inner = [e for e in _exception_chain(exc) if first_line(e)]
    root = inner[-1] if inner else exc
    return shorten(f"{type(root).__name__}: {first_line(root)}".rstrip(": ."), 160)


def _transient(exc: BaseException) -> bool:
    """Whether a ``gdown`` failure is worth another try (a name lookup failure never is; checked before)."""
    import requests
    from gdown.exceptions import DownloadError as GdownError, FileURLRetrievalError

    errors = requests.exceptions
    if isinstance(exc, (errors.SSLError, errors.ProxyError)):
        return False
    if isinstance(exc, errors.HTTPError):
        return getattr(exc.response, "status_code", None) in TRANSIENT_STATUS
    if isinstance(exc, (errors.ConnectionError, errors.Timeout, errors.ChunkedEncodingError)):
        return True
    if isinstance(exc, GdownError) and not isinstance(exc, FileURLRetrievalError):  # a cut transfer
        cause = exc.__cause__
        return "incomplete" in str(exc) or isinstance(cause, (errors.ConnectionError, errors.Timeout,
                                                               errors.ChunkedEncodingError))
    return False


def gdown_file(url: str, target: Path, progress: bool) -> None:
    """``gdown`` into ``target`` (resuming a partial file), retried here on transient failures only."""
    import gdown

    retries = int(os.environ.get(RETRIES_ENV, "3"))
    attempt = 0
    while True:
        try:
            gdown.download(url=url, output=str(target), quiet=not progress, resume=True, retries=0,
                           timeout=(15, 60))
            return
        except KeyboardInterrupt:
            raise
        except Exception as exc:
            host = unresolved_host(exc, url)
            if host is not None:
                raise HostNotResolved(host) from exc
            if attempt >= retries or not _transient(exc):
                raise
            attempt += 1
            delay = random.uniform(0, min(2 ** (attempt - 1), 30))  # gdown's own backoff
            if progress:
                print(f"retrying ({attempt}/{retries}) in {delay:.1f}s: {_retry_text(exc)}", file=sys.stderr)
            time.sleep(delay)


def hub_endpoint() -> str:
    from huggingface_hub import constants

    return (os.environ.get("HF_ENDPOINT") or constants.ENDPOINT).rstrip("/")


def hub_file(repo: str, filename: str, revision: str, local_dir: Path) -> str:
    """``hf_hub_download`` of one file: the endpoint's name looked up first, retry lines folded (see
    ``_HubRetryLines``)."""
    from huggingface_hub import constants, hf_hub_download

    offline = getattr(constants, "is_offline_mode", lambda: constants.HF_HUB_OFFLINE)()
    if not offline:
        _check_resolvable(hub_endpoint())
    with _hub_retry_lines():
        return hf_hub_download(repo, filename, revision=revision, local_dir=local_dir,
                               endpoint=os.environ.get("HF_ENDPOINT") or None)


_HUB_LOGGERS = ("huggingface_hub.utils._http", "huggingface_hub.file_download")


class _HubRetryLines(logging.Filter):
    """While ``hf_hub_download`` runs in this thread: its two log lines per retry become one short line, and
    a failed name lookup (a redirect to a host without DNS answer) raises ``HostNotResolved`` at once
    instead of being retried. Other threads' records and other messages pass unchanged."""

    def __init__(self) -> None:
        super().__init__()
        self.thread = threading.get_ident()
        self.why = ""

    def filter(self, record: logging.LogRecord) -> bool:
        if threading.get_ident() != self.thread:
            return True
        text = record.getMessage()
        if _DNS_TEXT.search(text):
            url = _URL_IN_TEXT.search(text)
            raise HostNotResolved(_host_of_text(text) or (urlsplit(url[0]).hostname if url else None) or "?")
        thrown = re.match(r"(?s)'(.*)' thrown while requesting |(HTTP Error \d+) thrown while requesting ", text)
        if thrown:
            self.why = thrown[1] or thrown[2]
            return False
        retry = re.match(r"Retrying in (\S+?)s \[Retry (\d+)/(\d+)\]", text)
        if retry:
            return self._say(record, f"retrying ({retry[2]}/{retry[3]}) in {retry[1]}s: {self.why or 'error'}")
        cut = re.match(r"(?s)Error while downloading from \S+: (.*)\n(.*)", text)
        if cut:
            if "Max retries" in cut[2]:
                return False  # the final error says it
            return self._say(record, f"download interrupted ({cut[1].strip() or 'connection error'}); resuming")
        return True

    @staticmethod
    def _say(record: logging.LogRecord, text: str) -> bool:
        record.msg, record.args = shorten(text, 200), None
        return True


def _host_of_text(text: str) -> str | None:
    match = _RESOLVE_HOST.search(text)
    return match[1] if match else None


@contextmanager
def _hub_retry_lines():
    hub_filter = _HubRetryLines()
    loggers = [logging.getLogger(name) for name in _HUB_LOGGERS]
    for logger in loggers:
        logger.addFilter(hub_filter)
    try:
        yield
    finally:
        for logger in loggers:
            logger.removeFilter(hub_filter)


def first_line(exc: BaseException) -> str:
    return next((line.strip() for line in str(exc).splitlines() if line.strip()), "")


def shorten(text: str, limit: int) -> str:
    """``text`` if it fits in ``limit`` characters, else cut at the last word boundary before it, plus "..."."""
    text = " ".join(text.split())
    if len(text) <= limit:
        return text
    cut = text[:limit - 3]
    space = cut.rfind(" ")
    if space > limit // 2:
        cut = cut[:space]
    return cut.rstrip(" ,;:-([{'\"") + "..."
