"""Fetching a named model into the cache: download, check, convert once, record hashes.

* Google Drive files (the authors' ``.pth``) come through ``gdown``: progress bar, a resumable partial
  file (``<file>XXXXXXXX.part``, continued with an HTTP ``Range`` request, also by a later run), a
  check against the length the server announced (and the registry's exact size and sha256 when
  known), and an atomic rename into place. The ``.pth`` is then read once with
  ``torch.load(weights_only=True)``, converted to ``config.json`` + ``model.safetensors`` and deleted;
  later loads never unpickle.
* Hub repositories come through ``huggingface_hub.hf_hub_download`` (``HF_ENDPOINT`` / ``HF_HUB_OFFLINE``
  are honoured); a ``pytorch_model.bin`` is converted to ``model.safetensors`` once.

Either way ``manifest.json`` (sizes and sha256) is written last, under the model's file lock.

Foreign weight files (``registry.WEIGHT_FILES``: the checkpoints a new model starts training from)
come the same ways (a hub file through ``hf_hub_download``, a plain URL through ``gdown``'s resumable
download) into ``$PARTCLIPSEG_HOME/weights/<name>/``; ``ensure_weight_file`` converts the ``.pth`` once
into ``<stem>.safetensors`` (the file's own key names; ``torch.load(weights_only=True)``) and records it.
Any failure becomes a ``DownloadError`` saying the URL, the manual way and the folder to use.

``PARTCLIPSEG_GDRIVE_URL`` (a template with ``{id}``) replaces the Drive download address: it is how
the tests point ``gdown`` at a server on 127.0.0.1. Retries (transient failures only; a host name that
does not resolve fails at once) and ``PARTCLIPSEG_DOWNLOAD_RETRIES``: :mod:`partclipseg.hub.network`.
"""
from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path

from ..errors import DownloadError, PartCLIPSegError
from .network import first_line, gdown_file, hub_endpoint, hub_file, shorten, unresolved_host, unresolved_text
from .registry import GDRIVE_URL, GDRIVE_VIEW_URL, ModelEntry, WeightFile
from .store import MANIFEST, lock_for, model_dir, read_manifest, sha256_of, verify, weights_dir, write_manifest

GDRIVE_URL_ENV = "PARTCLIPSEG_GDRIVE_URL"
HF_FILES = ("config.json", "preprocessor_config.json")
HF_WEIGHTS = ("model.safetensors", "pytorch_model.bin")
MAX_REASON = 300  # characters of a library's error message quoted in ours (cut at a word, with "...")


def ensure_model(entry: ModelEntry, progress: bool = True) -> Path:
    """The verified cache folder of ``entry``, fetched and converted first if needed."""
    folder = model_dir(entry)
    manifest = read_manifest(folder)
    if manifest is not None:
        verify(folder, manifest)
        return folder
    lock = _acquire_announced(folder, f"model {entry.name!r}")
    try:
        manifest = read_manifest(folder)  # another process may have finished while we waited
        if manifest is None:
            folder.mkdir(parents=True, exist_ok=True)
            if entry.source == "gdrive":
                _fetch_gdrive(entry, folder, progress)
            elif entry.source == "hub":
                _fetch_hub(entry, folder, progress)
            else:
                raise PartCLIPSegError(f"model {entry.name!r} is built in; nothing to download")
            manifest = read_manifest(folder)
        verify(folder, manifest)
    finally:
        lock.release()
    return folder


# ---------------------------------------------------------------------------- Google Drive
def gdrive_url(entry: ModelEntry) -> str:
    return os.environ.get(GDRIVE_URL_ENV, GDRIVE_URL).format(id=entry.gdrive_id)


