"""Fetch dataset archives into the cache folder, verified by SHA-256, or use a local copy."""

from __future__ import annotations

import hashlib
import logging
import os
import re
import shutil
import tarfile
import tempfile
import urllib.error
import urllib.request
import zipfile
from dataclasses import dataclass
from pathlib import Path

from fedhar.data.cache import cache_root

logger = logging.getLogger(__name__)


class DownloadError(RuntimeError):
    """The archive could not be fetched; the message names the URL and the offline option."""


class ChecksumError(DownloadError):
    """The fetched or given archive does not match the expected SHA-256."""


@dataclass(frozen=True)
class DatasetSource:
    """Where one dataset's archive lives and how to recognise its extracted root."""

    url: str
    archive_name: str
    folder: str  # extraction folder under the cache root
    marker: str  # relative path that exists inside the data root
    sha256: str | None = None  # verified whenever set; None: the archive is taken unverified


SOURCES = {
    # The GitHub repository that Zenodo archives as doi:10.5281/zenodo.8398688. A branch zip
    # is rebuilt on every upstream commit, so no checksum can be pinned: pass sha256 yourself.
    "sp_sw_har": DatasetSource(
        url="https://github.com/GeoTecINIT/sp-sw-har-dataset/archive/refs/heads/main.zip",
        archive_name="sp-sw-har-dataset-main.zip",
        folder="sp-sw-har",
        marker="DATA/executions_info.csv",
    ),
    # The UCI archive zip holds a second zip, "UCI HAR Dataset.zip", extracted in turn.
    "uci_har": DatasetSource(
        url="https://archive.ics.uci.edu/static/public/240/human+activity+recognition+using+smartphones.zip",
        archive_name="human+activity+recognition+using+smartphones.zip",
        folder="uci-har",
        marker="activity_labels.txt",
        sha256="c00b803081a5c797cd5e4b83700a9810b38d53d9d84e01917e090e1fdbc81031",
    ),
}
ARCHIVE_SUFFIXES = (".zip", ".tar", ".tar.gz", ".tgz", ".tar.bz2", ".tar.xz")


def sha256_of(path: Path) -> str:
    """Hex SHA-256 of a file, read in 1 MiB chunks."""
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        while chunk := fh.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def check_sha256(sha256: str | None) -> str | None:
    """`sha256` in lower case; a ValueError when it is not 64 hex digits."""
    if sha256 is None:
        return None
    if not re.fullmatch(r"[0-9a-fA-F]{64}", str(sha256)):
        raise ValueError(
            f"sha256 must be 64 hex digits, got {sha256!r}; compute it with `sha256sum <archive>`"
        )
    return str(sha256).lower()


def warn_unverified(name: str, archive: Path, origin: str) -> None:
    """Log that `archive` of dataset `name` is used without a checksum, and how to pin one."""
    digest = sha256_of(archive)
    logger.warning(
        "no sha256 configured for %s: the archive from %s is UNVERIFIED (its sha256 is %s). "
        "Once you trust it, pin it with sha256=%s (CLI: dataset.options.sha256=%s)",
        name,
        origin,
        digest,
        digest,
        digest,
    )


def verify(path: Path, sha256: str | None, origin: str) -> None:
    """Raise ChecksumError naming `origin`, expected and actual hash when they differ."""
    if sha256 is None:
        return
    actual = sha256_of(path)
    if actual != sha256.lower():
        raise ChecksumError(
            f"checksum mismatch for {origin}: expected sha256 {sha256.lower()}, got {actual}. "
            "The file may be truncated or changed upstream; fetch it again, place a verified "
            "copy locally and pass offline_path=<file or folder>, or pass sha256=<hex> of a "
            "copy you trust"
        )


def fetch(url: str, dest: Path, sha256: str | None = None, timeout: float = 60.0) -> Path:
    """Download `url` to `dest` atomically; verify `sha256` when given.

    An existing `dest` is reused if it passes verification. Partial files never remain.
    """
    if dest.is_file():
        verify(dest, sha256, str(dest))
        return dest
    dest.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(dir=dest.parent, prefix=f".{dest.name}.", suffix=".part")
    tmp = Path(tmp_name)
    try:
        with os.fdopen(fd, "wb") as fh, urllib.request.urlopen(url, timeout=timeout) as resp:
            shutil.copyfileobj(resp, fh, 1 << 20)
        verify(tmp, sha256, url)
    except (urllib.error.URLError, OSError) as err:
        tmp.unlink(missing_ok=True)
        reason: object = getattr(err, "reason", err)
        if isinstance(err, urllib.error.HTTPError):
            reason = f"HTTP {err.code} {err.reason}"
        raise DownloadError(
            f"could not download {url}: {reason}. Offline: get {dest.name} elsewhere and pass "
            "offline_path=<archive or extracted folder>, or set FEDHAR_DATA_DIR"
        ) from err
    except ChecksumError:
        tmp.unlink(missing_ok=True)
        raise
    os.replace(tmp, dest)
    return dest


