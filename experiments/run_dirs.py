"""Run directories that do not collide: a short hash of what decides a run's numbers.

`numbers_config` is a config flattened to dotted keys, less Hydra's own node and the keys a
resumed run may change (`RESUME_MAY_CHANGE`: more rounds, tracking, timeouts). Its
`config_hash` names the default run directory (``${config_hash:}`` in ``configs/``), so two
runs that differ in any option that changes their numbers get different directories, and
re-running a command (or extending ``num_rounds``) finds its earlier run to resume.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any

from omegaconf import DictConfig, OmegaConf

RESUME_MAY_CHANGE = (  # keys whose change leaves the numbers as they are
    "num_rounds",
    "resume",
    "tracking",
    "transport",  # keys change, numbers do not
    "runtime.backend",
    "runtime.ray_address",
    "runtime.messages_per_call",
    "runtime.round_timeout_s",
    "runtime.evaluate_share",
    "runtime.max_failed_rounds",
    "runtime.verbose",
    "runtime.ray_init_args",
)  # not runtime.client_resources: a client's CPUs set its torch threads
HASH_CHARS = 8


def _flat(node: Any, prefix: str = "") -> dict[str, Any]:
    if not isinstance(node, dict):
        return {prefix.rstrip("."): node}
    flat: dict[str, Any] = {}
    for key, value in node.items():
        flat.update(_flat(value, f"{prefix}{key}."))
    return flat


def numbers_config(cfg: DictConfig | dict[str, Any]) -> dict[str, Any]:
    """The resolved options that decide a run's numbers, as dotted keys."""
    node = cfg if isinstance(cfg, DictConfig) else OmegaConf.create(cfg)
    plain = {
        str(key): OmegaConf.to_container(node[key], resolve=True)
        if OmegaConf.is_config(node[key]) else node[key]
        for key in node if key != "hydra"
    }  # fmt: skip
    return {k: v for k, v in _flat(plain).items() if not k.startswith(RESUME_MAY_CHANGE)}


def config_hash(cfg: DictConfig | dict[str, Any]) -> str:
    """A short, stable hash of `numbers_config`."""
    text = json.dumps(numbers_config(cfg), sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:HASH_CHARS]


def _resolve_hash(*, _root_: DictConfig) -> str:
    return config_hash(_root_)


def register_resolver() -> None:
    """Make ``${config_hash:}`` available to config interpolation (idempotent)."""
    if not OmegaConf.has_resolver("config_hash"):
        OmegaConf.register_new_resolver("config_hash", _resolve_hash)
