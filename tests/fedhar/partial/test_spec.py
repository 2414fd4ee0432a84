"""Sub-model specs: width slicing, layer selections, extract/scatter, validation."""

from __future__ import annotations

import math
from collections.abc import Callable

import pytest
import torch
from torch import nn

from fedhar.models import MODEL_NAMES, build_model
from fedhar.partial.spec import (
    ParamSlice,
    SpecMismatch,
    SubModelSpec,
    extract,
    scatter,
    select_head,
    select_without_batchnorm,
    slice_width,
)

C, K, T = 3, 4, 16


def _h(base: int, width: float) -> int:
    return math.ceil(base * width)


class ConvBiLSTM(nn.Module):
    """Conv stages, 2-layer bidirectional LSTM, head on the last step."""

    def __init__(self, width: float) -> None:
        super().__init__()
        self.conv1 = nn.Conv1d(C, _h(8, width), 3, padding=1)
        self.bn1 = nn.BatchNorm1d(_h(8, width))
        self.conv2 = nn.Conv1d(_h(8, width), _h(12, width), 3, padding=1)
        self.lstm = nn.LSTM(_h(12, width), _h(6, width), 2, batch_first=True, bidirectional=True)
        self.head = nn.Linear(2 * _h(6, width), K)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, C, T) -> (B, K)
        z = torch.relu(self.conv2(torch.relu(self.bn1(self.conv1(x)))))  # (B, H, T)
        out, _ = self.lstm(z.transpose(1, 2))  # (B, T, 2H)
        return self.head(out[:, -1])


class DepthwiseCNN(nn.Module):
    """Conv, depthwise + pointwise conv with BatchNorm, global average pooling, head."""

    def __init__(self, width: float) -> None:
        super().__init__()
        h1, h2 = _h(8, width), _h(10, width)
        self.stem = nn.Sequential(nn.Conv1d(C, h1, 3, padding=1), nn.BatchNorm1d(h1), nn.ReLU())
        self.dw = nn.Conv1d(h1, h1, 3, padding=1, groups=h1, bias=False)
        self.bn_dw = nn.BatchNorm1d(h1)
        self.pw = nn.Conv1d(h1, h2, 1)
        self.bn_pw = nn.BatchNorm1d(h2)
        self.head = nn.Linear(h2, K)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, C, T) -> (B, K)
        z = torch.relu(self.bn_dw(self.dw(self.stem(x))))
        z = torch.relu(self.bn_pw(self.pw(z)))  # (B, H, T)
        return self.head(z.mean(dim=2))


class ConvGRU(nn.Module):
    """Conv, 2-layer unidirectional GRU, head on the last step."""

    def __init__(self, width: float) -> None:
        super().__init__()
        self.conv = nn.Conv1d(C, _h(6, width), 5, padding=2)
        self.gru = nn.GRU(_h(6, width), _h(10, width), 2, batch_first=True)
        self.head = nn.Linear(_h(10, width), K)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, C, T) -> (B, K)
        out, _ = self.gru(torch.relu(self.conv(x)).transpose(1, 2))  # (B, T, H)
        return self.head(out[:, -1])


class LSTMOnly(nn.Module):
    """A bidirectional LSTM straight on the input, then the head."""

    def __init__(self, width: float) -> None:
        super().__init__()
        self.lstm = nn.LSTM(C, _h(7, width), 2, batch_first=True, bidirectional=True)
        self.head = nn.Linear(2 * _h(7, width), K)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, C, T) -> (B, K)
        out, _ = self.lstm(x.transpose(1, 2))
        return self.head(out[:, -1])


Builder = Callable[[float], nn.Module]
BUILDERS: dict[str, Builder] = {
    "conv_bilstm": ConvBiLSTM,
    "dscnn_like": DepthwiseCNN,
    "conv_gru": ConvGRU,
    "lstm_only": LSTMOnly,
}
for _name in MODEL_NAMES:
    BUILDERS[_name] = lambda width, name=_name: build_model(name, C, K, width)


