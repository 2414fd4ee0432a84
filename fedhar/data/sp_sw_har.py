"""Loader for sp-sw-har: smartphone and smartwatch recordings of 23 subjects.

Matey-Sanz, Casteleyn & Granell (2023), Data in Brief 109809, doi:10.1016/j.dib.2023.109809;
data on Zenodo, doi:10.5281/zenodo.8398688 (CC BY 4.0). Layout: `DATA/sXX/sXX_YY_{sp|sw}.csv`
with columns x_acc, y_acc, z_acc (m/s^2), x_gyro, y_gyro, z_gyro (rad/s), timestamp (UNIX ms),
label. Each execution is a ~10-13 s sequence of five short activities.
"""

from __future__ import annotations

import csv
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from fedhar.data.cache import cached_windows, files_fingerprint
from fedhar.data.dataset import Recording, WindowDataset
from fedhar.data.download import check_sha256, find_data_root, prepare_dataset, search_base
from fedhar.data.windows import window_recordings

SP_SW_HAR_CLASSES = ("seated", "standing_up", "walking", "turning", "sitting_down")
DEVICES = {"sp": "smartphone", "sw": "smartwatch"}
DEVICE_CHOICES = {"sp": ("sp",), "sw": ("sw",), "both": ("sp", "sw")}
HEADER = ["x_acc", "y_acc", "z_acc", "x_gyro", "y_gyro", "z_gyro", "timestamp", "label"]
STANDARD_GRAVITY = 9.80665  # m/s^2 per g
HOW_TO_GET = (
    "Download it from Zenodo (doi:10.5281/zenodo.8398688) and pass root= or "
    "offline_path=<archive or folder>, load with download=True, "
    "or set FEDHAR_DATA_DIR to the folder holding sp-sw-har"
)


@dataclass(frozen=True)
class SpSwHarConfig:
    """Options of the sp-sw-har loader."""

    root: str | None = None  # folder with DATA/; None: $FEDHAR_DATA_DIR, then the download cache
    devices: str = "both"  # "sp", "sw" or "both"
    subjects: tuple[str, ...] | None = None  # e.g. ("s01", "s02"); None: all
    rate_hz: float = 50.0  # raw streams run near 100 Hz with jitter and repeated timestamps
    window_length: int = 100  # 2 s: the shortest activities (turning, standing up) last ~2 s
    stride: int = 25  # 0.5 s, so each ~12 s execution gives ~20 windows
    drop_mixed: bool = False
    download: bool = False  # fetch the archive into the cache folder when no data is found
    url: str | None = None  # download from here instead (a mirror); None: the GitHub archive
    sha256: str | None = None  # expected SHA-256 of the archive; None: unverified, with a warning
    offline_path: str | None = None  # local archive or extracted folder used instead of a download
    cache: bool = True
    cache_dir: str | None = None

    def __post_init__(self) -> None:
        if self.devices not in DEVICE_CHOICES:
            raise ValueError(
                f"devices must be one of {sorted(DEVICE_CHOICES)}, got {self.devices!r}"
            )
        if self.subjects is not None:
            object.__setattr__(self, "subjects", tuple(self.subjects))
        object.__setattr__(self, "sha256", check_sha256(self.sha256))


def locate_root(config: SpSwHarConfig) -> Path:
    """The folder holding `DATA/sXX/*.csv`; raises FileNotFoundError with how to get it.

    Looks in `config.root`, else $FEDHAR_DATA_DIR, else the download cache. When nothing is
    found, `config.download` fetches the archive into the cache (verified by `config.sha256`)
    and `config.offline_path` takes a local archive or folder instead.
    """
    base = search_base("sp_sw_har", config.root, config.cache_dir)
    found = base.parent if base.name == "DATA" else find_data_root(base, "DATA", depth=2)
    if found is not None and any((found / "DATA").glob("s*/s*_*_s?.csv")):
        return found
    if config.download or config.offline_path is not None:
        return prepare_dataset(
            "sp_sw_har", config.cache_dir, config.offline_path, config.url, config.sha256
        )
    raise FileNotFoundError(f"sp-sw-har data not found at {base} (no DATA/sXX/*.csv). {HOW_TO_GET}")


def read_execution(path: Path) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Parse one CSV into time (T,) s, signals (T, 6) in g and rad/s, and labels (T,).

    Errors name the file and line.
    """
    label_index = {name.upper(): i for i, name in enumerate(SP_SW_HAR_CLASSES)}
    rows: list[list[float]] = []
    labels: list[int] = []
    with path.open(newline="") as fh:
        reader = csv.reader(fh)
        header = next(reader, None)
        if header != HEADER:
            raise ValueError(f"{path}, line 1: expected header {','.join(HEADER)}, got {header}")
        for row in reader:
            if len(row) != 8:
                raise ValueError(
                    f"{path}, line {reader.line_num}: expected 8 fields, got {len(row)}"
                )
            try:
                rows.append([float(v) for v in row[:7]])
                labels.append(label_index[row[7]])
            except ValueError as err:
                raise ValueError(f"{path}, line {reader.line_num}: {err}") from None
            except KeyError:
                raise ValueError(
                    f"{path}, line {reader.line_num}: unknown label {row[7]!r}; "
                    f"expected one of {sorted(label_index)}"
                ) from None
    values = np.asarray(rows, dtype=np.float64).reshape(-1, 7)  # (T, 7)
    signals = values[:, :6].copy()
    signals[:, :3] /= STANDARD_GRAVITY  # m/s^2 -> g
    return values[:, 6] / 1000.0, signals.astype(np.float32), np.asarray(labels, dtype=np.int64)


def execution_files(config: SpSwHarConfig) -> list[tuple[str, str, Path]]:
    """(subject, device code, path) of every selected execution CSV, sorted."""
    data = locate_root(config) / "DATA"
    subjects = config.subjects or tuple(sorted(p.name for p in data.glob("s[0-9]*") if p.is_dir()))
    files: list[tuple[str, str, Path]] = []
    for subject in subjects:
        if not (data / subject).is_dir():
            raise ValueError(
                f"unknown sp-sw-har subject {subject!r}; folders in {data} are s01..s23"
            )
        for code in DEVICE_CHOICES[config.devices]:
            paths = sorted((data / subject).glob(f"{subject}_*_{code}.csv"))
            files.extend((subject, code, path) for path in paths)
    return files


def read_recordings(config: SpSwHarConfig) -> list[Recording]:
    """Every selected execution file as one Recording (user "sXX", device by file suffix)."""
    recordings = []
    for subject, code, path in execution_files(config):
        time_s, signals, labels = read_execution(path)
        recordings.append(Recording(subject, DEVICES[code], time_s, signals, labels))
    return recordings


def load_sp_sw_har(config: SpSwHarConfig) -> WindowDataset:
    """Windows of sp-sw-har at `config.rate_hz`, cached by config and by the raw files' stamps.

    The cache key holds each selected CSV's name, size and modification time, so editing
    a raw file rebuilds its windows.
    """
    resolved = replace(config, root=str(locate_root(config).resolve()), download=False)
    stamp = files_fingerprint(path for *_, path in execution_files(resolved))

    def build() -> WindowDataset:
        return window_recordings(
            read_recordings(resolved),
            resolved.window_length,
            resolved.stride,
            SP_SW_HAR_CLASSES,
            resolved.rate_hz,
            drop_mixed=resolved.drop_mixed,
        )

    return cached_windows(resolved, build, fingerprint=stamp)
