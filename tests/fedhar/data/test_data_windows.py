"""Resampling, windowing, splits and the processed-data cache."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pytest

from fedhar.data.cache import cache_root, cached_windows, config_key
from fedhar.data.dataset import Recording, WindowDataset
from fedhar.data.resample import resample_uniform
from fedhar.data.splits import split_chronological, split_users
from fedhar.data.synthetic import GENERATOR_VERSION, SyntheticConfig, load_synthetic
from fedhar.data.windows import window_recordings


def make_recording(time_s, values, labels, user="a", device="phone") -> Recording:
    values = np.asarray(values, dtype=np.float32)
    signals = np.repeat(values[:, None], 6, axis=1)
    return Recording(user, device, np.asarray(time_s, float), signals, np.asarray(labels))


def test_resample_averages_duplicates_and_sorts_irregular_times():
    # out of order, a duplicate at t=0.1 (values 1 and 3 -> 2), irregular spacing
    rec = make_recording([0.0, 0.3, 0.1, 0.1, 0.45], [0, 6, 1, 3, 9], [0, 1, 0, 2, 1])
    out = resample_uniform(rec, rate_hz=10)
    np.testing.assert_allclose(out.time_s, [0.0, 0.1, 0.2, 0.3, 0.4])
    # linear: 0 -> 2 at 0.1, 2 -> 6 between 0.1 and 0.3, 6 -> 9 between 0.3 and 0.45
    np.testing.assert_allclose(out.signals[:, 0], [0, 2, 4, 6, 8], atol=1e-5)
    # previous-sample labels; the duplicate keeps its first row's label
    np.testing.assert_array_equal(out.labels, [0, 0, 0, 1, 1])
    assert out.signals.dtype == np.float32 and out.labels.dtype == np.int64


def test_resample_rejects_single_timestamp():
    rec = make_recording([1.0, 1.0], [0, 1], [0, 0])
    with pytest.raises(ValueError, match="two distinct timestamps"):
        resample_uniform(rec, 50)


def test_windows_majority_label_and_drop_mixed():
    labels = [0] * 6 + [1] * 4  # 10 samples at 1 Hz
    rec = make_recording(np.arange(10.0), np.arange(10), labels)
    ds = window_recordings([rec], window_length=4, stride=2, class_names=("a", "b"), rate_hz=1)
    assert ds.x.shape == (4, 6, 4)
    np.testing.assert_array_equal(ds.start_time_s, [0, 2, 4, 6])
    np.testing.assert_array_equal(ds.x[1, 0], [2, 3, 4, 5])
    # window at 4 holds 0,0,1,1 (tie -> lower index), at 6 holds 1,1,1,1
    np.testing.assert_array_equal(ds.y, [0, 0, 0, 1])
    pure = window_recordings([rec], 4, 2, ("a", "b"), 1, drop_mixed=True)
    np.testing.assert_array_equal(pure.start_time_s, [0, 2, 6])
    np.testing.assert_array_equal(pure.y, [0, 0, 1])


def test_windows_reject_labels_outside_class_names():
    rec = make_recording(np.arange(5.0), np.arange(5), [0, 0, 2, 0, 0])
    with pytest.raises(ValueError, match="labels outside"):
        window_recordings([rec], 2, 1, ("a", "b"), 1)


def test_windows_warn_about_a_recording_shorter_than_one_window(caplog):
    long = make_recording(np.arange(10.0), np.arange(10), [0] * 10, user="a")
    short = make_recording(np.arange(3.0), np.arange(3), [0] * 3, user="b", device="watch")
    with caplog.at_level(logging.WARNING, logger="fedhar.data.windows"):
        ds = window_recordings([long, short], 4, 2, ("a",), 1)
    assert ds.users == ["a"]
    [record] = caplog.records
    assert record.levelno == logging.WARNING
    assert "recording b/watch skipped: 3 samples" in record.getMessage()
    assert "one window of 4" in record.getMessage()


def test_chronological_split_warns_about_a_user_too_small_to_split(caplog):
    recordings = [
        make_recording(np.arange(10.0), np.arange(10), [0] * 10, user="many"),
        make_recording(np.arange(4.0), np.arange(4), [0] * 4, user="lonely"),
    ]
    ds = window_recordings(recordings, 4, 2, ("a",), 1)
    with caplog.at_level(logging.WARNING, logger="fedhar.data.splits"):
        train, test = split_chronological(ds, test_fraction=0.25)
    assert len(train.for_user("lonely")) == 1 and len(test.for_user("lonely")) == 0
    assert len(test.for_user("many")) == 1
    [record] = caplog.records
    assert "user lonely has 1 window(s), too few to split" in record.getMessage()
    assert "all kept in train" in record.getMessage()


def test_tests_never_write_the_home_cache(temporary_cache_dir):
    assert cache_root() == temporary_cache_dir
    assert Path.home() / ".cache" not in cache_root().parents
    config = SyntheticConfig(num_users=1, seconds_per_user=10, seed=7)
    load_synthetic(config)
    name = f"syntheticconfig-{config_key(config, GENERATOR_VERSION)}.npz"
    assert (temporary_cache_dir / "windows" / name).is_file()


@pytest.fixture(scope="module")
def synthetic() -> WindowDataset:
    return load_synthetic(SyntheticConfig(num_users=4, seconds_per_user=60, seed=1))


def test_chronological_split_never_overlaps(synthetic):
    for gap in (0.0, 3.0):
        train, test = split_chronological(synthetic, test_fraction=0.25, gap_s=gap)
        duration = synthetic.x.shape[-1] / synthetic.sampling_rate_hz
        for user in synthetic.users:
            tr, te = train.for_user(user), test.for_user(user)
            assert len(tr) > 0 and len(te) > 0
            assert (tr.start_time_s + duration + gap).max() <= te.start_time_s.min()
            assert abs(len(te) / len(synthetic.for_user(user)) - 0.25) < 0.05
        # consecutive windows overlap (stride < length), so some windows are dropped
        assert len(train) + len(test) < len(synthetic)


def test_user_split_is_disjoint_and_seeded(synthetic):
    train, test = split_users(synthetic, test_fraction=0.5, seed=3)
    assert not set(train.users) & set(test.users)
    assert len(train) + len(test) == len(synthetic)
    again = split_users(synthetic, test_fraction=0.5, seed=3)[1]
    assert again.users == test.users
    train, test = split_users(synthetic, test_users=["u01"])
    assert test.users == ["u01"] and "u01" not in train.users
    with pytest.raises(ValueError, match="unknown test users"):
        split_users(synthetic, test_users=["nobody"])


def test_cache_hits_on_same_config_and_misses_on_change(tmp_path, synthetic):
    calls = []

    def build():
        calls.append(1)
        return synthetic

    config = SyntheticConfig(num_users=4, seed=1)
    first = cached_windows_at(tmp_path, config, build)
    second = cached_windows_at(tmp_path, config, build)
    assert len(calls) == 1
    np.testing.assert_array_equal(first.x, second.x)
    assert second.user.tolist() == synthetic.user.tolist()
    assert second.class_names == synthetic.class_names
    cached_windows_at(tmp_path, SyntheticConfig(num_users=4, seed=2), build)
    assert len(calls) == 2
    assert config_key(config) != config_key(SyntheticConfig(num_users=4, seed=2))


def cached_windows_at(folder, config, build):
    """The cache via FEDHAR_CACHE_DIR, as a user would point it."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("FEDHAR_CACHE_DIR", str(folder))
        out = cached_windows(config, build)
    assert list((folder / "windows").glob("*.npz"))
    return out
