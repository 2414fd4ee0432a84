"""A small model and enrolled fleet for partial-model strategy tests."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import torch
from flwr.app import ArrayRecord

from fedhar.models import build_model
from fedhar.wire import NodeInfo, state_to_arrays
from strategies.run_info import FleetDirectory, RunInfo

MODEL, C, K = "microbi_convlstm", 6, 7


def run_with(max_widths: Mapping[int, float], seed: int = 0) -> RunInfo:
    """A run whose directory holds one node per entry, with that largest width."""
    nodes = {
        node: NodeInfo(node, i, f"u{node}", "mcu", width, 100)
        for i, (node, width) in enumerate(sorted(max_widths.items()))
    }
    return RunInfo("run", seed, Path("."), FleetDirectory(nodes))


def global_arrays(seed: int = 0) -> ArrayRecord:
    torch.manual_seed(seed)
    return state_to_arrays(build_model(MODEL, C, K).state_dict())
