"""Resuming a run directory is refused under a config that would change its numbers."""

from __future__ import annotations

from pathlib import Path

import pytest
from omegaconf import OmegaConf

from clients.state_store import STATE_DIR
from experiments.compose import ConfigError, load_config
from experiments.server import (
    RUN_STATE,
    check_resumable,
    clear_run_state,
    prepare_run,
    wait_for_fleet,
)
from fedhar.checkpoint import Checkpoint, save_checkpoint
from fedhar.transport.keys import ServerKeyPair
from fedhar.transport.keystore import KEYS_DIR
from fedhar.wire import arrays_to_numpy


def _saved(run_dir: Path, overrides: list[str]) -> None:
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "config.yaml").write_text(OmegaConf.to_yaml(load_config(overrides), resolve=True))


def test_more_rounds_or_other_tracking_may_resume_but_another_seed_may_not(tmp_path: Path) -> None:
    _saved(tmp_path, ["num_rounds=3"])
    check_resumable(load_config(["num_rounds=9", "tracking.wandb=true"]), tmp_path)  # no raise
    with pytest.raises(ConfigError, match="seed"):
        check_resumable(load_config(["num_rounds=9", "seed=1"]), tmp_path)


def test_a_changed_hyperparameter_is_refused_with_the_fix(tmp_path: Path) -> None:
    _saved(tmp_path, [])
    with pytest.raises(ConfigError, match=r"different config \(strategy\..*resume=false"):
        check_resumable(load_config(["strategy=fedprox"]), tmp_path)


def test_a_clients_cpus_change_the_numbers_so_resume_refuses_them(tmp_path: Path) -> None:
    _saved(tmp_path, [])
    check_resumable(load_config(["runtime.round_timeout_s=30", "runtime.verbose=true"]), tmp_path)
    with pytest.raises(ConfigError, match=r"runtime\.client_resources\.num_cpus"):
        check_resumable(load_config(["runtime.client_resources.num_cpus=2"]), tmp_path)


def test_starting_over_forgets_every_trace_of_the_earlier_run(tmp_path: Path) -> None:
    for name in RUN_STATE:
        (tmp_path / name).write_text("earlier run")
    (tmp_path / STATE_DIR / "3").mkdir(parents=True)
    (tmp_path / STATE_DIR / "3" / "state.bin").write_bytes(b"residuals")
    (tmp_path / KEYS_DIR).mkdir()
    (tmp_path / KEYS_DIR / "server.key").write_bytes(b"the earlier run's key")
    (tmp_path / "config.yaml").write_text("kept: the new run writes its own")
    clear_run_state(tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["config.yaml"]


def test_a_fleet_short_of_nodes_is_an_error_at_once_not_a_wait() -> None:
    class TwoNodes:
        def get_node_ids(self) -> list[int]:
            return [1, 2]

    with pytest.raises(ConfigError, match=r"10 client users but only 2 nodes.*num-supernodes = 10"):
        wait_for_fleet(TwoNodes(), 10, timeout_s=600, settle_s=0.2)  # type: ignore[arg-type]


TINY = ["dataset.options.num_users=3", "dataset.options.seconds_per_user=30", "num_rounds=1",
        "tracking.progress=false", "tracking.plots=false"]  # fmt: skip


def test_a_resumed_run_keeps_its_id_and_binds_its_transport_to_a_new_start(tmp_path: Path) -> None:
    first = prepare_run(load_config(TINY), tmp_path)
    arrays = arrays_to_numpy(first.initial_arrays)
    save_checkpoint(tmp_path, Checkpoint(1, arrays, {}, first.run.run_id))
    resumed = prepare_run(load_config([*TINY, "num_rounds=2"]), tmp_path)
    assert resumed.rounds_done == 1 and resumed.run.run_id == first.run.run_id
    assert resumed.run.transport_id != first.run.transport_id  # pre-crash replies do not verify


def test_each_fresh_run_gets_a_random_128_bit_id_and_its_own_os_keys(tmp_path: Path) -> None:
    first = prepare_run(load_config(TINY), tmp_path / "a")
    second = prepare_run(load_config(TINY), tmp_path / "b")
    assert len(first.run.run_id) == 32 and int(first.run.run_id, 16) >= 0
    assert first.run.run_id != second.run.run_id
    assert first.run.run_id not in str(first.run_dir)  # not derived from the directory
    server_a, server_b = (r.run.key_store.server() for r in (first, second))  # type: ignore[union-attr]
    assert server_a.fingerprint() != server_b.fingerprint()
    assert server_a.fingerprint() != ServerKeyPair.from_seed(0).fingerprint()
    assert first.settings.keys is not None
    assert (
        first.settings.keys.device(1).public_keys() != second.settings.keys.device(1).public_keys()
    )  # type: ignore[union-attr]


def test_seeded_keys_only_when_asked_for(tmp_path: Path) -> None:
    run = prepare_run(load_config([*TINY, "transport.seeded_keys=true"]), tmp_path)
    assert run.run.key_store.server().fingerprint() == ServerKeyPair.from_seed(0).fingerprint()  # type: ignore[union-attr]
    assert not (tmp_path / KEYS_DIR).exists()