def _randomized(model: nn.Module, seed: int = 0) -> nn.Module:
    """Random weights and BatchNorm statistics, so that every element is distinct."""
    gen = torch.Generator().manual_seed(seed)
    for name, t in model.state_dict().items():
        if t.is_floating_point():
            val = torch.rand(t.shape, generator=gen) + 0.1 if "running_var" in name else None
            t.copy_(val if val is not None else torch.randn(t.shape, generator=gen) * 0.5)
    return model


def _specs(build: Builder) -> dict[str, SubModelSpec]:
    full = build(1.0)
    return {
        "leading": slice_width(full, build(0.5), 0.5),
        "rolling": slice_width(full, build(0.25), 0.25, offset=7),
        "head": select_head(full),
        "no_bn": select_without_batchnorm(full),
    }


@pytest.mark.parametrize("model_name", list(BUILDERS))
def test_extract_then_scatter_is_identity_on_selected_elements(model_name: str) -> None:
    build = BUILDERS[model_name]
    global_state = _randomized(build(1.0)).state_dict()
    for kind, spec in _specs(build).items():
        sub = {
            n: t + 1 if t.is_floating_point() else t + 3
            for n, t in extract(global_state, spec).items()
        }
        values, mask = scatter(sub, spec, global_state)
        assert set(values) == set(mask) == set(global_state), kind
        back = extract(values, spec)
        for name, g in global_state.items():
            assert torch.equal(values[name][~mask[name]], g[~mask[name]]), (kind, name)
            if name in sub:
                assert torch.equal(back[name], sub[name]), (kind, name)
                assert int(mask[name].sum()) == sub[name].numel(), (kind, name)
            else:
                assert not mask[name].any(), (kind, name)


