"""UCI-HAR and bring-your-own-data loaders, and the `load_dataset` registry."""

from __future__ import annotations

import logging

import numpy as np
import pytest

from fedhar.data import DATASET_NAMES, load_dataset
from fedhar.data.byod import BYOD_COLUMNS
from fedhar.federation import FederationSpec, load_client
from tests.fedhar.data.conftest import write_uci


def test_uci_har_reads_published_layout(tmp_path):
    expected = write_uci(tmp_path / "data", np.random.default_rng(0))
    ds = load_dataset("uci_har", root=str(tmp_path / "data"), cache_dir=str(tmp_path / "cache"))
    assert ds.x.shape == (8, 6, 128) and ds.sampling_rate_hz == 50.0
    np.testing.assert_allclose(ds.x[:5], expected["train"], rtol=1e-6)
    np.testing.assert_allclose(ds.x[5:], expected["test"], rtol=1e-6)
    assert ds.class_names[0] == "walking" and ds.class_names[5] == "laying"
    np.testing.assert_array_equal(ds.y, [0, 1, 5, 5, 3, 4, 4, 2])
    assert ds.users == ["s01", "s02", "s03"]
    np.testing.assert_allclose(ds.for_user("s03").start_time_s, [0, 1.28, 2.56])
    test_only = load_dataset("uci_har", root=str(tmp_path / "data"), splits=["test"], cache=False)
    assert test_only.users == ["s02"]


def test_uci_har_names_broken_file(tmp_path):
    write_uci(tmp_path, np.random.default_rng(0))
    broken = tmp_path / "UCI HAR Dataset" / "test" / "y_test.txt"
    broken.write_text("5\nfive\n3\n")
    with pytest.raises(ValueError, match=r"y_test\.txt"):
        load_dataset("uci_har", root=str(tmp_path), cache=False)
    with pytest.raises(FileNotFoundError, match=r"archive\.ics\.uci\.edu"):
        load_dataset("uci_har", root=str(tmp_path / "empty"), cache=False)


def byod_rows(user, device, seconds, label_of, rate=100.0):
    """Rows at `rate` Hz with a repeated timestamp, acc (0, 0, 1) g and a gyro ramp."""
    t = np.arange(int(seconds * rate)) / rate
    t[5] = t[4]  # a duplicate, as real phones produce
    return [f"{user},{device},{ti:.4f},0,0,1,{ti:.4f},0,0,{label_of(ti)}\n" for ti in t]


def test_byod_csv_and_npz(tmp_path):
    root = tmp_path / "mine"
    root.mkdir()
    header = ",".join(BYOD_COLUMNS) + "\n"
    rows = byod_rows("alice", "watch", 10, lambda t: "walk" if t < 5 else "sit")
    (root / "alice_1.csv").write_text(header + "".join(rows))
    t = np.arange(0, 8, 0.02)
    np.savez(
        root / "bob.npz",
        time_s=t,
        signals=np.tile([0.0, 1.0, 0.0, 0.1, 0.0, 0.0], (len(t), 1)),
        labels=np.where(t < 4, "sit", "walk"),
        device="phone",
    )
    ds = load_dataset("byod", root=str(root), window_length=100, stride=50, cache=False)
    assert ds.class_names == ("sit", "walk") and ds.sampling_rate_hz == 50.0
    assert ds.users == ["alice", "bob"]
    alice, bob = ds.for_user("alice"), ds.for_user("bob")
    assert set(alice.device.tolist()) == {"watch"} and set(bob.device.tolist()) == {"phone"}
    assert len(alice) == (500 - 100) // 50 + 1  # 0..9.99 s at 100 Hz -> 500 samples at 50 Hz
    np.testing.assert_allclose(alice.x[:, 2], 1.0)
    np.testing.assert_array_equal(alice.y[:3], [1, 1, 1])
    np.testing.assert_allclose(bob.x[:, 1], 1.0)
    ordered = load_dataset("byod", root=str(root), class_names=("walk", "sit"), cache=False)
    assert ordered.class_names == ("walk", "sit")
    with pytest.raises(ValueError, match=r"labels \['walk'\] are not in class_names"):
        load_dataset("byod", root=str(root), class_names=("sit",), cache=False)