def _fetch_gdrive(entry: ModelEntry, folder: Path, progress: bool) -> None:
    target = folder / entry.filename
    url = gdrive_url(entry)
    if not target.is_file():  # a file put there by hand is taken as is
        try:
            import gdown  # noqa: F401  (imported here to say clearly when it is missing)
        except ImportError:
            raise DownloadError(_manual(entry, folder, url, "the gdown package is not installed "
                                                             "(pip install gdown)")) from None
        try:
            gdown_file(url, target, progress)
        except KeyboardInterrupt:
            _drop_empty_partials(folder, entry.filename)
            raise
        except Exception as exc:  # network, HTTP and gdown errors: one message, no traceback
            kept = _drop_empty_partials(folder, entry.filename)
            raise DownloadError(_manual(entry, folder, url, _reason(exc, url), kept)) from None
    size, digest = target.stat().st_size, sha256_of(target)
    problem = None
    if entry.bytes is not None and size != entry.bytes:
        problem = f"{target.name} has {size} bytes, expected {entry.bytes}"
    elif entry.sha256 is not None and digest != entry.sha256:
        problem = f"{target.name} has sha256 {digest}, expected {entry.sha256}"
    if problem:
        target.unlink()
        raise DownloadError(_manual(entry, folder, url, problem + " (the file was removed)"))
    _convert_official(entry, folder, target, {"file": entry.filename, "bytes": size, "sha256": digest, "url": url})


def _convert_official(entry: ModelEntry, folder: Path, pth: Path, download: dict) -> None:
    from ..checkpoint import CONFIG_NAME, WEIGHTS_NAME, write_saved
    from ..official_checkpoint import read_official_any

    config, state = read_official_any(pth, entry.config_preset)  # a preset name or a config JSON file
    write_saved(state, config, folder)  # the loader checks every key against the model on each load
    write_manifest(folder, [CONFIG_NAME, WEIGHTS_NAME], name=entry.name, source=entry.source_text,
                   download=download)
    pth.unlink()  # converted: later loads read the safetensors only
    print(f"converted {pth.name} into {folder} ({CONFIG_NAME} + {WEIGHTS_NAME}; sha256 recorded in {MANIFEST})",
          file=sys.stderr)


def _drop_empty_partials(folder: Path, filename: str) -> list[str]:
    """Remove empty partial files of ``filename``; return the names of the non-empty ones (kept to resume)."""
    kept = []
    for part in folder.glob(f"{filename}*.part"):
        if part.stat().st_size == 0:
            part.unlink()
        else:
            kept.append(part.name)
    if not any(folder.iterdir()):
        folder.rmdir()
    return kept


# ---------------------------------------------------------------------------- Hugging Face hub
def _fetch_hub(entry: ModelEntry, folder: Path, progress: bool) -> None:
    from ..hf_clipseg import read_hf_clipseg

    present = [n for n in HF_WEIGHTS if (folder / n).is_file()]
    if not ((folder / "config.json").is_file() and present):  # nothing put there by hand: download
        _hub_download(entry, folder, progress)
    try:
        read_hf_clipseg(folder)  # the files must read and convert before they are recorded
    except PartCLIPSegError as exc:
        raise DownloadError(f"the files in {folder} do not form a CLIPSeg model ({exc}); delete the folder and "
                            f"run again") from None
    bin_path = folder / "pytorch_model.bin"
    if not (folder / "model.safetensors").is_file() and bin_path.is_file():
        _bin_to_safetensors(bin_path)
    files = [n for n in ("config.json", "preprocessor_config.json", "model.safetensors") if (folder / n).is_file()]
    write_manifest(folder, files, name=entry.name, source=entry.source_text, url=entry.url,
                   revision=entry.hub_revision)