@pytest.mark.parametrize("model_name", list(BUILDERS))
@pytest.mark.parametrize(("width", "offset"), [(0.5, 0), (0.25, 5), (0.75, 3)])
def test_sub_model_loads_extract_strictly_and_matches_the_zeroed_full_model(
    model_name: str, width: float, offset: int
) -> None:
    build = BUILDERS[model_name]
    full, sub = _randomized(build(1.0)).double().eval(), build(width).double().eval()
    spec = slice_width(full, sub, width, offset)
    global_state = full.state_dict()
    sub.load_state_dict(extract(global_state, spec), strict=True)
    values, mask = scatter(extract(global_state, spec), spec, global_state)
    full.load_state_dict(
        {n: v * mask[n] if v.is_floating_point() else v for n, v in values.items()}
    )
    x = torch.randn(2, C, T, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    with torch.no_grad():
        assert sub(x).shape == (2, K)
        torch.testing.assert_close(full(x), sub(x), rtol=0, atol=1e-12)


@pytest.mark.parametrize("offset", [0, 4])
def test_width_sliced_bidirectional_lstm_keeps_its_units_outputs(offset: int) -> None:
    full, sub = _randomized(LSTMOnly(1.0)), LSTMOnly(0.5)
    spec = slice_width(full, sub, 0.5, offset)
    state = full.state_dict()
    values, mask = scatter(extract(state, spec), spec, state)
    full.load_state_dict({n: v * mask[n] for n, v in values.items()})
    sub.load_state_dict(extract(state, spec))
    big, small = 7, 4
    kept = [(offset + i) % big for i in range(small)]
    out_idx = torch.tensor(kept + [big + i for i in kept])  # forward block, then reverse
    x = torch.randn(3, T, C, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        full_out, _ = full.lstm(x)  # (B, T, 2H)
        sub_out, _ = sub.lstm(x)  # (B, T, 2h)
    torch.testing.assert_close(full_out[..., out_idx], sub_out, rtol=0, atol=1e-6)
    dropped = torch.ones(2 * big, dtype=torch.bool)
    dropped[out_idx] = False
    assert torch.equal(full_out[..., dropped], torch.zeros_like(full_out[..., dropped]))


def test_lstm_gate_blocks_keep_the_same_units() -> None:
    spec = slice_width(LSTMOnly(1.0), LSTMOnly(0.5), 0.5, offset=5)
    sl = spec.slices()
    kept = [5, 6, 0, 1]  # (5 + arange(4)) mod 7
    assert sl["lstm.weight_hh_l0"].indices == (
        tuple(g * 7 + i for g in range(4) for i in kept),
        tuple(kept),
    )
    assert sl["lstm.weight_ih_l1_reverse"].indices[1] == tuple(kept + [7 + i for i in kept])
    assert sl["lstm.weight_ih_l0"].indices[1] is None  # input channels never slice
    assert sl["head.weight"].indices == (None, tuple(kept + [7 + i for i in kept]))


def test_leading_slice_and_num_batches_tracked() -> None:
    spec = slice_width(ConvBiLSTM(1.0), ConvBiLSTM(0.5), 0.5)
    sl = spec.slices()
    assert sl["conv1.weight"].indices == ((0, 1, 2, 3), None, None)
    assert sl["bn1.num_batches_tracked"].indices == ()
    assert sl["head.bias"].indices == (None,)
    assert (spec.kind, spec.width, spec.offset) == ("width", 0.5, 0)


def test_layer_selections() -> None:
    model = DepthwiseCNN(1.0)
    assert select_head(model).names == ("head.weight", "head.bias")
    without_bn = select_without_batchnorm(model).names
    assert "head.weight" in without_bn and "stem.0.weight" in without_bn
    assert not any("bn" in n or n.startswith("stem.1") for n in without_bn)


def test_mismatched_sub_state_raises_spec_mismatch_with_reason() -> None:
    full = ConvGRU(1.0)
    spec = slice_width(full, ConvGRU(0.5), 0.5)
    state = full.state_dict()
    sub = extract(state, spec)
    missing = {n: t for n, t in sub.items() if n != "head.bias"}
    with pytest.raises(SpecMismatch, match=r"missing \['head.bias'\]") as err:
        scatter(missing, spec, state)
    assert "head.bias" in err.value.reason
    wrong = dict(sub, **{"conv.weight": torch.zeros(6, 3, 5)})
    with pytest.raises(SpecMismatch, match=r"conv.weight: sub-state shape \(6, 3, 5\) != spec"):
        scatter(wrong, spec, state)
    other = ConvGRU(0.5).state_dict()
    with pytest.raises(SpecMismatch, match=r"conv\.weight: global shape"):
        extract(other, spec)


def test_model_mismatch_and_unsupported_layers_are_rejected() -> None:
    with pytest.raises(ValueError, match="differs between the full and the sub model"):
        slice_width(ConvGRU(1.0), LSTMOnly(0.5), 0.5)
    odd = nn.Sequential(nn.Conv1d(C, 4, 3), nn.LayerNorm(4))
    with pytest.raises(ValueError, match="LayerNorm does not width-slice"):
        slice_width(odd, odd, 1.0)
    scaled = nn.Sequential(nn.Conv1d(2, 4, 3))
    with pytest.raises(ValueError, match="input channels scale"):
        slice_width(nn.Sequential(nn.Conv1d(4, 4, 3)), scaled, 0.5)


def _width_spec() -> SubModelSpec:
    return slice_width(ConvGRU(1.0), ConvGRU(0.5), 0.5, 1)


@pytest.mark.parametrize(
    ("build", "message"),
    [
        (lambda: SubModelSpec("sparse", _width_spec().params), "unknown spec kind 'sparse'"),
        (
            lambda: SubModelSpec("width", _width_spec().params, width=1.5),
            r"width must be in \(0, 1\]",
        ),
        (lambda: SubModelSpec("width", _width_spec().params, offset=-1), "offset must be >= 0"),
        (lambda: SubModelSpec("layers", ()), "selects no parameters"),
        (lambda: SubModelSpec("width", _width_spec().params * 2), "names an entry twice"),
        (lambda: ParamSlice((6, 3, 5), ((0, 99), None, None)), "dim 0 has indices outside"),
        (lambda: ParamSlice((6, 3, 5), ((0, 0), None, None)), "repeats an index"),
        (lambda: ParamSlice((6, 3, 5), (None,)), "index dims for a tensor of shape"),
    ],
)
def test_malformed_spec_is_rejected(build: Callable[[], object], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        build()


def test_param_slice_shape() -> None:
    assert ParamSlice((4, 3, 5), ((1, 2), None, (0,))).shape == (2, 3, 1)
