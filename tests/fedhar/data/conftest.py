"""Fixture writers for the data tests (tiny files in each published layout) and a local server."""

from __future__ import annotations

import functools
import hashlib
import http.server
import io
import threading
import zipfile
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np
import pytest

UCI_CLASSES = ["WALKING", "WALKING_UPSTAIRS", "WALKING_DOWNSTAIRS", "SITTING", "STANDING", "LAYING"]
UCI_SIGNALS = ["total_acc", "body_gyro"]
SP_SW_HAR_HEADER = "x_acc,y_acc,z_acc,x_gyro,y_gyro,z_gyro,timestamp,label\n"


class QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args: object) -> None:
        return None


@pytest.fixture()
def served(tmp_path: Path) -> Iterator[tuple[Path, str]]:
    """A folder served on 127.0.0.1 at an ephemeral port; yields (folder, base_url)."""
    folder = tmp_path / "www"
    folder.mkdir()
    handler = functools.partial(QuietHandler, directory=str(folder))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield folder, f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()
    thread.join()


def write_uci(root: Path, rng: np.random.Generator) -> dict[str, np.ndarray]:
    """A tiny 'UCI HAR Dataset' in the published layout: 5 train and 3 test windows."""
    folder = root / "UCI HAR Dataset"
    folder.mkdir(parents=True)
    labels = "".join(f"{i + 1} {name}\n" for i, name in enumerate(UCI_CLASSES))
    (folder / "activity_labels.txt").write_text(labels)
    expected = {}
    for split, subjects, ys in (
        ("train", [1, 1, 3, 3, 3], [1, 2, 6, 6, 4]),
        ("test", [2, 2, 2], [5, 5, 3]),
    ):
        signals = folder / split / "Inertial Signals"
        signals.mkdir(parents=True)
        x = rng.normal(size=(len(ys), 6, 128))
        for c in range(6):
            name = f"{UCI_SIGNALS[c // 3]}_{'xyz'[c % 3]}_{split}.txt"
            np.savetxt(signals / name, x[:, c], fmt="%.8e")  # one window per row
        np.savetxt(folder / split / f"y_{split}.txt", ys, fmt="%d")
        np.savetxt(folder / split / f"subject_{split}.txt", subjects, fmt="%d")
        expected[split] = x
    return expected


def zip_as_uci_archive(root: Path, archive: Path) -> str:
    """Zip `root` (holding 'UCI HAR Dataset') as UCI publishes it: a zip inside a zip.

    Returns the archive's SHA-256.
    """
    inner = io.BytesIO()
    with zipfile.ZipFile(inner, "w") as zf:
        for path in sorted(root.rglob("*")):
            if path.is_file():
                zf.write(path, path.relative_to(root).as_posix())
    with zipfile.ZipFile(archive, "w") as zf:
        zf.writestr("UCI HAR Dataset.zip", inner.getvalue())
        zf.writestr("README.txt", "outer")
    return hashlib.sha256(archive.read_bytes()).hexdigest()


def write_sp_sw_har(root: Path, rows: Sequence[str], name: str = "s01_01_sp.csv") -> Path:
    """One execution CSV at `root/DATA/<subject>/<name>` in the published sp-sw-har layout."""
    folder = root / "DATA" / name.split("_")[0]
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / name
    path.write_text(SP_SW_HAR_HEADER + "".join(rows))
    return path