def _hub_download(entry: ModelEntry, folder: Path, progress: bool) -> None:
    from huggingface_hub.errors import EntryNotFoundError

    staging = folder / ".hub"
    wanted = {"config.json": True, "preprocessor_config.json": False}
    try:
        for name, required in wanted.items():
            try:
                hub_file(entry.hub_repo, name, entry.hub_revision, staging)
            except EntryNotFoundError:
                if required:
                    raise
        for name in HF_WEIGHTS:
            try:
                hub_file(entry.hub_repo, name, entry.hub_revision, staging)
                break
            except EntryNotFoundError:
                if name == HF_WEIGHTS[-1]:
                    raise
    except KeyboardInterrupt:
        raise
    except Exception as exc:
        _drop_hub_staging(staging, folder)
        raise DownloadError(_manual(entry, folder, entry.url, _reason(exc, hub_endpoint()))) from None
    for path in staging.iterdir():
        if path.is_file():
            os.replace(path, folder / path.name)
    shutil.rmtree(staging, ignore_errors=True)


def _drop_hub_staging(staging: Path, folder: Path) -> None:
    """Keep resumable ``.incomplete`` bytes of huggingface_hub; drop the folders if nothing is in them."""
    if staging.is_dir() and not any(p.stat().st_size for p in staging.rglob("*.incomplete")):
        shutil.rmtree(staging, ignore_errors=True)
    if folder.is_dir() and not any(folder.iterdir()):
        folder.rmdir()


def _bin_to_safetensors(bin_path: Path) -> None:
    from safetensors.torch import save_file

    from ..checkpoint import read_torch_checkpoint
    from ..io import atomic_path

    state = {k: v.contiguous() for k, v in read_torch_checkpoint(bin_path).items()}
    with atomic_path(bin_path.with_name("model.safetensors")) as tmp:
        save_file(state, str(tmp), metadata={"format": "pt"})
    bin_path.unlink()


# ---------------------------------------------------------------------------- foreign weight files
def ensure_weight_file(entry: WeightFile, progress: bool = True) -> Path:
    """The verified ``<stem>.safetensors`` of ``entry`` in the cache, fetched and converted first if needed."""
    folder = weights_dir(entry.name)
    converted = folder / (Path(entry.filename).stem + ".safetensors")
    manifest = read_manifest(folder)
    if manifest is None:
        lock = _acquire_announced(folder, repr(entry.name))
        try:
            if read_manifest(folder) is None:  # another process may have finished while we waited
                folder.mkdir(parents=True, exist_ok=True)
                raw = folder / entry.filename
                if not raw.is_file():  # a file put there by hand is taken as is
                    _download_weight_file(entry, folder, progress)
                _convert_weight_file(entry, raw, converted)
        finally:
            lock.release()
    verify(folder)
    return converted


def _download_weight_file(entry: WeightFile, folder: Path, progress: bool) -> None:
    target = folder / entry.filename
    try:
        if entry.source == "hub":
            staging = folder / ".hub"
            hub_file(entry.hub_repo, entry.filename, entry.hub_revision, staging)
            os.replace(staging / entry.filename, target)
            shutil.rmtree(staging, ignore_errors=True)
        else:
            gdown_file(entry.url, target, progress)  # ImportError when gdown is missing: said below
    except KeyboardInterrupt:
        raise
    except ImportError:
        raise DownloadError(_manual_weight_file(entry, folder, "the gdown package is not installed "
                                                               "(pip install gdown)")) from None
    except Exception as exc:  # network, HTTP, hub and gdown errors: one message, no traceback
        if entry.source == "hub":
            _drop_hub_staging(folder / ".hub", folder)
        else:
            _drop_empty_partials(folder, entry.filename)
        where = hub_endpoint() if entry.source == "hub" else entry.url
        raise DownloadError(_manual_weight_file(entry, folder, _reason(exc, where))) from None
    size = target.stat().st_size
    problem = None
    if entry.bytes is not None and size != entry.bytes:
        problem = f"{target.name} has {size} bytes, expected {entry.bytes}"
    elif entry.sha256 is not None and sha256_of(target) != entry.sha256:
        problem = f"{target.name} has a sha256 other than the registry's {entry.sha256}"
    if problem:
        target.unlink()
        raise DownloadError(_manual_weight_file(entry, folder, problem + " (the file was removed)"))


