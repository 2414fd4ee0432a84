"""sp-sw-har loader on the real data, plus its error messages on broken input."""

from __future__ import annotations

import os
import re

import numpy as np
import pytest

from fedhar.data.sp_sw_har import SP_SW_HAR_CLASSES, SpSwHarConfig, load_sp_sw_har
from fedhar.data.splits import split_chronological
from tests.fedhar.data.conftest import write_sp_sw_har


@pytest.mark.data
def test_few_subjects_both_devices(sp_sw_har_dir, tmp_path):
    config = SpSwHarConfig(
        root=str(sp_sw_har_dir), subjects=("s01", "s02"), cache_dir=str(tmp_path)
    )
    ds = load_sp_sw_har(config)
    assert ds.users == ["s01", "s02"]
    assert set(ds.device.tolist()) == {"smartphone", "smartwatch"}
    assert ds.x.shape[1:] == (6, 100) and ds.sampling_rate_hz == 50.0
    assert ds.class_names == SP_SW_HAR_CLASSES
    assert set(np.unique(ds.y)) == set(range(5))
    # accelerometer in g: the mean over a window has norm near 1 g
    norms = np.linalg.norm(ds.x[:, :3].mean(-1), axis=1)
    assert 0.9 < np.median(norms) < 1.1
    assert np.abs(ds.x[:, 3:]).max() < 20  # rad/s
    # second call is served from the cache with identical arrays
    again = load_sp_sw_har(config)
    np.testing.assert_array_equal(again.x, ds.x)
    assert len(list((tmp_path / "windows").glob("*.npz"))) == 1
    watch = load_sp_sw_har(
        SpSwHarConfig(root=str(sp_sw_har_dir), subjects=("s01",), devices="sw", cache=False)
    )
    assert set(watch.device.tolist()) == {"smartwatch"}
    train, test = split_chronological(ds, test_fraction=0.2)
    for user in ds.users:
        assert (
            train.for_user(user).start_time_s.max() + 2.0 <= test.for_user(user).start_time_s.min()
        )


@pytest.mark.data
def test_all_subjects_counts(sp_sw_har_dir):
    ds = load_sp_sw_har(SpSwHarConfig(root=str(sp_sw_har_dir), cache=False))
    assert len(ds.users) == 23
    phone, watch = ds.device == "smartphone", ds.device == "smartwatch"
    # 223 executions per device, ~19 windows each (2 s windows, 0.5 s stride)
    assert 4000 < phone.sum() < 4600 and 4000 < watch.sum() < 4600
    assert phone.sum() + watch.sum() == len(ds)
    assert np.bincount(ds.y, minlength=5).argmax() == SP_SW_HAR_CLASSES.index("walking")


def test_malformed_row_names_file_and_line(tmp_path):
    good = "0,0,9.80665,0,0,0,{t},SEATED\n"
    path = write_sp_sw_har(
        tmp_path, [good.format(t=1000), good.format(t=1010), "0,0,oops,0,0,0,1020,SEATED\n"]
    )
    with pytest.raises(ValueError, match=re.escape(f"{path}, line 4: ") + ".*oops"):
        load_sp_sw_har(SpSwHarConfig(root=str(tmp_path), cache=False))
    path.write_text(path.read_text().replace("oops", "9.8").replace("1020,SEATED", "1020,JUMPING"))
    with pytest.raises(ValueError, match="line 4: unknown label 'JUMPING'"):
        load_sp_sw_har(SpSwHarConfig(root=str(tmp_path), cache=False))


def irregular_rows(n=300, seed=0):
    """~100 Hz rows as the real files have them: +-3 ms jitter and every 7th timestamp repeated.

    x_acc = 0.2 g/s * (t - 1 s) and x_gyro = 0.3 rad/s^2 * (t - 1 s), linear so that the
    resampled values are known exactly; a repeated timestamp holds two rows whose mean is on
    the line. z_acc is 1 g, z_gyro 0.5 rad/s. The first sample is at 1.000 s, the last at 3.990 s.
    """
    jitter = np.random.default_rng(seed).integers(-3, 4, size=n)
    jitter[[0, -1]] = 0
    rows = []
    for i, ms in enumerate(1000 + 10 * np.arange(n) + jitter):
        t = ms / 1000 - 1.0
        offsets = (-0.05, 0.05) if i % 7 == 3 else (0.0,)
        for d in offsets:
            rows.append(f"{9.80665 * (0.2 * t + d)},0,9.80665,{0.3 * t - d},0,0.5,{ms},WALKING\n")
    return rows


