"""Evaluate the global model at every width it nests (HeteroFL, FedRolex, FjORD).

A sub-model of width w is the leading slice of every hidden dim of the global model
(`fedhar.partial.spec.slice_width` with offset 0), the model a device of that width would run.
`per_window_batchnorm` gives a model whose BatchNorm layers normalize each window by its own
statistics, as they do in training on batches of one window.
"""

from __future__ import annotations

import copy
from collections.abc import Iterable, Iterator, Mapping, Sequence

import numpy as np
import torch
from torch import nn

from fedhar.models import build_model
from fedhar.partial.spec import extract, slice_width
from fedhar.train import evaluate


def width_key(width: float, metric: str) -> str:
    """Metric name of one width level, e.g. ``width_0.25/macro_f1``."""
    return f"width_{width:g}/{metric}"


class PerWindowNorm(nn.Module):
    """A BatchNorm1d's scale and shift over each window's own per-channel statistics, the
    layer's training-mode output on a batch of one window ``(1, C, T)``."""

    def __init__(self, batchnorm: nn.BatchNorm1d) -> None:
        super().__init__()
        self.weight, self.bias, self.eps = batchnorm.weight, batchnorm.bias, batchnorm.eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``(B, C, T)`` -> ``(B, C, T)``."""
        if x.dim() != 3:
            raise ValueError(f"per-window BatchNorm needs (B, C, T) inputs, got {tuple(x.shape)}")
        return nn.functional.instance_norm(x, weight=self.weight, bias=self.bias, eps=self.eps)


def per_window_batchnorm(model: nn.Module) -> nn.Module:
    """A copy of ``model`` whose every BatchNorm1d normalizes each window by itself."""
    swapped = copy.deepcopy(model)
    for parent in list(swapped.modules()):
        for name, child in parent.named_children():
            if isinstance(child, nn.BatchNorm1d):
                setattr(parent, name, PerWindowNorm(child))
    return swapped


def leading_submodels(
    model_name: str,
    global_state: Mapping[str, torch.Tensor],
    widths: Iterable[float],
    in_channels: int,
) -> Iterator[tuple[float, nn.Module]]:
    """(width, sub-model) for each width, in order: the leading slice of the full-width
    ``global_state``, the model a device of that width runs."""
    num_classes = int(global_state["head.weight"].shape[0])
    full = build_model(model_name, in_channels, num_classes)
    full.load_state_dict(dict(global_state))
    for width in sorted(set(widths)):
        sub = build_model(model_name, in_channels, num_classes, width)
        sub.load_state_dict(extract(global_state, slice_width(full, sub, width)))
        yield width, sub


def evaluate_widths(
    model_name: str,
    global_state: Mapping[str, torch.Tensor],
    widths: Sequence[float],
    x: np.ndarray,  # (N, C, T)
    y: np.ndarray,  # (N,)
    num_classes: int,
    statistics: Mapping[float, Mapping[str, torch.Tensor]] | None = None,
    per_window: bool = False,
) -> dict[str, float]:
    """Loss, accuracy and macro-F1 of the leading-slice sub-model at each width.

    Parameters
    ----------
    model_name : str
        The bundled model the global state belongs to (at full width).
    global_state : Mapping[str, torch.Tensor]
        The global model's full-width state.
    widths : Sequence[float]
        Width levels in (0, 1]; 1.0 is the full model.
    x, y : np.ndarray
        Windows ``(N, C, T)`` and labels ``(N,)`` to evaluate on.
    num_classes : int
        Number of classes K.
    statistics : Mapping[float, Mapping[str, torch.Tensor]] | None
        Per width, BatchNorm statistics that replace the slice's own (static BatchNorm,
        `fedhar.partial.static_bn`); widths not listed keep the sliced statistics.
    per_window : bool
        Normalize each window by its own statistics instead (`per_window_batchnorm`).

    Returns
    -------
    dict[str, float]
        ``width_<w>/loss``, ``width_<w>/accuracy`` and ``width_<w>/macro_f1`` per width.
    """
    if not widths:
        raise ValueError("widths is empty; give at least one width level, e.g. [0.25, 1.0]")
    bad = [w for w in widths if not 0.0 < w <= 1.0]
    if bad:
        raise ValueError(f"widths must lie in (0, 1], got {bad}")
    scores: dict[str, float] = {}
    for width, sub in leading_submodels(model_name, global_state, widths, int(x.shape[1])):
        if statistics and width in statistics:
            sub.load_state_dict(dict(statistics[width]), strict=False)
        result = evaluate(per_window_batchnorm(sub) if per_window else sub, x, y, num_classes)
        scores[width_key(width, "loss")] = result.loss
        scores[width_key(width, "accuracy")] = result.accuracy
        scores[width_key(width, "macro_f1")] = result.macro_f1
    return scores
