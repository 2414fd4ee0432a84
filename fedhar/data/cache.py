"""On-disk cache of processed windows, keyed by a hash of the loader's config."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import tempfile
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import numpy as np

from fedhar.data.dataset import WindowDataset

CACHE_FORMAT = 1  # bump when the processing changes, so old entries are not reused
# options that only say where the data comes from, never what it is (the root is keyed)
NOT_KEYED = frozenset({"cache", "cache_dir", "download", "url", "sha256", "offline_path"})


def cache_root(cache_dir: str | os.PathLike[str] | None = None) -> Path:
    """The cache folder: `cache_dir`, else $FEDHAR_CACHE_DIR, else ~/.cache/fedhar."""
    if cache_dir is not None:
        return Path(cache_dir)
    env = os.environ.get("FEDHAR_CACHE_DIR")
    return Path(env) if env else Path.home() / ".cache" / "fedhar"


def config_key(config: Any, fingerprint: str = "") -> str:
    """Stable hex digest of a frozen config dataclass (cache options excluded).

    `fingerprint` adds anything else the data depends on, e.g. the input files' stamps.
    """
    fields = {
        f.name: getattr(config, f.name)
        for f in dataclasses.fields(config)
        if f.name not in NOT_KEYED
    }
    blob = json.dumps(
        {
            "type": type(config).__name__,
            "format": CACHE_FORMAT,
            "fields": fields,
            "fingerprint": fingerprint,
        },
        sort_keys=True,
        default=str,
    )
    return hashlib.sha256(blob.encode()).hexdigest()[:20]


def files_fingerprint(paths: Iterable[Path]) -> str:
    """Hex digest of the files' names, sizes and modification times: changes on any edit."""
    stamps = "".join(f"{p}:{p.stat().st_size}:{p.stat().st_mtime_ns};" for p in paths)
    return hashlib.sha256(stamps.encode()).hexdigest()


def save_windows(ds: WindowDataset, path: Path) -> None:
    """Write `ds` to `path` (.npz) atomically."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, suffix=".npz.tmp")
    with os.fdopen(fd, "wb") as fh:
        np.savez(
            fh,
            x=ds.x,
            y=ds.y,
            user=ds.user.astype(str),
            device=ds.device.astype(str),
            start_time_s=ds.start_time_s,
            class_names=np.array(ds.class_names, dtype=str),
            channel_names=np.array(ds.channel_names, dtype=str),
            sampling_rate_hz=np.float64(ds.sampling_rate_hz),
        )
    os.replace(tmp, path)


def load_windows(path: Path) -> WindowDataset:
    """Read a dataset written by `save_windows`."""
    with np.load(path, allow_pickle=False) as z:
        return WindowDataset(
            x=z["x"],
            y=z["y"],
            user=z["user"],
            device=z["device"],
            start_time_s=z["start_time_s"],
            class_names=tuple(z["class_names"].tolist()),
            channel_names=tuple(z["channel_names"].tolist()),
            sampling_rate_hz=float(z["sampling_rate_hz"]),
        )


def cached_windows(
    config: Any, build: Callable[[], WindowDataset], fingerprint: str = ""
) -> WindowDataset:
    """Return the cached dataset for `config`, building and storing it on a miss.

    `config` is a frozen dataclass; its `cache` (bool) and `cache_dir` fields, if present,
    switch caching off and choose the folder. `fingerprint` is mixed into the key.
    """
    if not getattr(config, "cache", True):
        return build()
    path = (
        cache_root(getattr(config, "cache_dir", None))
        / "windows"
        / (f"{type(config).__name__.lower()}-{config_key(config, fingerprint)}.npz")
    )
    if path.is_file():
        return load_windows(path)
    ds = build()
    save_windows(ds, path)
    return ds