def is_archive(path: Path) -> bool:
    return path.is_file() and path.name.lower().endswith(ARCHIVE_SUFFIXES)


def unpack(archive: Path, dest: Path) -> None:
    """Extract a zip or tar archive into `dest`, refusing members that escape it."""
    root = dest.resolve()
    if zipfile.is_zipfile(archive):
        with zipfile.ZipFile(archive) as zf:
            for name in zf.namelist():
                if not (root / name).resolve().is_relative_to(root):
                    raise ValueError(f"{archive}: member {name!r} would extract outside {dest}")
            zf.extractall(dest)
    elif tarfile.is_tarfile(archive):
        with tarfile.open(archive) as tf:
            tf.extractall(dest, filter="data")
    else:
        raise ValueError(f"{archive} is neither a zip nor a tar archive")


def extract(archive: Path, dest: Path) -> Path:
    """Extract `archive` (and archives found inside it) into `dest`, atomically."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(dir=dest.parent, prefix=f".{dest.name}."))
    try:
        unpack(archive, staging)
        for inner in [p for p in staging.rglob("*") if is_archive(p)]:
            unpack(inner, inner.parent)
            inner.unlink()
        if dest.exists():
            shutil.rmtree(dest)
        os.replace(staging, dest)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return dest


def search_base(name: str, root: str | None, cache_dir: str | os.PathLike[str] | None) -> Path:
    """Where to look for dataset `name`: `root`, else $FEDHAR_DATA_DIR (its subfolder named
    like the cache folder when there is one), else the download cache's folder."""
    folder = SOURCES[name].folder
    if root is not None:
        return Path(root)
    env = os.environ.get("FEDHAR_DATA_DIR")
    if env:
        base = Path(env)
        return base / folder if (base / folder).is_dir() else base
    return cache_root(cache_dir) / folder


def find_data_root(base: Path, marker: str, depth: int = 3) -> Path | None:
    """The folder at most `depth` levels under `base` that contains `marker`."""
    level = [base]
    for _ in range(depth + 1):
        for folder in level:
            if (folder / marker).exists():
                return folder
        level = [c for f in level if f.is_dir() for c in sorted(f.iterdir()) if c.is_dir()]
    return None


def prepare_dataset(
    name: str,
    cache_dir: str | os.PathLike[str] | None = None,
    offline_path: str | os.PathLike[str] | None = None,
    url: str | None = None,
    sha256: str | None = None,
) -> Path:
    """Return the extracted data root of dataset `name`, downloading it if needed.

    Parameters
    ----------
    name : str
        A key of `SOURCES`.
    cache_dir : path, optional
        Cache root (default: $FEDHAR_CACHE_DIR or ~/.cache/fedhar).
    offline_path : path, optional
        A local archive (verified, then extracted) or an already extracted folder.
    url, sha256 : str, optional
        Override the registry entry (e.g. a mirror, or a pinned checksum). An archive taken
        without any checksum is used, but a warning names its hash so that it can be pinned.
    """
    if name not in SOURCES:
        raise ValueError(f"unknown dataset source {name!r}; valid names: {sorted(SOURCES)}")
    source = SOURCES[name]
    url, sha256 = url or source.url, check_sha256(sha256) or source.sha256
    root = cache_root(cache_dir)
    target = root / source.folder
    if offline_path is not None:
        local = Path(offline_path)
        if local.is_dir():
            found = find_data_root(local, source.marker)
            if found is None:
                raise FileNotFoundError(f"{local} does not contain {source.marker} for {name}")
            return found
        if not local.is_file():
            raise FileNotFoundError(f"offline_path {local} does not exist")
        if sha256 is None:
            warn_unverified(name, local, str(local))
        verify(local, sha256, str(local))
        extract(local, target)
    elif find_data_root(target, source.marker) is None:
        archive = fetch(url, root / "downloads" / source.archive_name, sha256)
        if sha256 is None:
            warn_unverified(name, archive, url)
        extract(archive, target)
    found = find_data_root(target, source.marker)
    if found is None:
        raise FileNotFoundError(f"the {name} archive did not contain {source.marker} ({target})")
    return found
