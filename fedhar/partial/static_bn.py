"""Static BatchNorm (sBN) and the width scaler of HeteroFL (Diao et al., ICLR 2021).

Sub-models of different widths train on batch statistics only: running BatchNorm statistics
averaged across widths describe none of them. Under sBN the statistics a width is tested with
are computed afterwards, for the final global model: each client runs its training windows
through the leading slice of every width and sums the inputs of every BatchNorm
(`batchnorm_sums`, with the layers upstream normalizing on batch statistics, as in training);
the server adds the clients' sums (`merge_sums`) and turns them into running statistics
(`statistics_from_sums`). Pooled sums give the moments of all clients' windows together, not
an average of per-client moments.

The scaler divides every hidden layer's output by the sub-model's width during training only
(`install_scaler`), so that a narrow sub-model's activations keep the full model's scale.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm

from fedhar.partial.evaluate import leading_submodels

STATISTIC_SUFFIXES = (".running_mean", ".running_var", ".num_batches_tracked")
SCALED_LAYERS = (nn.Conv1d, nn.LSTM)  # hidden layers whose outputs the scaler divides


def is_statistic(name: str) -> bool:
    """Whether a state entry is a BatchNorm statistic (not a trained parameter)."""
    return name.endswith(STATISTIC_SUFFIXES)


@dataclass(frozen=True)
class MomentSums:
    """Per-channel sums of one BatchNorm's inputs: values counted, their sum and squares."""

    count: float
    total: torch.Tensor  # (C,) float64
    squares: torch.Tensor  # (C,) float64

    def __add__(self, other: MomentSums) -> MomentSums:
        if self.total.shape != other.total.shape:
            raise ValueError(
                f"cannot add sums over {tuple(self.total.shape)} and "
                f"{tuple(other.total.shape)} channels"
            )
        return MomentSums(
            self.count + other.count, self.total + other.total, self.squares + other.squares
        )


LayerSums = dict[str, MomentSums]  # BatchNorm module name -> sums of its inputs


def batchnorm_modules(model: nn.Module) -> dict[str, _BatchNorm]:
    """The model's BatchNorm layers by module name."""
    return {name: m for name, m in model.named_modules() if isinstance(m, _BatchNorm)}


def batchnorm_sums(model: nn.Module, x: np.ndarray, batch_size: int) -> LayerSums:
    """Sums of every BatchNorm's inputs over windows ``x`` ``(N, C, T)``, in batches.

    BatchNorm layers normalize on batch statistics, as in training; every other layer runs
    as at test (no dropout, no scaler). ``model`` is left as it was.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    layers = batchnorm_modules(model)
    was_training = {name: m.training for name, m in model.named_modules()}
    saved = {name: {k: v.clone() for k, v in m.state_dict().items()} for name, m in layers.items()}
    sums: LayerSums = {}

    def record(name: str) -> Any:
        def hook(_: nn.Module, inputs: tuple[torch.Tensor, ...]) -> None:
            values = inputs[0].detach().to(torch.float64).transpose(0, 1).flatten(1)  # (C, N*T)
            part = MomentSums(float(values.shape[1]), values.sum(1), values.square().sum(1))
            sums[name] = sums[name] + part if name in sums else part

        return hook

    handles = [m.register_forward_pre_hook(record(name)) for name, m in layers.items()]
    model.eval()
    for m in layers.values():
        m.train()
    try:
        with torch.no_grad():
            inputs = torch.as_tensor(x, dtype=torch.float32)
            for start in range(0, len(inputs), batch_size):
                model(inputs[start : start + batch_size])
    finally:
        for handle in handles:
            handle.remove()
        for name, m in layers.items():
            m.load_state_dict(saved[name])
        for name, m in model.named_modules():
            m.train(was_training[name])
    return sums


def merge_sums(parts: Iterable[LayerSums]) -> LayerSums:
    """The sums of several clients' windows together (every part names the same layers)."""
    merged: LayerSums = {}
    names: set[str] | None = None
    for part in parts:
        if names is not None and set(part) != names:
            raise ValueError(
                f"sums name different BatchNorm layers: {sorted(part)} vs {sorted(names)}"
            )
        names = set(part)
        for name, sums in part.items():
            merged[name] = merged[name] + sums if name in merged else sums
    return merged


def statistics_from_sums(sums: Mapping[str, MomentSums]) -> dict[str, torch.Tensor]:
    """Running mean and (unbiased) variance per BatchNorm, as float32 state entries."""
    stats: dict[str, torch.Tensor] = {}
    for name, s in sums.items():
        if s.count < 2:
            raise ValueError(f"{name}: {s.count:g} values cannot give a variance; need 2 or more")
        mean = s.total / s.count
        var = (s.squares - s.count * mean.square()).clamp_min(0.0) / (s.count - 1)
        stats[f"{name}.running_mean"] = mean.to(torch.float32)
        stats[f"{name}.running_var"] = var.to(torch.float32)
    return stats


def width_sums(
    model_name: str,
    global_state: Mapping[str, torch.Tensor],
    widths: Sequence[float],
    x: np.ndarray,
    batch_size: int,
) -> dict[float, LayerSums]:
    """`batchnorm_sums` of the leading-slice sub-model of the global model at each width."""
    return {
        width: batchnorm_sums(sub, x, batch_size)
        for width, sub in leading_submodels(model_name, global_state, widths, int(x.shape[1]))
    }


def install_scaler(model: nn.Module, width: float) -> None:
    """Divide every Conv1d's and LSTM's output (and final hidden state) by ``width`` while
    the layer trains.

    Hooks stay with the module through ``copy.deepcopy`` and QAT preparation.
    """
    if not 0.0 < width <= 1.0:
        raise ValueError(f"width must lie in (0, 1], got {width}")
    if width == 1.0:
        return

    def scale(module: nn.Module, _: Any, output: Any) -> Any:
        if not module.training:
            return output
        if isinstance(output, tuple):  # LSTM: (output, (h_n, c_n)); output and h_n feed on
            sequence, (h_n, c_n) = output
            return sequence / width, (h_n / width, c_n)
        return output / width

    for module in model.modules():
        if isinstance(module, SCALED_LAYERS):
            module.register_forward_hook(scale)
