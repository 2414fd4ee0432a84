"""Run directories: named by a hash of the options that change the numbers, and only those."""

from __future__ import annotations

from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

from experiments.compose import CONFIG_DIR, load_config
from experiments.run_dirs import config_hash, numbers_config


def _hash(*overrides: str) -> str:
    return config_hash(load_config(list(overrides)))


def test_options_that_change_the_numbers_change_the_hash() -> None:
    base = _hash()
    assert len(base) == 8 and int(base, 16) >= 0
    for override in ("train.lr=0.01", "seed=1", "fleet=none", "faults.crash_partitions=[1]",
                     "runtime.client_resources.num_cpus=2"):  # fmt: skip
        assert _hash(override) != base, override


def test_more_rounds_tracking_and_timeouts_keep_the_directory() -> None:
    same = ("num_rounds=30", "tracking.plots=false", "runtime.round_timeout_s=30", "resume=false")
    assert {_hash(o) for o in same} == {_hash()}


def test_the_hash_is_of_the_resolved_config_without_hydra() -> None:
    cfg = load_config(["seed=4"])
    numbers = numbers_config(cfg)
    assert numbers["seed"] == 4 and numbers["dataset.options.seed"] == 4  # interpolation resolved
    assert not any(k.startswith(("hydra", "num_rounds", "tracking")) for k in numbers)


def test_the_default_run_directory_ends_in_the_hash() -> None:
    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
        cfg = compose(config_name="config", overrides=["train.lr=0.01"], return_hydra_config=True)
    run_dir = OmegaConf.select(cfg, "hydra.run.dir")
    assert run_dir == f"outputs/synthetic-microbi_convlstm-fedavg-seed0-{_hash('train.lr=0.01')}"
