"""Quantization-aware training: fake quant, integer reference, observers, QAS, key mapping."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from fedhar.quant.qat import (
    QLSTM,
    QConv1d,
    QLinear,
    QuantConfig,
    calibrate,
    fake_quantize_weight,
    integer_forward,
    integer_scales,
    prepare_qat,
    quantized_layers,
    scale_gradients,
)


class TinyHar(nn.Module):
    """Conv -> BN -> ReLU -> bidirectional LSTM -> head, like the bundled models."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv1d(3, 8, 5, padding=2)
        self.bn = nn.BatchNorm1d(8)
        self.lstm = nn.LSTM(8, 6, batch_first=True, bidirectional=True)
        self.head = nn.Linear(12, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, C, T) -> (B, K)
        h = torch.relu(self.bn(self.conv(x)))  # (B, 8, T)
        out, _ = self.lstm(h.transpose(1, 2))  # (B, T, 12)
        return self.head(out.mean(dim=1))


def toy_problem(seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    y = torch.randint(0, 3, (48,), generator=g)
    t = torch.linspace(0, 6.28, 24)
    x = torch.sin(t * (1 + y[:, None, None].float())) + 0.1 * torch.randn(48, 3, 24, generator=g)
    return x, y


@pytest.mark.parametrize("bits", [4, 8])
@pytest.mark.parametrize(
    "layer",
    [
        lambda: nn.Conv1d(6, 8, 5, padding=2),
        lambda: nn.Conv1d(8, 8, 3, stride=2, dilation=2, groups=2),
        lambda: nn.Linear(10, 5),
    ],
)
def test_fake_quant_matches_integer_reference(layer, bits: int) -> None:  # type: ignore[no-untyped-def]
    torch.manual_seed(0)
    float_layer = layer()
    x = (
        torch.randn(64, float_layer.in_features)
        if isinstance(float_layer, nn.Linear)
        else (torch.randn(4, float_layer.in_channels, 32))
    )
    q = prepare_qat(nn.Sequential(float_layer), QuantConfig(bits, bits))[0]
    calibrate(q, [x])
    q.eval()
    step = q.output_observer.qparams()[0]
    diff = (integer_forward(q, x) - q(x)).abs()
    assert diff.max() <= step * 1.001  # at most one output step, from bias/tie rounding
    assert (diff > 1e-6).float().mean() < 0.05
    assert q(x).unique().numel() <= 2**bits


def test_weight_fake_quant_levels_and_ste_gradient() -> None:
    w = torch.randn(4, 3, 5, requires_grad=True)
    for bits in (4, 8):
        wq = fake_quantize_weight(w, bits)
        qmax = 2 ** (bits - 1) - 1
        scale = w.detach().abs().amax(dim=(1, 2)) / qmax
        levels = wq.detach() / scale[:, None, None]
        assert torch.allclose(levels, levels.round(), atol=1e-4)
        assert levels.abs().max() <= qmax + 1e-4
        assert (wq - w).abs().max() <= scale.max() / 2 + 1e-6
    (fake_quantize_weight(w, 4) * 3).sum().backward()
    assert w.grad is not None and torch.allclose(w.grad, torch.full_like(w, 3.0))


def test_state_dict_keys_round_trip() -> None:
    model = TinyHar()
    qat = prepare_qat(model, QuantConfig())
    assert list(qat.state_dict()) == list(model.state_dict())
    assert isinstance(qat.conv, QConv1d) and isinstance(qat.lstm, QLSTM)
    assert isinstance(qat.head, QLinear) and isinstance(qat.bn, nn.BatchNorm1d)
    other = TinyHar()
    qat.load_state_dict(other.state_dict())
    back = TinyHar()
    back.load_state_dict(qat.state_dict())
    for k, v in other.state_dict().items():
        assert torch.equal(back.state_dict()[k], v)
    assert not isinstance(model.conv, QConv1d)  # the float model is untouched


def test_lstm_fake_quant_is_close_to_float_and_gradients_flow() -> None:
    torch.manual_seed(1)
    model = TinyHar()
    qat = prepare_qat(model, QuantConfig(8, 8))
    x, y = toy_problem()
    calibrate(qat, [x])
    model.eval()
    qat.eval()
    assert torch.allclose(qat(x), model(x), atol=0.1)
    assert not torch.equal(qat(x), model(x))
    qat.train()
    nn.functional.cross_entropy(qat(x), y).backward()
    for name, p in qat.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, name


def test_calibrate_observers_without_touching_batchnorm() -> None:
    qat = prepare_qat(TinyHar(), QuantConfig(observer_momentum=None))
    x, _ = toy_problem()
    qat.train()
    before = qat.bn.running_mean.clone()
    assert calibrate(qat, [x[:24], x[24:]]) == 2
    assert qat.training and torch.equal(qat.bn.running_mean, before)
    obs = qat.conv.input_observer
    assert obs.min_val == x.min() and obs.max_val == x.max()


def train_toy(model: nn.Module, steps: int = 60) -> list[float]:
    x, y = toy_problem()
    if isinstance(model.head, QLinear):
        calibrate(model, [x])
    opt = torch.optim.Adam(model.parameters(), lr=0.02)
    losses = []
    for _ in range(steps):
        opt.zero_grad()
        loss = nn.functional.cross_entropy(model(x), y)
        loss.backward()
        scale_gradients(model)
        opt.step()
        losses.append(loss.item())
    return losses


@pytest.mark.parametrize("weight_bits", [4, 8])
def test_qat_model_trains_about_as_well_as_float(weight_bits: int) -> None:
    torch.manual_seed(0)
    float_losses = train_toy(TinyHar())
    torch.manual_seed(0)
    qat = prepare_qat(TinyHar(), QuantConfig(weight_bits=weight_bits, activation_bits=8))
    qat_losses = train_toy(qat)
    assert qat_losses[-1] < 0.1 * qat_losses[0]
    assert qat_losses[-1] < float_losses[-1] + 0.1


def test_qas_restores_gradient_to_weight_ratio() -> None:
    torch.manual_seed(0)
    x, y = toy_problem()
    ratios, model = {}, TinyHar()
    for qas in (True, False):
        qat = prepare_qat(model, QuantConfig(qas=qas, observer_momentum=None))
        calibrate(qat, [x])
        nn.functional.cross_entropy(qat(x), y).backward()
        float_grad = qat.head.weight.grad.clone()
        s = integer_scales(qat.head)[0][1][:, None]  # (C, 1)
        scale_gradients(qat)
        # the device's integer-domain step is the float-unit step divided by s
        w_int, g_int = qat.head.weight / s, qat.head.weight.grad / s
        ratios[qas] = w_int.norm(dim=1) / g_int.norm(dim=1)  # per output channel
        float_ratio = qat.head.weight.norm(dim=1) / float_grad.norm(dim=1)
        if qas:
            assert torch.allclose(qat.head.weight.grad, float_grad, rtol=1e-5, atol=1e-9)
            assert torch.allclose(ratios[qas], float_ratio, rtol=1e-4)
        else:
            assert torch.allclose(qat.head.weight.grad, float_grad * s**2, atol=1e-12)
    assert torch.all(ratios[False] > 100 * ratios[True])  # without QAS the update is far too small


def test_bit_widths_and_layer_types_are_checked() -> None:
    with pytest.raises(ValueError, match=r"weight_bits=3 .*\(4, 8, 32\)"):
        QuantConfig(weight_bits=3)
    with pytest.raises(ValueError, match=r"activation_bits=2"):
        QuantConfig(activation_bits=2)
    with pytest.raises(ValueError, match="Conv2d cannot be quantized; supported: Conv1d"):
        prepare_qat(nn.Sequential(nn.Conv2d(1, 2, 3)), QuantConfig())
    with pytest.raises(ValueError, match="GRU"):
        prepare_qat(nn.Sequential(nn.GRU(3, 4)), QuantConfig())
    with pytest.raises(ValueError, match="already fake-quantized"):
        prepare_qat(prepare_qat(TinyHar(), QuantConfig()), QuantConfig())
    with pytest.raises(ValueError, match="QConv1d and QLinear"):
        integer_forward(prepare_qat(TinyHar(), QuantConfig()).lstm, torch.zeros(1, 2, 8))


def test_32_bits_means_no_qat() -> None:
    model = TinyHar()
    qat = prepare_qat(model, QuantConfig(32, 32))
    assert list(quantized_layers(qat)) == []
    x, _ = toy_problem()
    model.eval()
    qat.eval()
    assert torch.equal(qat(x), model(x))


@pytest.mark.parametrize("name", ["microbi_convlstm", "dscnn", "deepconvlstm"])
def test_bundled_models_prepare_and_track_the_float_model(name: str) -> None:
    from fedhar.models import build_model

    torch.manual_seed(0)
    model = build_model(name, in_channels=6, num_classes=4, width=0.5).eval()
    qat = prepare_qat(model, QuantConfig(weight_bits=8, activation_bits=8))
    assert list(qat.state_dict()) == list(model.state_dict())
    swapped = {type(m).__name__ for _, m in quantized_layers(qat)}
    floats = {type(m).__name__ for m in model.modules()} & {"Conv1d", "Linear", "LSTM"}
    assert swapped == {f"Q{n}" for n in floats}  # every quantizable layer, none left in float
    x = torch.randn(64, 6, 32)
    calibrate(qat, [x])
    qat.eval()
    with torch.no_grad():
        reference, quantized = model(x), qat(x)
    # int8 rounding moves logits by a small fraction of their spread and keeps most decisions
    assert (quantized - reference).abs().max() < 0.1 * reference.std() * reference.shape[1]
    assert (quantized.argmax(1) == reference.argmax(1)).float().mean() > 0.9
    qat.train()
    qat(x[:8]).sum().backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in qat.parameters())