def test_tiny_file_with_jittered_and_repeated_timestamps(tmp_path):
    rows = irregular_rows()
    assert len(rows) > 300  # the repeats are there
    write_sp_sw_har(tmp_path, rows)
    ds = load_sp_sw_har(SpSwHarConfig(root=str(tmp_path / "DATA"), devices="sp", cache=False))
    # 1.000 .. 3.990 s at 50 Hz -> 150 samples on the grid 1 s + k / 50 -> 3 windows
    assert len(ds) == (150 - 100) // 25 + 1
    np.testing.assert_allclose(ds.start_time_s, [1.0, 1.5, 2.0])
    grid = ds.start_time_s[:, None] + np.arange(100) / 50.0 - 1.0  # (W, L), seconds from t0
    np.testing.assert_allclose(ds.x[:, 0], 0.2 * grid, atol=1e-5)  # m/s^2 -> g, on the line
    np.testing.assert_allclose(ds.x[:, 3], 0.3 * grid, atol=1e-5)  # rad/s unchanged
    np.testing.assert_allclose(ds.x[:, 2], 1.0, atol=1e-6)
    np.testing.assert_allclose(ds.x[:, 5], 0.5, atol=1e-6)
    assert (ds.y == SP_SW_HAR_CLASSES.index("walking")).all()


def test_cache_follows_raw_file_edits(tmp_path):
    path = write_sp_sw_har(tmp_path, irregular_rows())
    config = SpSwHarConfig(root=str(tmp_path), cache_dir=str(tmp_path / "cache"))
    np.testing.assert_allclose(load_sp_sw_har(config).x[:, 5], 0.5, atol=1e-6)
    path.write_text(path.read_text().replace(",0.5,", ",0.25,"))  # a different size
    np.testing.assert_allclose(load_sp_sw_har(config).x[:, 5], 0.25, atol=1e-6)
    path.write_text(path.read_text().replace(",0.25,", ",0.75,"))  # same size: mtime tells
    stat = path.stat()
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))
    np.testing.assert_allclose(load_sp_sw_har(config).x[:, 5], 0.75, atol=1e-6)
    assert len(list((tmp_path / "cache" / "windows").glob("*.npz"))) == 3
    np.testing.assert_allclose(load_sp_sw_har(config).x[:, 5], 0.75, atol=1e-6)  # a hit
    assert len(list((tmp_path / "cache" / "windows").glob("*.npz"))) == 3


def test_missing_folder_says_how_to_get_data(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"nowhere.*zenodo\.8398688.*FEDHAR_DATA_DIR"):
        load_sp_sw_har(SpSwHarConfig(root=str(tmp_path / "nowhere")))


def test_bad_options_are_named(tmp_path):
    with pytest.raises(ValueError, match="devices must be one of"):
        SpSwHarConfig(devices="phone")
    write_sp_sw_har(tmp_path, ["0,0,9.8,0,0,0,1000,SEATED\n", "0,0,9.8,0,0,0,1100,SEATED\n"])
    with pytest.raises(ValueError, match="unknown sp-sw-har subject 's99'"):
        load_sp_sw_har(SpSwHarConfig(root=str(tmp_path), subjects=("s99",), cache=False))


def test_data_dir_from_environment(tmp_path, monkeypatch):
    rows = [f"0,9.80665,0,0,0,0,{1000 + 10 * i},TURNING\n" for i in range(250)]
    write_sp_sw_har(tmp_path / "sp-sw-har", rows)
    monkeypatch.setenv("FEDHAR_DATA_DIR", str(tmp_path))
    ds = load_sp_sw_har(SpSwHarConfig(cache=False))
    assert ds.users == ["s01"] and (ds.y == SP_SW_HAR_CLASSES.index("turning")).all()
