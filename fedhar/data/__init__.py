"""Datasets for fedhar: one entry point, `load_dataset(name, **options)`.

Every loader takes a frozen config dataclass; `options` are forwarded into it.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

from fedhar.data.byod import ByodConfig, load_byod
from fedhar.data.dataset import WindowDataset
from fedhar.data.sp_sw_har import SpSwHarConfig, load_sp_sw_har
from fedhar.data.synthetic import SyntheticConfig, load_synthetic
from fedhar.data.uci_har import UciHarConfig, load_uci_har
from fedhar.data.users import LoadedUsers, SyntheticUsers, UserSource

LOADERS: dict[str, tuple[type, Callable[[Any], WindowDataset]]] = {
    "synthetic": (SyntheticConfig, load_synthetic),
    "sp_sw_har": (SpSwHarConfig, load_sp_sw_har),
    "uci_har": (UciHarConfig, load_uci_har),
    "byod": (ByodConfig, load_byod),
}
DATASET_NAMES = tuple(LOADERS)


def dataset_config(name: str, **options: Any) -> Any:
    """The config dataclass of dataset `name` built from `options`."""
    if name not in LOADERS:
        raise ValueError(f"unknown dataset {name!r}; valid names: {', '.join(DATASET_NAMES)}")
    config_type = LOADERS[name][0]
    valid = [f.name for f in dataclasses.fields(config_type)]
    unknown = sorted(set(options) - set(valid))
    if unknown:
        raise ValueError(f"unknown option(s) {unknown} for dataset {name!r}; valid: {valid}")
    return config_type(**options)


def open_users(name: str, **options: Any) -> UserSource:
    """Dataset `name` user by user: synthetic users are generated as they are asked for."""
    config = dataset_config(name, **options)
    if isinstance(config, SyntheticConfig):
        return SyntheticUsers(config)
    return LoadedUsers(LOADERS[name][1](config))


def load_dataset(name: str, **options: Any) -> WindowDataset:
    """Load dataset `name` ("synthetic", "sp_sw_har", "uci_har", "byod") as windows."""
    config = dataset_config(name, **options)
    return LOADERS[name][1](config)


__all__ = ["DATASET_NAMES", "LOADERS", "dataset_config", "load_dataset", "open_users"]
