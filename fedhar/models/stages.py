"""Every model is a per-frame front end followed by a temporal stage.

The front end (convolutions, pooling, pointwise layers) maps each stretch of input frames to
feature frames on its own, so overlapping windows share most of them; the temporal stage (an
LSTM, or pooling over time, then the head) reads a window's feature frames as a whole.
A model names its front-end submodules, in execution order, in ``FRONT_END``; an ``nn.Sequential``
among them stands for its children. Streaming inference (``fedhar.deploy.streaming``) relies on
that order.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

from torch import Tensor, nn

LayerCall = Callable[[nn.Module, Tensor], Tensor]  # runs one front-end layer on its input


def _leaves(module: nn.Module) -> Iterator[nn.Module]:
    if isinstance(module, nn.Sequential):
        for child in module:
            yield from _leaves(child)
    else:
        yield module


def front_end_layers(model: nn.Module) -> list[nn.Module]:
    """The front end's layers in execution order (``model.FRONT_END``, Sequentials expanded)."""
    names = getattr(model, "FRONT_END", None)
    if names is None:
        raise ValueError(f"{type(model).__name__} names no FRONT_END; it cannot be staged")
    return [leaf for name in names for leaf in _leaves(model.get_submodule(name))]


def run_front_end(model: nn.Module, x: Tensor, call: LayerCall | None = None) -> Tensor:
    """Feature frames ``(B, F, T')`` of windows ``(B, C, T)``; ``call`` runs each layer."""
    for layer in front_end_layers(model):
        x = call(layer, x) if call is not None else layer(x)
    return x
