"""Sub-model specs: which elements of the global model a client holds, trains and returns.

A `SubModelSpec` lists, per selected state entry, the kept indices along every dim. Two
kinds share it:

- ``"width"``: every hidden dim narrowed to ``ceil(H * width)`` units, either leading
  (HeteroFL, Diao et al. ICLR 2021; FjORD, Horváth et al. NeurIPS 2021) or a rolling window
  ``(offset + arange(h)) mod H`` (FedRolex, Alam et al. NeurIPS 2022). Input channels and
  the head's classes never narrow.
- ``"layers"``: whole entries of a layer subset: the head (FedPer, Arivazhagan et al. 2019;
  FedRep, Collins et al. ICML 2021) or everything but BatchNorm (FedBN, Li et al. ICLR 2021).

`extract` cuts the sub-state out of the global state; `scatter` puts a trained sub-state
back into global coordinates with a mask of the elements it covers.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Literal

import torch
from torch import nn

SpecKind = Literal["width", "layers"]
SPEC_KINDS: tuple[str, ...] = ("width", "layers")


class SpecMismatch(ValueError):
    """A state does not fit a spec; ``reason`` names the entry and the shapes."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


@dataclass(frozen=True)
class ParamSlice:
    """Kept indices of one state entry: per dim a tuple of indices, or None for the whole dim."""

    full_shape: tuple[int, ...]
    indices: tuple[tuple[int, ...] | None, ...]

    def __post_init__(self) -> None:
        if len(self.indices) != len(self.full_shape):
            raise ValueError(
                f"slice has {len(self.indices)} index dims for a tensor of shape "
                f"{self.full_shape}; give one entry (list or None) per dim"
            )
        for dim, (size, idx) in enumerate(zip(self.full_shape, self.indices, strict=True)):
            if idx is None:
                continue
            if not idx:
                raise ValueError(f"dim {dim} keeps no indices; drop the entry from the spec")
            if min(idx) < 0 or max(idx) >= size:
                raise ValueError(f"dim {dim} has indices outside [0, {size})")
            if len(set(idx)) != len(idx):
                raise ValueError(f"dim {dim} repeats an index; each element may appear once")

    @property
    def shape(self) -> tuple[int, ...]:
        """Shape of the sliced tensor."""
        return tuple(
            size if idx is None else len(idx)
            for size, idx in zip(self.full_shape, self.indices, strict=True)
        )

    def index_grid(self) -> tuple[torch.Tensor, ...]:
        """Open index grid for advanced indexing into the full tensor."""
        axes = [
            torch.arange(size) if idx is None else torch.tensor(idx, dtype=torch.long)
            for size, idx in zip(self.full_shape, self.indices, strict=True)
        ]
        return tuple(torch.meshgrid(*axes, indexing="ij")) if axes else ()


def whole(shape: Iterable[int]) -> ParamSlice:
    """A slice keeping every element of a tensor of ``shape``."""
    full_shape = tuple(int(s) for s in shape)
    return ParamSlice(full_shape, (None,) * len(full_shape))


@dataclass(frozen=True)
class SubModelSpec:
    """The selected state entries of the global model, in state order."""

    kind: SpecKind
    params: tuple[tuple[str, ParamSlice], ...]
    width: float = 1.0  # hidden-size factor; 1.0 for layer specs
    offset: int = 0  # rolling-window start; dim of size H starts at offset mod H

    def __post_init__(self) -> None:
        if self.kind not in SPEC_KINDS:
            raise ValueError(f"unknown spec kind {self.kind!r}; valid kinds: {SPEC_KINDS}")
        if not self.params:
            raise ValueError("spec selects no parameters; select at least one state entry")
        names = [name for name, _ in self.params]
        if len(set(names)) != len(names):
            raise ValueError(f"spec names an entry twice: {sorted(names)}")
        if not (0.0 < self.width <= 1.0) or math.isnan(self.width):
            raise ValueError(f"width must be in (0, 1], got {self.width}")
        if self.offset < 0:
            raise ValueError(f"offset must be >= 0, got {self.offset}")

    @property
    def names(self) -> tuple[str, ...]:
        """Selected entry names, in state order."""
        return tuple(name for name, _ in self.params)

    def slices(self) -> dict[str, ParamSlice]:
        """Selected entries as a name -> slice dict."""
        return dict(self.params)


Layout = tuple[int, int, int]  # (blocks, full units per block, sub units per block)
Indices = tuple[tuple[int, ...] | None, ...]


