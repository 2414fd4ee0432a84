"""Loader for UCI-HAR: 30 subjects, waist smartphone, pre-cut 2.56 s windows at 50 Hz.

Anguita et al. (2013), "A Public Domain Dataset for Human Activity Recognition Using
Smartphones", ESANN. Reads the standard `UCI HAR Dataset` folder: `{train,test}/Inertial
Signals/{total_acc,body_gyro}_{x,y,z}_{split}.txt` (one window of 128 samples per row;
total_acc in g with gravity, body_gyro in rad/s), `subject_{split}.txt`, `y_{split}.txt` and
`activity_labels.txt`.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from fedhar.data.cache import cached_windows
from fedhar.data.dataset import ACC_GYRO_CHANNELS, WindowDataset
from fedhar.data.download import check_sha256, find_data_root, prepare_dataset, search_base

UCI_RATE_HZ = 50.0
UCI_STRIDE = 64  # the published windows overlap by 50 %
SIGNAL_FILES = (
    "total_acc_x",
    "total_acc_y",
    "total_acc_z",
    "body_gyro_x",
    "body_gyro_y",
    "body_gyro_z",
)
SPLITS = ("train", "test")


@dataclass(frozen=True)
class UciHarConfig:
    """Options of the UCI-HAR loader."""

    root: str | None = None  # "UCI HAR Dataset" or a parent; None: $FEDHAR_DATA_DIR, then cache
    splits: tuple[str, ...] = SPLITS  # the published splits are user-disjoint; both by default
    download: bool = False  # fetch the UCI archive into the cache folder when no data is found
    url: str | None = None  # download from here instead (a mirror); None: the UCI archive
    sha256: str | None = None  # expected SHA-256 of the archive; None: the pinned UCI checksum
    offline_path: str | None = None  # local archive or extracted folder used instead of a download
    cache: bool = True
    cache_dir: str | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "splits", tuple(self.splits))
        object.__setattr__(self, "sha256", check_sha256(self.sha256))
        unknown = sorted(set(self.splits) - set(SPLITS))
        if unknown or not self.splits:
            raise ValueError(f"splits must be a non-empty subset of {SPLITS}, got {self.splits}")


def locate_uci_root(config: UciHarConfig) -> Path:
    """The folder holding activity_labels.txt; raises FileNotFoundError with how to get it.

    Looks in `config.root`, else $FEDHAR_DATA_DIR, else the download cache. When nothing is
    found, `config.download` fetches the archive into the cache (verified by `config.sha256`)
    and `config.offline_path` takes a local archive or folder instead.
    """
    base = search_base("uci_har", config.root, config.cache_dir)
    found = find_data_root(base, "activity_labels.txt", depth=2)
    if found is not None:
        return found
    if config.download or config.offline_path is not None:
        return prepare_dataset(
            "uci_har", config.cache_dir, config.offline_path, config.url, config.sha256
        )
    raise FileNotFoundError(
        f"UCI HAR Dataset not found under {base} (no activity_labels.txt). Download it from "
        "https://archive.ics.uci.edu/dataset/240 and unzip it there or pass "
        "offline_path=<zip or folder>, load with download=True, "
        "or set FEDHAR_DATA_DIR to the folder holding 'UCI HAR Dataset'"
    )


def read_matrix(path: Path, dtype: type = np.float64) -> np.ndarray:
    """Whitespace-separated numbers; errors name the file."""
    if not path.is_file():
        raise FileNotFoundError(f"missing UCI-HAR file {path}")
    try:
        return np.loadtxt(path, dtype=dtype, ndmin=2)
    except ValueError as err:
        raise ValueError(f"{path}: {err}") from None


def read_split(root: Path, split: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """x (N, 6, 128) float32, y (N,) 0-based, subject (N,) int for one published split."""
    signals = root / split / "Inertial Signals"
    channels = [read_matrix(signals / f"{name}_{split}.txt") for name in SIGNAL_FILES]
    x = np.stack(channels, axis=1).astype(np.float32)  # (N, 6, 128)
    y = read_matrix(root / split / f"y_{split}.txt", np.int64)[:, 0] - 1
    subject = read_matrix(root / split / f"subject_{split}.txt", np.int64)[:, 0]
    if not len(x) == len(y) == len(subject):
        raise ValueError(
            f"{root / split}: {len(x)} windows, {len(y)} labels, {len(subject)} subjects differ"
        )
    return x, y, subject


def read_uci_har(config: UciHarConfig) -> WindowDataset:
    """All windows of the chosen splits; users "s01".."s30", start times from window order."""
    root = Path(config.root) if config.root else locate_uci_root(config)
    labels = [line.split() for line in (root / "activity_labels.txt").read_text().splitlines()]
    class_names = tuple(name.lower() for _, name in (row for row in labels if row))
    parts = [read_split(root, split) for split in config.splits]
    x = np.concatenate([p[0] for p in parts])
    y = np.concatenate([p[1] for p in parts])
    subject = np.concatenate([p[2] for p in parts])
    start = np.zeros(len(x))
    for s in np.unique(subject):
        rows = np.flatnonzero(subject == s)  # file order is recording order per subject
        start[rows] = np.arange(len(rows)) * UCI_STRIDE / UCI_RATE_HZ
    return WindowDataset(
        x=x,
        y=y,
        user=np.array([f"s{s:02d}" for s in subject]),
        device=np.full(len(x), "smartphone"),
        start_time_s=start,
        class_names=class_names,
        channel_names=ACC_GYRO_CHANNELS,
        sampling_rate_hz=UCI_RATE_HZ,
    )


def load_uci_har(config: UciHarConfig) -> WindowDataset:
    """UCI-HAR windows, cached by config under the cache folder."""
    resolved = replace(config, root=str(locate_uci_root(config).resolve()), download=False)
    return cached_windows(resolved, lambda: read_uci_har(resolved))
