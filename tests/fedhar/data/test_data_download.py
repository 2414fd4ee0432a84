"""Downloads against a local HTTP server: checksum, atomic write, extraction, errors."""

from __future__ import annotations

import functools
import hashlib
import http.server
import io
import re
import socket
import tarfile
import threading
import zipfile

import pytest

from fedhar.data.download import (
    SOURCES,
    ChecksumError,
    DownloadError,
    extract,
    fetch,
    prepare_dataset,
)


@pytest.fixture()
def served(tmp_path):
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


class QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args):
        return None


def make_uci_zip(path):
    """A zip holding a nested zip with the UCI marker file, as the UCI archive does."""
    inner = io.BytesIO()
    with zipfile.ZipFile(inner, "w") as zf:
        zf.writestr("UCI HAR Dataset/activity_labels.txt", "1 WALKING\n")
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr("UCI HAR Dataset.zip", inner.getvalue())
        zf.writestr("README.txt", "outer")
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_fetch_verifies_and_extracts(served, tmp_path):
    folder, base = served
    digest = make_uci_zip(folder / "uci.zip")
    cache = tmp_path / "cache"
    root = prepare_dataset("uci_har", cache_dir=cache, url=f"{base}/uci.zip", sha256=digest)
    assert (root / "activity_labels.txt").read_text() == "1 WALKING\n"
    assert root.name == "UCI HAR Dataset"
    archive = cache / "downloads" / SOURCES["uci_har"].archive_name
    assert archive.is_file()
    assert not [p for p in archive.parent.iterdir() if p.name.endswith(".part")]
    # second call finds the extracted data without touching the network
    (folder / "uci.zip").unlink()
    again = prepare_dataset("uci_har", cache_dir=cache, url=f"{base}/uci.zip", sha256=digest)
    assert again == root


def test_checksum_mismatch_names_url_and_both_hashes(served, tmp_path):
    folder, base = served
    digest = make_uci_zip(folder / "uci.zip")
    wrong = "0" * 64
    dest = tmp_path / "dl" / "uci.zip"
    with pytest.raises(ChecksumError) as err:
        fetch(f"{base}/uci.zip", dest, sha256=wrong)
    message = str(err.value)
    assert f"{base}/uci.zip" in message and wrong in message and digest in message
    assert "offline_path" in message
    assert not dest.exists() and not list(dest.parent.iterdir())  # nothing partial left


def test_connection_refused_is_a_clear_error(tmp_path):
    with socket.socket() as sock:  # a port that was free a moment ago, now closed
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    url = f"http://127.0.0.1:{port}/data.zip"
    with pytest.raises(DownloadError, match=rf"could not download {url}.*offline_path"):
        fetch(url, tmp_path / "data.zip", timeout=5)
    assert not list(tmp_path.iterdir())


def test_missing_file_on_server(served, tmp_path):
    _, base = served
    with pytest.raises(DownloadError, match=r"could not download .*absent.zip: HTTP 404"):
        fetch(f"{base}/absent.zip", tmp_path / "absent.zip")


def test_offline_archive_and_folder(tmp_path):
    archive = tmp_path / "sp.tar.gz"
    with tarfile.open(archive, "w:gz") as tf:
        data = b"execution_id\n"
        info = tarfile.TarInfo("sp-sw-har-dataset-main/DATA/executions_info.csv")
        info.size = len(data)
        tf.addfile(info, io.BytesIO(data))
    root = prepare_dataset("sp_sw_har", cache_dir=tmp_path / "cache", offline_path=archive)
    assert (root / "DATA" / "executions_info.csv").is_file()
    assert prepare_dataset("sp_sw_har", offline_path=root.parent) == root
    with pytest.raises(ChecksumError, match=re.escape(str(archive))):
        prepare_dataset(
            "sp_sw_har", cache_dir=tmp_path / "c2", offline_path=archive, sha256="ab" * 32
        )
    with pytest.raises(ValueError, match="unknown dataset source 'mnist'; valid names"):
        prepare_dataset("mnist")


def test_extract_refuses_escaping_members(tmp_path):
    archive = tmp_path / "evil.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        zf.writestr("../outside.txt", "x")
    with pytest.raises(ValueError, match="outside"):
        extract(archive, tmp_path / "out")
    assert not (tmp_path / "outside.txt").exists()