def test_byod_cache_follows_file_changes(tmp_path):
    root = tmp_path / "mine"
    root.mkdir()
    header = ",".join(BYOD_COLUMNS) + "\n"
    path = root / "a.csv"
    path.write_text(header + "".join(byod_rows("a", "p", 6, lambda t: "x")))
    options = {"root": str(root), "cache_dir": str(tmp_path / "cache")}
    assert load_dataset("byod", **options).class_names == ("x",)
    path.write_text(header + "".join(byod_rows("a", "p", 6, lambda t: "y")))
    assert load_dataset("byod", **options).class_names == ("y",)


def test_byod_errors_name_file_and_line(tmp_path):
    header = ",".join(BYOD_COLUMNS) + "\n"
    (tmp_path / "bad.csv").write_text(header + "a,p,0.0,0,0,1,0,0,0,sit\na,p,0.02,0,0,1,0,0\n")
    with pytest.raises(ValueError, match=r"bad.csv, line 3: expected 10 fields"):
        load_dataset("byod", root=str(tmp_path), cache=False)
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_dataset("byod", root=str(tmp_path / "nope"), cache=False)
    with pytest.raises(ValueError, match="needs root="):
        load_dataset("byod")


def test_registry_names_and_errors():
    assert DATASET_NAMES == ("synthetic", "sp_sw_har", "uci_har", "byod")
    ds = load_dataset("synthetic", num_users=2, seconds_per_user=30)
    assert ds.users == ["u00", "u01"]
    with pytest.raises(
        ValueError, match="unknown dataset 'mnist'; valid names: synthetic, sp_sw_har"
    ):
        load_dataset("mnist")
    with pytest.raises(ValueError, match=r"unknown option\(s\) \['users'\].*num_users"):
        load_dataset("synthetic", users=3)


def _byod_csv(root, rows):
    root.mkdir(exist_ok=True)
    (root / "rec.csv").write_text(",".join(BYOD_COLUMNS) + "\n" + "".join(rows))


@pytest.mark.parametrize(
    ("acc", "rate", "expected"),
    [
        ("0,0,0.05", 50.0, "median accelerometer magnitude 0.05 g"),  # gravity removed
        ("0,0,9.81", 50.0, "median accelerometer magnitude 9.81 g"),  # m/s^2, not g
        ("0,0,1", 10.0, "recorded at 10.0 Hz, resampled to 50 Hz (5.0x)"),
    ],
)
def test_byod_warns_of_data_that_does_not_look_as_expected(
    tmp_path, caplog, acc: str, rate: float, expected: str
) -> None:
    t = np.arange(int(20 * rate)) / rate
    _byod_csv(tmp_path / "d", [f"u,watch,{ti:.4f},{acc},0,0,0,walk\n" for ti in t])
    with caplog.at_level(logging.WARNING, logger="fedhar"):
        load_dataset("byod", root=str(tmp_path / "d"), cache=False)
    assert expected in caplog.text and "rec.csv (user u, device watch)" in caplog.text


def test_byod_in_g_with_gravity_at_a_near_rate_reads_without_warnings(tmp_path, caplog) -> None:
    _byod_csv(tmp_path / "d", byod_rows("u", "watch", 10, lambda t: "walk"))  # 100 Hz -> 50 Hz
    with caplog.at_level(logging.WARNING, logger="fedhar"):
        load_dataset("byod", root=str(tmp_path / "d"), cache=False)
    assert caplog.text == ""


def test_a_client_without_test_windows_fails_with_the_numbers(tmp_path) -> None:
    rows = [*byod_rows("a", "p", 1.5, lambda t: "x"), *byod_rows("b", "p", 10, lambda t: "x")]
    _byod_csv(tmp_path / "d", rows)
    options = {"root": str(tmp_path / "d"), "window_length": 64, "stride": 64, "cache": False}
    spec = FederationSpec("byod", FederationSpec.options_from(options), holdout_fraction=0.0)
    with pytest.raises(ValueError, match=r"user a has 1 training and 0 test windows \(of 1\)"):
        load_client(spec, 0)
    assert len(load_client(spec, 1).test) > 0