def _convert_weight_file(entry: WeightFile, raw: Path, converted: Path) -> None:
    """``.pth`` (a state dict, or detectron2's ``{"model": ...}``) -> ``.safetensors`` with the same keys."""
    from safetensors.torch import save_file

    from ..checkpoint import read_torch_checkpoint
    from ..io import atomic_path

    download = {"file": entry.filename, "bytes": raw.stat().st_size, "sha256": sha256_of(raw), "url": entry.url}
    state = {k: v.contiguous().clone() for k, v in read_torch_checkpoint(raw).items()}  # no shared storage
    with atomic_path(converted) as tmp:
        save_file(state, str(tmp), metadata={"format": "pt", "key_format": entry.key_format})
    write_manifest(converted.parent, [converted.name], name=entry.name, source=entry.source_text,
                   key_format=entry.key_format, download=download)
    raw.unlink()  # converted: later uses read the safetensors only
    print(f"converted {raw.name} into {converted} (sha256 recorded in {MANIFEST})", file=sys.stderr)


def _manual_weight_file(entry: WeightFile, folder: Path, reason: str) -> str:
    return (f"could not download {entry.name!r} ({entry.size}) from {entry.url}: {_sentence(reason)} To get it by "
            f"hand: download {entry.url} on a machine with network, put it as {folder / entry.filename} and run the "
            f"command again; it is checked and converted on first use.")


# ---------------------------------------------------------------------------- messages
def _reason(exc: BaseException, url: str = "") -> str:
    """Why a download failed, for the one-line error: a host without DNS answer said plainly, else the
    exception's type and first line (cut at a word, with "...", past ``MAX_REASON`` characters)."""
    host = unresolved_host(exc, url)
    if host is not None:
        return unresolved_text(host)
    first = first_line(exc).rstrip(".")
    return shorten(f"{type(exc).__name__}: {first}", MAX_REASON) if first else type(exc).__name__


def _sentence(reason: str) -> str:
    """``reason`` ended with one full stop (none added after a "...")."""
    return reason if reason.endswith(".") else reason + "."


def _manual(entry: ModelEntry, folder: Path, url: str, reason: str, kept: list[str] | None = None) -> str:
    """The offline / failure message: what failed, the manual way, and where to put the file."""
    lead = f"could not download model {entry.name!r} ({entry.size}) from {url}: {_sentence(reason)}"
    if kept:
        lead += f" The bytes received so far are kept in {folder / kept[0]}; running again resumes there."
    if entry.source == "gdrive":
        manual = (f" To get it by hand: open {GDRIVE_VIEW_URL.format(id=entry.gdrive_id)} in a browser (or run "
                  f"`gdown {entry.gdrive_id} -O {entry.filename}`), put the file as {folder / entry.filename} and "
                  f"run the command again; it is checked and converted on first use.")
    else:
        manual = (f" To get it by hand: `hf download {entry.hub_repo} config.json "
                  f"preprocessor_config.json model.safetensors --local-dir {folder}` (or save those files from "
                  f"{entry.url}/tree/{entry.hub_revision} into {folder}) and run the command again.")
    other = (f" Or run `partclipseg download {entry.name} --to DIR` on a machine with network, copy DIR here and "
             f"pass --model DIR.")
    return lead + manual + other


def describe(folder: Path) -> str:
    manifest = read_manifest(folder) or {}
    files = manifest.get("files", {})
    total = sum(r["bytes"] for r in files.values())
    return f"{folder} ({', '.join(files)}; {total / 1e6:.1f} MB; {MANIFEST} records sha256)"


def _acquire_announced(folder: Path, what: str):
    """The cache folder's file lock, acquired; says on stderr when another process holds it."""
    from filelock import Timeout

    lock = lock_for(folder)
    try:
        lock.acquire(timeout=0)
    except Timeout:
        print(f"waiting for another process that is fetching {what} (lock {lock.lock_file})", file=sys.stderr)
        lock.acquire()
    return lock
