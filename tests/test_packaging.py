"""Packaging: what `flwr run` installs. Flower's runtime runs `uv sync` on the project, and
`[tool.uv]` in `pyproject.toml` must send torch to PyTorch's CPU index, not to PyPI's
default build with its CUDA libraries.

The index is played by a server on 127.0.0.1 that serves a stand-in CPU wheel of torch; the
default index is an empty one, so uv could only find torch where the project sends it.
"""

from __future__ import annotations

import hashlib
import http.server
import os
import subprocess
import sys
import threading
import tomllib
import zipfile
from collections.abc import Iterator
from pathlib import Path

import pytest
import tomli_w

ROOT = Path(__file__).resolve().parents[1]
TORCH = "torch-2.13.0+cpu-py3-none-any.whl"


def _stand_in_wheel(path: Path) -> None:
    """A wheel named and described like PyTorch's CPU build, with no dependencies."""
    info = "torch-2.13.0+cpu.dist-info"
    with zipfile.ZipFile(path, "w") as wheel:
        wheel.writestr("torch/__init__.py", "")
        wheel.writestr(
            f"{info}/METADATA", "Metadata-Version: 2.1\nName: torch\nVersion: 2.13.0+cpu\n"
        )
        wheel.writestr(
            f"{info}/WHEEL", "Wheel-Version: 1.0\nRoot-Is-Purelib: true\nTag: py3-none-any\n"
        )
        wheel.writestr(f"{info}/RECORD", "")


@pytest.fixture
def indexes(tmp_path: Path) -> Iterator[str]:
    """``http://127.0.0.1:<port>``: ``/cpu/`` holds the stand-in torch, ``/pypi/`` nothing."""
    root = tmp_path / "www"
    (root / "cpu" / "torch").mkdir(parents=True)
    (root / "pypi").mkdir()
    wheel = root / "cpu" / "torch" / TORCH
    _stand_in_wheel(wheel)
    digest = hashlib.sha256(wheel.read_bytes()).hexdigest()
    (root / "cpu" / "torch" / "index.html").write_text(
        f'<html><body><a href="{TORCH}#sha256={digest}">{TORCH}</a></body></html>'
    )

    class Quiet(http.server.SimpleHTTPRequestHandler):
        def __init__(self, *args, **kwargs) -> None:  # type: ignore[no-untyped-def]
            super().__init__(*args, directory=str(root), **kwargs)

        def log_message(self, format: str, *args: object) -> None:
            """Requests are not logged."""

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Quiet)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


def test_uv_takes_torch_from_the_cpu_index_the_project_names(tmp_path: Path, indexes: str) -> None:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())
    uv = project["tool"]["uv"]
    (cpu,) = [index for index in uv["index"] if index["name"] == "pytorch-cpu"]
    assert cpu["url"] == "https://download.pytorch.org/whl/cpu" and cpu["explicit"]
    torch = [d for d in project["project"]["dependencies"] if d.startswith("torch")]
    probe = {
        "project": {"name": "probe", "version": "0", "requires-python": ">=3.11,<3.12",
                    "dependencies": torch},
        "tool": {"uv": {"sources": uv["sources"],
                        "index": [{**cpu, "url": f"{indexes}/cpu/"}]}},
    }  # fmt: skip
    (tmp_path / "pyproject.toml").write_text(tomli_w.dumps(probe))
    command = [
        sys.executable,
        "-m",
        "uv",
        "lock",
        "--python",
        sys.executable,
        "--no-config",
        "--no-cache",
        "--default-index",
        f"{indexes}/pypi/",
    ]  # as Flower calls uv
    local = {"UV_PYTHON_DOWNLOADS": "never", "NO_PROXY": "127.0.0.1", "no_proxy": "127.0.0.1"}
    result = subprocess.run(command, cwd=tmp_path, capture_output=True, text=True, timeout=120,
                            check=False, env={**os.environ, **local})  # fmt: skip
    assert result.returncode == 0, result.stderr
    locked = tomllib.loads((tmp_path / "uv.lock").read_text())
    (package,) = [p for p in locked["package"] if p["name"] == "torch"]
    assert package["version"] == "2.13.0+cpu"
    assert package["source"] == {"registry": f"{indexes}/cpu/"}