def _blocks(layout: Layout, offset: int) -> tuple[int, ...] | None:
    """Kept indices: the same window ``(offset + arange(keep)) mod size`` in every block."""
    blocks, size, keep = layout
    if keep == size:
        return None  # unscaled dims (and full width) keep everything, in order
    return tuple(b * size + (offset + i) % size for b in range(blocks) for i in range(keep))


def _enter(layout: Layout | None, name: str, full_in: int, sub_in: int) -> Layout:
    """Layout of the features entering module ``name``, checked against its input size."""
    if layout is None:
        if full_in != sub_in:
            raise ValueError(f"{name}: input channels scale ({full_in} -> {sub_in}); they must not")
        return (1, full_in, sub_in)
    blocks, size, keep = layout
    if (blocks * size, blocks * keep) != (full_in, sub_in):
        raise ValueError(
            f"{name}: takes {full_in} (sub {sub_in}) features but the layer before gives "
            f"{blocks}x{size} (sub {blocks}x{keep}); the model breaks the structural contract"
        )
    return layout


def _trace(full: nn.Module, sub: nn.Module, offset: int) -> dict[str, Indices]:
    """Kept indices per state entry, following features from input to head in state order."""
    sub_modules = dict(sub.named_modules())
    out: dict[str, Indices] = {}
    layout: Layout | None = None
    for name, module in full.named_modules():
        f: Any = module  # layer attributes (in_channels, hidden_size, ...) vary by type
        s: Any = sub_modules.get(name)
        if type(s) is not type(f):
            raise ValueError(f"module {name!r} differs between the full and the sub model")
        p = f"{name}." if name else ""
        if isinstance(module, nn.Conv1d | nn.Linear):
            conv = isinstance(module, nn.Conv1d)
            fi, si = (f.in_channels, s.in_channels) if conv else (f.in_features, s.in_features)
            fo, so = (f.out_channels, s.out_channels) if conv else (f.out_features, s.out_features)
            layout = _enter(layout, name, fi, si)
            in_idx = _blocks(layout, offset)
            if conv and f.groups > 1:
                if not (f.groups == fi == fo and s.groups == si == so):
                    raise ValueError(
                        f"{name}: only depthwise grouped convs slice (groups == channels)"
                    )
                out_idx, in_idx = in_idx, None
            else:
                layout = (1, fo, so)
                out_idx = _blocks(layout, offset)
            out[p + "weight"] = (out_idx, in_idx) + ((None,) if conv else ())
            if f.bias is not None:
                out[p + "bias"] = (out_idx,)
        elif isinstance(module, nn.modules.batchnorm._BatchNorm):
            layout = _enter(layout, name, f.num_features, s.num_features)
            for key, _ in f.named_parameters(recurse=False):
                out[p + key] = (_blocks(layout, offset),)
            for key, buf in f.named_buffers(recurse=False):
                out[p + key] = (_blocks(layout, offset),) if buf.dim() else ()
        elif isinstance(module, nn.LSTM | nn.GRU):
            if getattr(f, "proj_size", 0):
                raise ValueError(f"{name}: LSTM projections (proj_size) do not slice")
            layout = _enter(layout, name, f.input_size, s.input_size)
            gates = (4 if isinstance(module, nn.LSTM) else 3, f.hidden_size, s.hidden_size)
            dirs = 2 if f.bidirectional else 1
            gate_idx = _blocks(gates, offset)
            hid_idx = _blocks((1, f.hidden_size, s.hidden_size), offset)
            for k in range(f.num_layers):
                in_idx = _blocks(layout if k == 0 else (dirs, f.hidden_size, s.hidden_size), offset)
                for sfx in ("", "_reverse")[:dirs]:
                    out[f"{p}weight_ih_l{k}{sfx}"] = (gate_idx, in_idx)
                    out[f"{p}weight_hh_l{k}{sfx}"] = (gate_idx, hid_idx)
                    if f.bias:
                        out[f"{p}bias_ih_l{k}{sfx}"] = (gate_idx,)
                        out[f"{p}bias_hh_l{k}{sfx}"] = (gate_idx,)
            layout = (dirs, f.hidden_size, s.hidden_size)
        elif list(f.parameters(recurse=False)) or list(f.buffers(recurse=False)):
            raise ValueError(
                f"{name}: {type(f).__name__} does not width-slice; supported layers are "
                "Conv1d, Linear, BatchNorm1d, LSTM and GRU"
            )
    return out


