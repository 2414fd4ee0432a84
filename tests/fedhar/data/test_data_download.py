"""Downloads against a local HTTP server: checksum, atomic write, extraction, errors."""

from __future__ import annotations

import hashlib
import io
import logging
import re
import socket
import tarfile
import zipfile
from pathlib import Path

import numpy as np
import pytest
from omegaconf import OmegaConf

from fedhar.data import dataset_config, load_dataset
from fedhar.data.download import (
    SOURCES,
    ChecksumError,
    DownloadError,
    extract,
    fetch,
    prepare_dataset,
)
from tests.fedhar.data.conftest import write_sp_sw_har, write_uci, zip_as_uci_archive

CONFIGS = Path(__file__).resolve().parents[3] / "configs" / "dataset"


def make_uci_zip(tmp_path, archive):
    """The tiny UCI fixture zipped as UCI publishes it; returns (expected windows, sha256)."""
    expected = write_uci(tmp_path / "uci-src", np.random.default_rng(0))
    return expected, zip_as_uci_archive(tmp_path / "uci-src", archive)


def test_fetch_verifies_and_extracts(served, tmp_path):
    folder, base = served
    _, digest = make_uci_zip(tmp_path, folder / "uci.zip")
    cache = tmp_path / "cache"
    root = prepare_dataset("uci_har", cache_dir=cache, url=f"{base}/uci.zip", sha256=digest)
    assert (root / "activity_labels.txt").read_text().startswith("1 WALKING\n")
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
    _, digest = make_uci_zip(tmp_path, folder / "uci.zip")
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


@pytest.fixture()
def no_data_dir(monkeypatch, tmp_path):
    """No FEDHAR_DATA_DIR, and a cache folder of this test: only a download can find data."""
    monkeypatch.delenv("FEDHAR_DATA_DIR", raising=False)
    monkeypatch.setenv("FEDHAR_CACHE_DIR", str(tmp_path / "cache"))
    return tmp_path / "cache"


def test_load_dataset_downloads_verifies_and_caches_uci_har(served, tmp_path, no_data_dir):
    folder, base = served
    expected, digest = make_uci_zip(tmp_path, folder / "uci.zip")
    options = {"download": True, "url": f"{base}/uci.zip", "sha256": digest.upper()}
    ds = load_dataset("uci_har", **options)
    np.testing.assert_allclose(ds.x[:5], expected["train"], rtol=1e-6)
    np.testing.assert_allclose(ds.x[5:], expected["test"], rtol=1e-6)
    assert ds.users == ["s01", "s02", "s03"] and ds.class_names[5] == "laying"
    assert (no_data_dir / "downloads" / SOURCES["uci_har"].archive_name).is_file()
    assert (no_data_dir / "uci-har" / "UCI HAR Dataset" / "activity_labels.txt").is_file()
    assert len(list((no_data_dir / "windows").glob("uci*.npz"))) == 1
    # later loads need neither the server nor the flag, and reuse the cached windows
    (folder / "uci.zip").unlink()
    for again in (load_dataset("uci_har", **options), load_dataset("uci_har")):
        np.testing.assert_array_equal(again.x, ds.x)
    assert len(list((no_data_dir / "windows").glob("uci*.npz"))) == 1


def test_load_dataset_wrong_sha256_is_a_clear_error(served, tmp_path, no_data_dir):
    folder, base = served
    _, digest = make_uci_zip(tmp_path, folder / "uci.zip")
    url, wrong = f"{base}/uci.zip", "ab" * 32
    with pytest.raises(ChecksumError) as err:
        load_dataset("uci_har", download=True, url=url, sha256=wrong, cache_dir=str(tmp_path / "c"))
    message = str(err.value)
    assert url in message and wrong in message and digest in message
    assert "offline_path" in message and "sha256=" in message
    assert not (tmp_path / "c" / "uci-har").exists()
    assert not list((tmp_path / "c" / "downloads").iterdir())  # nothing partial kept
    with pytest.raises(ValueError, match=r"sha256 must be 64 hex digits, got 'abc'.*sha256sum"):
        load_dataset("uci_har", download=True, url=url, sha256="abc")


def test_load_dataset_from_offline_archive_or_folder(tmp_path, no_data_dir):
    archive = tmp_path / "uci.zip"
    expected, digest = make_uci_zip(tmp_path, archive)
    # the registry pins the real UCI zip's checksum, so a different local copy is refused
    with pytest.raises(ChecksumError, match=f"expected sha256 {SOURCES['uci_har'].sha256}"):
        load_dataset("uci_har", offline_path=str(archive))
    ds = load_dataset("uci_har", offline_path=str(archive), sha256=digest)
    np.testing.assert_allclose(ds.x[:5], expected["train"], rtol=1e-6)
    assert (no_data_dir / "uci-har" / "UCI HAR Dataset" / "activity_labels.txt").is_file()
    folder = load_dataset("uci_har", offline_path=str(tmp_path / "uci-src"), cache=False)
    np.testing.assert_array_equal(folder.x, ds.x)
    with pytest.raises(FileNotFoundError, match=r"offline_path .*absent\.zip does not exist"):
        load_dataset("sp_sw_har", offline_path=str(tmp_path / "absent.zip"))


def test_unverified_download_warns_with_the_hash_to_pin(served, tmp_path, no_data_dir, caplog):
    folder, base = served
    rows = [f"0,0,9.80665,0,0,0,{1000 + 10 * i},SEATED\n" for i in range(300)]
    source = tmp_path / "sp-src" / "sp-sw-har-dataset-main"
    write_sp_sw_har(source, rows)
    (source / "DATA" / "executions_info.csv").write_text("execution_id\n")  # the archive marker
    archive = folder / "sp.tar.gz"
    with tarfile.open(archive, "w:gz") as tf:
        tf.add(source, "sp-sw-har-dataset-main")
    digest = hashlib.sha256(archive.read_bytes()).hexdigest()
    with caplog.at_level(logging.WARNING, logger="fedhar.data.download"):
        ds = load_dataset("sp_sw_har", download=True, url=f"{base}/sp.tar.gz")
    assert ds.users == ["s01"] and len(ds) == 3
    [record] = [r for r in caplog.records if r.name == "fedhar.data.download"]
    message = record.getMessage()
    assert "UNVERIFIED" in message and f"{base}/sp.tar.gz" in message
    assert f"dataset.options.sha256={digest}" in message
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="fedhar.data.download"):
        load_dataset("sp_sw_har", download=True)  # already extracted: nothing new is taken
    assert not caplog.records


@pytest.mark.parametrize("name", ["uci_har", "sp_sw_har"])
def test_dataset_configs_expose_the_download_options(name):
    options = OmegaConf.to_container(OmegaConf.load(CONFIGS / f"{name}.yaml").options)
    assert {"download", "url", "sha256", "offline_path"} <= set(options)
    pinned = "0123456789abcdef" * 4
    config = dataset_config(name, **{**options, "sha256": pinned, "offline_path": "/x.zip"})
    assert config.sha256 == pinned and config.offline_path == "/x.zip"
