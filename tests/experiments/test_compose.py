"""Composing a run from config: fleets, wrappers, client mods and clear config errors."""

from __future__ import annotations

import pytest

from experiments.compose import (
    ConfigError,
    client_mods,
    client_settings,
    federation_spec,
    load_config,
)
from fedhar.federation import load_federation

SMALL = ["dataset.options.num_users=6", "dataset.options.seconds_per_user=60"]


def test_a_model_no_device_can_train_is_refused_with_the_sram_it_needs() -> None:
    cfg = load_config(
        [
            *SMALL,
            "model=deepconvlstm",
            "quant.enabled=false",
            "~fleet.mix",
            "+fleet.mix={stm32f446: 1.0}",
        ]
    )
    with pytest.raises(ConfigError, match=r"fits no device.*needs at least \d+ bytes of SRAM"):
        client_settings(cfg, load_federation(federation_spec(cfg)))


def test_fleet_assigns_every_client_a_device_and_none_means_no_fleet() -> None:
    cfg = load_config([*SMALL, "fleet=mcu_heavy"])
    federation = load_federation(federation_spec(cfg))
    settings = client_settings(cfg, federation)
    assert [user for user, _ in settings.devices] == federation.clients
    assert client_settings(load_config([*SMALL, "fleet=none"]), federation).devices == ()


def test_unknown_device_in_a_fleet_lists_the_valid_names() -> None:
    cfg = load_config([*SMALL, "~fleet.mix", "+fleet.mix={pdp11: 1.0}"])
    with pytest.raises(ValueError, match=r"unknown device names \['pdp11'\]; valid names"):
        client_settings(cfg, load_federation(federation_spec(cfg)))


def test_wrapper_mods_pair_outermost_first(tmp_path) -> None:
    mods = client_mods(load_config(["wrappers=[compression,encryption]"]), tmp_path, "0" * 32)
    names = [m.__qualname__.split(".")[0] for m in mods]
    assert names == ["persisted_state_mod", "encryption_mod", "compression_mod"]