def slice_width(full: nn.Module, sub: nn.Module, width: float, offset: int = 0) -> SubModelSpec:
    """Width spec mapping ``full`` onto ``sub``, the same architecture built at ``width``.

    Hidden dim of size H keeps ``arange(h)`` when ``h == H`` and otherwise
    ``(offset + arange(h)) mod H``; ``offset=0`` gives HeteroFL's leading slice.
    """
    indices = _trace(full, sub, offset)
    full_state, sub_state = full.state_dict(), sub.state_dict()
    params = []
    for name, tensor in full_state.items():
        if name not in indices or name not in sub_state:
            raise ValueError(f"{name}: no width rule or no sub-model entry for this state entry")
        sl = ParamSlice(tuple(tensor.shape), indices[name])
        if sl.shape != tuple(sub_state[name].shape):
            raise ValueError(
                f"{name}: slicing gives {sl.shape} but the sub model has "
                f"{tuple(sub_state[name].shape)}; the model breaks the structural contract"
            )
        params.append((name, sl))
    return SubModelSpec("width", tuple(params), width=width, offset=offset)


def _select(model: nn.Module, names: Iterable[str], kind: SpecKind) -> SubModelSpec:
    state = model.state_dict()
    chosen = set(names)
    unknown = sorted(chosen - set(state))
    if unknown:
        raise ValueError(f"unknown state entries {unknown}; valid names: {list(state)}")
    params = tuple((n, whole(t.shape)) for n, t in state.items() if n in chosen)
    return SubModelSpec(kind, params)


def select_head(model: nn.Module) -> SubModelSpec:
    """Only ``head.*``: the personal part of FedPer/FedRep."""
    return _select(model, [n for n in model.state_dict() if n.startswith("head.")], "layers")


def select_without_batchnorm(model: nn.Module) -> SubModelSpec:
    """Everything except BatchNorm weights and statistics, which stay local (FedBN)."""
    bn = {
        name for name, m in model.named_modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)
    }
    names = [k for k in model.state_dict() if k.rpartition(".")[0] not in bn]
    return _select(model, names, "layers")


def _check_full(name: str, sl: ParamSlice, global_state: Mapping[str, torch.Tensor]) -> None:
    if name not in global_state:
        raise SpecMismatch(f"global state has no entry {name!r} named by the spec")
    if tuple(global_state[name].shape) != sl.full_shape:
        raise SpecMismatch(
            f"{name}: global shape {tuple(global_state[name].shape)} != spec full shape "
            f"{sl.full_shape}"
        )


def extract(
    global_state: Mapping[str, torch.Tensor], spec: SubModelSpec
) -> dict[str, torch.Tensor]:
    """The sub-state the spec selects, loadable into the sub-width model."""
    out: dict[str, torch.Tensor] = {}
    for name, sl in spec.params:
        _check_full(name, sl, global_state)
        t = global_state[name].detach()
        for dim, idx in enumerate(sl.indices):
            if idx is not None:
                t = t.index_select(dim, torch.tensor(idx, dtype=torch.long))
        out[name] = t.clone()
    return out


def scatter(
    sub_state: Mapping[str, torch.Tensor],
    spec: SubModelSpec,
    global_state: Mapping[str, torch.Tensor],
) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """Sub-state in global coordinates: ``(values, mask)`` over every global entry.

    ``values`` holds the client's numbers where ``mask`` is True and the global ones elsewhere.
    """
    missing = sorted(set(spec.names) - set(sub_state))
    extra = sorted(set(sub_state) - set(spec.names))
    if missing or extra:
        raise SpecMismatch(
            f"sub-state entries differ from the spec: missing {missing}, extra {extra}"
        )
    slices = spec.slices()
    values: dict[str, torch.Tensor] = {}
    mask: dict[str, torch.Tensor] = {}
    for name, g in global_state.items():
        values[name] = g.detach().clone()
        mask[name] = torch.zeros(g.shape, dtype=torch.bool)
    for name, sl in slices.items():
        _check_full(name, sl, global_state)
        got = tuple(sub_state[name].shape)
        if got != sl.shape:
            raise SpecMismatch(f"{name}: sub-state shape {got} != spec shape {sl.shape}")
        grid = sl.index_grid()
        src = sub_state[name].detach().to(values[name].dtype)
        if grid:
            values[name][grid] = src
            mask[name][grid] = True
        else:
            values[name] = src.clone()
            mask[name] = torch.ones((), dtype=torch.bool)
    return values, mask
