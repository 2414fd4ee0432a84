"""Loader for sp-sw-har: smartphone and smartwatch recordings of 23 subjects.

Matey-Sanz, Casteleyn & Granell (2023), Data in Brief 109809, doi:10.1016/j.dib.2023.109809;
data on Zenodo, doi:10.5281/zenodo.8398688 (CC BY 4.0). Layout: `DATA/sXX/sXX_YY_{sp|sw}.csv`
with columns x_acc, y_acc, z_acc (m/s^2), x_gyro, y_gyro, z_gyro (rad/s), timestamp (UNIX ms),
label. Each execution is a ~10-13 s sequence of five short activities.
"""

from __future__ import annotations

import csv
import os
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from fedhar.data.cache import cache_root, cached_windows
from fedhar.data.dataset import Recording, WindowDataset
from fedhar.data.download import find_data_root, prepare_dataset
from fedhar.data.windows import window_recordings

SP_SW_HAR_CLASSES = ("seated", "standing_up", "walking", "turning", "sitting_down")
DEVICES = {"sp": "smartphone", "sw": "smartwatch"}
DEVICE_CHOICES = {"sp": ("sp",), "sw": ("sw",), "both": ("sp", "sw")}
HEADER = ["x_acc", "y_acc", "z_acc", "x_gyro", "y_gyro", "z_gyro", "timestamp", "label"]
STANDARD_GRAVITY = 9.80665  # m/s^2 per g
HOW_TO_GET = (
    "Download it from Zenodo (doi:10.5281/zenodo.8398688) or load with download=True, "
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
    cache: bool = True
    cache_dir: str | None = None

    def __post_init__(self) -> None:
        if self.devices not in DEVICE_CHOICES:
            raise ValueError(
                f"devices must be one of {sorted(DEVICE_CHOICES)}, got {self.devices!r}"
            )
        if self.subjects is not None:
            object.__setattr__(self, "subjects", tuple(self.subjects))


def locate_root(
    root: str | os.PathLike[str] | None, download: bool = False, cache_dir: str | None = None
) -> Path:
    """The folder holding `DATA/sXX/*.csv`; raises FileNotFoundError with how to get it.

    Looks in `root`, else $FEDHAR_DATA_DIR, else the download cache; `download` fetches the
    archive into the cache when nothing is found.
    """
    if root is not None:
        base = Path(root)
    elif os.environ.get("FEDHAR_DATA_DIR"):
        base = Path(os.environ["FEDHAR_DATA_DIR"])
        base = base / "sp-sw-har" if (base / "sp-sw-har").is_dir() else base
    else:
        base = cache_root(cache_dir) / "sp-sw-har"
    found = base.parent if base.name == "DATA" else find_data_root(base, "DATA", depth=2)
    if found is not None and any((found / "DATA").glob("s*/s*_*_s?.csv")):
        return found
    if download:
        return prepare_dataset("sp_sw_har", cache_dir)
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


def read_recordings(config: SpSwHarConfig) -> list[Recording]:
    """Every selected execution file as one Recording (user "sXX", device by file suffix)."""
    data = locate_root(config.root) / "DATA"
    subjects = config.subjects or tuple(sorted(p.name for p in data.glob("s[0-9]*") if p.is_dir()))
    recordings = []
    for subject in subjects:
        if not (data / subject).is_dir():
            raise ValueError(
                f"unknown sp-sw-har subject {subject!r}; folders in {data} are s01..s23"
            )
        for code in DEVICE_CHOICES[config.devices]:
            for path in sorted((data / subject).glob(f"{subject}_*_{code}.csv")):
                time_s, signals, labels = read_execution(path)
                recordings.append(Recording(subject, DEVICES[code], time_s, signals, labels))
    return recordings


def load_sp_sw_har(config: SpSwHarConfig) -> WindowDataset:
    """Windows of sp-sw-har at `config.rate_hz`, cached by config under the cache folder."""
    root = locate_root(config.root, config.download, config.cache_dir)
    resolved = replace(config, root=str(root.resolve()), download=False)

    def build() -> WindowDataset:
        return window_recordings(
            read_recordings(resolved),
            resolved.window_length,
            resolved.stride,
            SP_SW_HAR_CLASSES,
            resolved.rate_hz,
            drop_mixed=resolved.drop_mixed,
        )

    return cached_windows(resolved, build)
