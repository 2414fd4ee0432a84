"""Sample-level DP-SGD inside one local update, with Opacus (Abadi et al. 2016).

Each step draws a Poisson batch (every window with probability ``batch_size / N``), clips
each window's gradient to ``max_grad_norm`` and adds Gaussian noise of std
``noise_multiplier * max_grad_norm`` to their sum: Opacus's per-sample gradients
(``GradSampleModule``) and ``DPOptimizer``. ``nn.LSTM`` trains as Opacus's ``DPLSTM``, which
holds the same weights under the same names. BatchNorm mixes windows of a batch, so a model
with it is refused (`DpSgdUnsupported`). The guarantee is per window of one user's data; the
user's device keeps its own ledger of (sample rate, steps) and epsilon
(`fedhar.privacy.accounting.sample_level_epsilon`).
"""

from __future__ import annotations

import copy
import math
import warnings
from dataclasses import dataclass

import numpy as np
import torch
from opacus import GradSampleModule
from opacus.layers import DPLSTM
from opacus.optimizers import DPOptimizer
from opacus.validators import ModuleValidator
from opacus.validators.errors import ShouldReplaceModuleError
from torch import nn

from fedhar.seeding import seed_everything
from fedhar.train import TrainConfig, TrainResult


class DpSgdUnsupported(ValueError):
    """A model whose layers DP-SGD cannot give per-sample gradients; the message names them."""


@dataclass(frozen=True)
class DpSgd:
    """DP-SGD settings of every device's local update."""

    noise_multiplier: float  # noise std on each step's summed clipped gradients / max_grad_norm
    max_grad_norm: float  # per-window gradient clipping norm
    delta: float = 1e-5  # epsilon is reported at this delta
    epsilon_budget: float | None = None  # a device stops training before it would pass this

    def __post_init__(self) -> None:
        if not self.noise_multiplier > 0 or not self.max_grad_norm > 0:
            raise ValueError(
                f"DP-SGD needs noise_multiplier > 0 and max_grad_norm > 0; got "
                f"{self.noise_multiplier} and {self.max_grad_norm}"
            )
        if not 0 < self.delta < 1:
            raise ValueError(f"DP-SGD delta={self.delta} must lie in (0, 1)")


@dataclass(frozen=True)
class DpSgdResult:
    train: TrainResult
    sample_rate: float  # each window's chance to be in a step's batch
    steps: int  # noisy steps taken (the accountant composes this many)


def planned_steps(num_examples: int, config: TrainConfig) -> tuple[float, int]:
    """(sample rate, steps) of a DP-SGD update on ``num_examples`` windows."""
    if num_examples < 1:
        raise ValueError("DP-SGD got no training windows")
    sample_rate = min(1.0, config.batch_size / num_examples)
    steps = config.epochs * max(1, math.ceil(num_examples / config.batch_size))
    if config.max_steps is not None:
        steps = min(steps, config.max_steps)
    return sample_rate, steps


def check_supported(model: nn.Module) -> None:
    """Raise `DpSgdUnsupported` when ``model`` has layers without per-sample gradients."""
    errors = [
        e for e in ModuleValidator.validate(model, strict=False)
        if not (isinstance(e, ShouldReplaceModuleError) and "LSTM" in str(e))
    ]  # fmt: skip
    if errors:
        kinds = sorted({type(m).__name__ for m in model.modules() if _mixes_batch(m)})
        raise DpSgdUnsupported(
            f"DP-SGD cannot train {type(model).__name__}: {', '.join(kinds) or errors[0]} mixes "
            "the windows of a batch, so one window's gradient is not its own; use "
            "model=deepconvlstm (no BatchNorm)"
        )


def _mixes_batch(module: nn.Module) -> bool:
    return isinstance(module, nn.modules.batchnorm._BatchNorm) and module.track_running_stats


def _with_dp_lstm(model: nn.Module) -> nn.Module:
    """A copy of ``model`` with every ``nn.LSTM`` replaced by an equal ``DPLSTM``."""
    private = copy.deepcopy(model)
    for name, module in list(private.named_modules()):
        if isinstance(module, nn.LSTM):
            parent = private.get_submodule(name.rpartition(".")[0]) if "." in name else private
            dp_lstm = DPLSTM(
                module.input_size, module.hidden_size, num_layers=module.num_layers,
                bias=module.bias, batch_first=module.batch_first, dropout=module.dropout,
                bidirectional=module.bidirectional,
            )  # fmt: skip
            dp_lstm.load_state_dict(module.state_dict())
            setattr(parent, name.rpartition(".")[2], dp_lstm)
    return private


def train_dp_sgd(
    model: nn.Module,
    x: np.ndarray,  # (N, C, T)
    y: np.ndarray,  # (N,)
    config: TrainConfig,
    dp: DpSgd,
    seed: int,
) -> DpSgdResult:
    """DP-SGD over the local data; ``model``'s trainable parameters are updated in place."""
    check_supported(model)
    sample_rate, steps = planned_steps(len(x), config)
    generator = seed_everything(seed)
    private = _with_dp_lstm(model)
    module = GradSampleModule(private, batch_first=True, loss_reduction="mean")
    params = [p for p in module.parameters() if p.requires_grad]
    optimizer = DPOptimizer(
        torch.optim.SGD(
            params, lr=config.lr, momentum=config.momentum, weight_decay=config.weight_decay
        ),
        noise_multiplier=dp.noise_multiplier,
        max_grad_norm=dp.max_grad_norm,
        expected_batch_size=config.batch_size,
        generator=generator,
    )
    inputs, targets = torch.from_numpy(x), torch.from_numpy(y).long()
    loss_fn = nn.CrossEntropyLoss()
    module.train()
    total_loss, batches = 0.0, 0
    for _ in range(steps):
        batch = torch.nonzero(torch.rand(len(x), generator=generator) < sample_rate).squeeze(1)
        optimizer.zero_grad(set_to_none=True)
        if len(batch) == 0:  # an empty Poisson batch still takes its noisy step
            for p in params:
                p.grad_sample = torch.zeros((1, *p.shape), dtype=p.dtype)
        else:
            loss = loss_fn(module(inputs[batch]), targets[batch])
            with warnings.catch_warnings():  # the input windows need no gradient
                warnings.filterwarnings("ignore", "Full backward hook is firing")
                loss.backward()
            total_loss, batches = total_loss + float(loss.detach()), batches + 1
        optimizer.step()
    module.remove_hooks()
    trained = private.state_dict()  # DPLSTM lists its weights under nn.LSTM's names too
    model.load_state_dict({name: trained[name] for name in model.state_dict()})
    train = TrainResult(len(x), steps, total_loss / max(batches, 1))
    return DpSgdResult(train, sample_rate, steps)
