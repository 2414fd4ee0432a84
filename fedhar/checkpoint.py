"""Checkpoints of a federated run: global arrays, strategy state, the run id, the last round.

Files hold only tensors and plain values and load with ``torch.load(weights_only=True)``,
so opening a checkpoint never runs code. Writes are atomic (temp file, then rename).
"""

from __future__ import annotations

import os
import pickle  # only for the error type torch.load raises on a damaged file
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

CHECKPOINT_NAME = "checkpoint.pt"


@dataclass(frozen=True)
class Checkpoint:
    server_round: int  # last completed round
    arrays: dict[str, np.ndarray]  # global model after that round
    strategy_state: dict[str, dict[str, np.ndarray]]  # e.g. FedAdam's moments
    run_id: str = ""  # the run's random id; "" in checkpoints written before it was kept


def _to_tensors(arrays: dict[str, np.ndarray]) -> dict[str, torch.Tensor]:
    return {k: torch.from_numpy(np.array(v, copy=True)) for k, v in arrays.items()}


def _to_numpy(tensors: dict[str, torch.Tensor]) -> dict[str, np.ndarray]:
    return {k: v.numpy() for k, v in tensors.items()}


def save_checkpoint(run_dir: Path, checkpoint: Checkpoint) -> Path:
    """Write ``run_dir/checkpoint.pt`` atomically and return its path."""
    path = Path(run_dir) / CHECKPOINT_NAME
    tmp = path.with_suffix(".tmp")
    payload = {
        "server_round": checkpoint.server_round,
        "arrays": _to_tensors(checkpoint.arrays),
        "strategy_state": {k: _to_tensors(v) for k, v in checkpoint.strategy_state.items()},
        "run_id": checkpoint.run_id,
    }
    torch.save(payload, tmp)
    os.replace(tmp, path)
    return path


def load_checkpoint(run_dir: Path) -> Checkpoint | None:
    """The run's checkpoint, or None if it has none yet."""
    path = Path(run_dir) / CHECKPOINT_NAME
    if not path.exists():
        return None
    try:
        payload = torch.load(path, weights_only=True)
        return Checkpoint(
            server_round=int(payload["server_round"]),
            arrays=_to_numpy(payload["arrays"]),
            strategy_state={k: _to_numpy(v) for k, v in payload["strategy_state"].items()},
            run_id=str(payload.get("run_id", "")),
        )
    except (
        RuntimeError, KeyError, TypeError, ValueError, IndexError, AttributeError, OSError,
        EOFError, pickle.UnpicklingError,
    ) as error:  # fmt: skip
        detail = (str(error).splitlines() or [""])[0][:120]
        raise ValueError(
            f"checkpoint {path} is unreadable ({type(error).__name__}: {detail}); delete it "
            "or pass resume=false to start the run afresh"
        ) from error


def check_checkpoint_matches(
    run_dir: Path, checkpoint: Checkpoint, expected: dict[str, tuple[int, ...]]
) -> None:
    """ValueError naming the file unless the checkpoint's arrays have ``expected``'s names
    and shapes (the model the config builds)."""
    path = Path(run_dir) / CHECKPOINT_NAME
    got = {name: tuple(array.shape) for name, array in checkpoint.arrays.items()}
    missing, extra = sorted(expected.keys() - got.keys()), sorted(got.keys() - expected.keys())
    wrong = sorted(n for n in expected.keys() & got.keys() if expected[n] != got[n])
    if missing or extra or wrong:
        raise ValueError(
            f"checkpoint {path} does not hold this config's model (missing {missing[:3]}, "
            f"unexpected {extra[:3]}, other shapes {wrong[:3]}); delete it or pass "
            "resume=false to start the run afresh"
        )
