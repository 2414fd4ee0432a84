"""sp-sw-har loader on the real data, plus its error messages on broken input."""

from __future__ import annotations

import re

import numpy as np
import pytest

from fedhar.data.sp_sw_har import SP_SW_HAR_CLASSES, SpSwHarConfig, load_sp_sw_har
from fedhar.data.splits import split_chronological


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


def write_subject(root, rows):
    folder = root / "DATA" / "s01"
    folder.mkdir(parents=True)
    header = "x_acc,y_acc,z_acc,x_gyro,y_gyro,z_gyro,timestamp,label\n"
    (folder / "s01_01_sp.csv").write_text(header + "".join(rows))
    return folder / "s01_01_sp.csv"


def test_malformed_row_names_file_and_line(tmp_path):
    good = "0,0,9.80665,0,0,0,{t},SEATED\n"
    path = write_subject(
        tmp_path, [good.format(t=1000), good.format(t=1010), "0,0,oops,0,0,0,1020,SEATED\n"]
    )
    with pytest.raises(ValueError, match=re.escape(f"{path}, line 4: ") + ".*oops"):
        load_sp_sw_har(SpSwHarConfig(root=str(tmp_path), cache=False))
    path.write_text(path.read_text().replace("oops", "9.8").replace("1020,SEATED", "1020,JUMPING"))
    with pytest.raises(ValueError, match="line 4: unknown label 'JUMPING'"):
        load_sp_sw_har(SpSwHarConfig(root=str(tmp_path), cache=False))


def test_tiny_file_units(tmp_path):
    rows = [f"0,0,9.80665,0,0,0.5,{1000 + 10 * i},WALKING\n" for i in range(300)]
    write_subject(tmp_path, rows)
    ds = load_sp_sw_har(SpSwHarConfig(root=str(tmp_path / "DATA"), devices="sp", cache=False))
    np.testing.assert_allclose(ds.x[:, 2], 1.0, atol=1e-6)  # m/s^2 -> g
    np.testing.assert_allclose(ds.x[:, 5], 0.5, atol=1e-6)  # rad/s unchanged
    assert (ds.y == SP_SW_HAR_CLASSES.index("walking")).all()
    assert len(ds) == (150 - 100) // 25 + 1


def test_missing_folder_says_how_to_get_data(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"nowhere.*zenodo\.8398688.*FEDHAR_DATA_DIR"):
        load_sp_sw_har(SpSwHarConfig(root=str(tmp_path / "nowhere")))


def test_bad_options_are_named(tmp_path):
    with pytest.raises(ValueError, match="devices must be one of"):
        SpSwHarConfig(devices="phone")
    write_subject(tmp_path, ["0,0,9.8,0,0,0,1000,SEATED\n", "0,0,9.8,0,0,0,1100,SEATED\n"])
    with pytest.raises(ValueError, match="unknown sp-sw-har subject 's99'"):
        load_sp_sw_har(SpSwHarConfig(root=str(tmp_path), subjects=("s99",), cache=False))


def test_data_dir_from_environment(tmp_path, monkeypatch):
    rows = [f"0,9.80665,0,0,0,0,{1000 + 10 * i},TURNING\n" for i in range(250)]
    write_subject(tmp_path / "sp-sw-har", rows)
    monkeypatch.setenv("FEDHAR_DATA_DIR", str(tmp_path))
    ds = load_sp_sw_har(SpSwHarConfig(cache=False))
    assert ds.users == ["s01"] and (ds.y == SP_SW_HAR_CLASSES.index("turning")).all()
