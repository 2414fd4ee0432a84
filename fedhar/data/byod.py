"""Bring your own data: a folder of per-recording CSVs and/or per-user .npz files.

CSV (one recording per file; several users or devices in one file are split apart), header:

    user,device,timestamp_s,acc_x,acc_y,acc_z,gyro_x,gyro_y,gyro_z,label

acc in g (gravity included), gyro in rad/s, timestamp in seconds, label a string.
Recordings whose accelerometer does not look like that (median magnitude outside 0.5-2 g:
gravity removed, or m/s^2) and recordings resampled by more than 2x are read with a warning
that names the file and the numbers.

NPZ (one recording per file): `time_s` (T,), `signals` (T, 6) in the column order above,
`labels` (T,) strings; optional scalar strings `user` (default: the file stem) and `device`
(default "device"). Both are resampled to `rate_hz` and windowed like the other loaders.
"""

from __future__ import annotations

import csv
import logging
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from fedhar.data.cache import cached_windows, files_fingerprint
from fedhar.data.dataset import ACC_GYRO_CHANNELS, Recording, WindowDataset
from fedhar.data.windows import window_recordings

BYOD_COLUMNS = ("user", "device", "timestamp_s", *ACC_GYRO_CHANNELS, "label")

RawRecording = tuple[str, str, np.ndarray, np.ndarray, np.ndarray]  # user, device, t, x, labels
GRAVITY_RANGE_G = (0.5, 2.0)  # median |acc| of a recording with gravity, in g
MAX_RESAMPLING = 2.0  # larger rate changes than this, either way, are warned about
log = logging.getLogger("fedhar")


@dataclass(frozen=True)
class ByodConfig:
    """Options of the bring-your-own-data loader."""

    root: str | None = None  # folder searched (recursively) for *.csv and *.npz; required
    class_names: tuple[str, ...] | None = None  # label order; None: sorted labels found
    rate_hz: float = 50.0
    window_length: int = 128
    stride: int = 64
    drop_mixed: bool = False
    cache: bool = True
    cache_dir: str | None = None

    def __post_init__(self) -> None:
        if self.class_names is not None:
            object.__setattr__(self, "class_names", tuple(self.class_names))


def read_csv_recordings(path: Path) -> list[RawRecording]:
    """Rows of one CSV grouped by (user, device); errors name the file and line."""
    groups: dict[tuple[str, str], tuple[list[list[float]], list[str]]] = {}
    with path.open(newline="") as fh:
        reader = csv.reader(fh)
        header = tuple(next(reader, ()))
        if header != BYOD_COLUMNS:
            raise ValueError(
                f"{path}, line 1: expected header {','.join(BYOD_COLUMNS)}, got {header}"
            )
        for row in reader:
            if len(row) != len(BYOD_COLUMNS):
                raise ValueError(
                    f"{path}, line {reader.line_num}: expected {len(BYOD_COLUMNS)} fields, "
                    f"got {len(row)}"
                )
            try:
                values = [float(v) for v in row[2:9]]
            except ValueError as err:
                raise ValueError(f"{path}, line {reader.line_num}: {err}") from None
            rows, labels = groups.setdefault((row[0], row[1]), ([], []))
            rows.append(values)
            labels.append(row[9])
    out = []
    for (user, device), (rows, labels) in groups.items():
        table = np.asarray(rows, dtype=np.float64)  # (T, 7): time, then the six channels
        out.append((user, device, table[:, 0], table[:, 1:], np.asarray(labels)))
    return out


def read_npz_recording(path: Path) -> RawRecording:
    """One recording from an .npz file with time_s, signals, labels (and user, device)."""
    with np.load(path, allow_pickle=False) as z:
        missing = sorted({"time_s", "signals", "labels"} - set(z.files))
        if missing:
            raise ValueError(f"{path}: missing arrays {missing}; expected time_s, signals, labels")
        signals = np.asarray(z["signals"], dtype=np.float64)
        if signals.ndim != 2 or signals.shape[1] != len(ACC_GYRO_CHANNELS):
            raise ValueError(
                f"{path}: signals must be (T, 6) {ACC_GYRO_CHANNELS}, got {signals.shape}"
            )
        user = str(z["user"]) if "user" in z.files else path.stem
        device = str(z["device"]) if "device" in z.files else "device"
        return user, device, np.asarray(z["time_s"], float), signals, z["labels"].astype(str)


def data_files(root: str | None) -> list[Path]:
    """The .csv and .npz files under `root`, sorted; raises when there are none."""
    if root is None:
        raise ValueError("the byod dataset needs root=<folder holding your .csv/.npz files>")
    if not Path(root).is_dir():
        raise FileNotFoundError(f"BYOD folder {root} does not exist; set root to your data folder")
    files = sorted(p for p in Path(root).rglob("*") if p.suffix in (".csv", ".npz") and p.is_file())
    if not files:
        raise FileNotFoundError(
            f"no .csv or .npz files under {root}; see fedhar.data.byod for the format"
        )
    return files


def recording_warnings(path: Path, recording: RawRecording, rate_hz: float) -> list[str]:
    """What looks wrong in one recording: no gravity (or not in g), a large rate change."""
    user, device, t, x, _ = recording
    where = f"{path} (user {user}, device {device})"
    found = []
    magnitude = float(np.median(np.linalg.norm(x[:, :3], axis=1))) if len(x) else 1.0
    low, high = GRAVITY_RANGE_G
    if not low <= magnitude <= high:
        found.append(
            f"{where}: median accelerometer magnitude {magnitude:.2f} g, expected about 1 g "
            "with gravity included; give acceleration in g (m/s^2 / 9.81) without removing "
            "gravity"
        )
    steps = np.diff(np.sort(t))
    steps = steps[steps > 0]
    if len(steps):
        native = 1.0 / float(np.median(steps))
        ratio = rate_hz / native
        if max(ratio, 1 / ratio) > MAX_RESAMPLING * 1.01:  # 1%: timestamps are rounded
            found.append(
                f"{where}: recorded at {native:.1f} Hz, resampled to {rate_hz:g} Hz "
                f"({ratio:.1f}x); set dataset.options.rate_hz nearer the recording's rate"
            )
    return found


def read_byod(config: ByodConfig) -> WindowDataset:
    """Read, label-index, resample and window every recording under `config.root`."""
    raw: list[RawRecording] = []
    for path in data_files(config.root):
        read = read_csv_recordings(path) if path.suffix == ".csv" else [read_npz_recording(path)]
        for recording in read:
            for warning in recording_warnings(path, recording, config.rate_hz):
                log.warning("%s", warning)
        raw.extend(read)
    found = sorted({str(label) for *_, labels in raw for label in np.unique(labels)})
    class_names = config.class_names or tuple(found)
    unknown = sorted(set(found) - set(class_names))
    if unknown:
        raise ValueError(f"labels {unknown} are not in class_names {class_names}")
    index = {name: i for i, name in enumerate(class_names)}
    recordings = [
        Recording(user, device, t, x.astype(np.float32), np.array([index[v] for v in labels]))
        for user, device, t, x, labels in raw
    ]
    return window_recordings(
        recordings,
        config.window_length,
        config.stride,
        class_names,
        config.rate_hz,
        config.drop_mixed,
    )


def load_byod(config: ByodConfig) -> WindowDataset:
    """BYOD windows, cached by config and by the files' names, sizes and modification times."""
    stamp = files_fingerprint(data_files(config.root))
    resolved = replace(config, root=str(Path(str(config.root)).resolve()))
    return cached_windows(resolved, lambda: read_byod(resolved), fingerprint=stamp)
