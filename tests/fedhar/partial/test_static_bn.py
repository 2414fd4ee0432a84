"""Static BatchNorm: sums of BatchNorm inputs give the moments a direct computation gives."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from fedhar.models import build_model
from fedhar.partial.evaluate import evaluate_widths, width_key
from fedhar.partial.spec import extract, slice_width
from fedhar.partial.static_bn import (
    MomentSums,
    batchnorm_sums,
    install_scaler,
    is_statistic,
    merge_sums,
    statistics_from_sums,
    width_sums,
)
from fedhar.quant.qat import QLSTM, QuantConfig, prepare_qat
from fedhar.train import evaluate

C, K, T = 6, 5, 32
MODEL = "microbi_convlstm"


def _windows(n: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return (rng.normal(size=(n, C, T)) * 2.0 + 0.5).astype(np.float32)


def _model(seed: int = 0, width: float = 1.0) -> torch.nn.Module:
    torch.manual_seed(seed)
    model = build_model(MODEL, C, K, width)
    with torch.no_grad():  # non-trivial affine parameters, so bn2's inputs depend on bn1's
        for bn in (model.bn1, model.bn2):
            bn.weight.uniform_(0.5, 1.5)
            bn.bias.uniform_(-0.5, 0.5)
    return model


def test_first_batchnorm_statistics_are_the_moments_of_the_first_conv_output() -> None:
    model, x = _model(), _windows(20)
    stats = statistics_from_sums(batchnorm_sums(model, x, batch_size=7))
    with torch.no_grad():
        out = model.conv1(torch.as_tensor(x)).to(torch.float64)  # (N, C1, T)
    values = out.transpose(0, 1).flatten(1).numpy()
    np.testing.assert_allclose(stats["bn1.running_mean"], values.mean(1), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(stats["bn1.running_var"], values.var(1, ddof=1), rtol=1e-5)


def test_later_batchnorms_see_upstream_layers_normalized_on_batch_statistics() -> None:
    model, x = _model(), _windows(12)
    stats = statistics_from_sums(batchnorm_sums(model, x, batch_size=12))  # one batch
    with torch.no_grad():
        h = model.conv1(torch.as_tensor(x))
        h = F.batch_norm(h, None, None, model.bn1.weight, model.bn1.bias, training=True)
        h = model.conv2(model.pool1(model.relu1(h))).to(torch.float64)
    values = h.transpose(0, 1).flatten(1).numpy()
    np.testing.assert_allclose(stats["bn2.running_mean"], values.mean(1), rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(stats["bn2.running_var"], values.var(1, ddof=1), rtol=1e-4)


def test_merged_client_sums_equal_the_sums_over_all_windows_together() -> None:
    model = _model()
    a, b = _windows(8, seed=1), _windows(12, seed=2)
    merged = merge_sums([batchnorm_sums(model, a, 4), batchnorm_sums(model, b, 4)])
    pooled = batchnorm_sums(model, np.concatenate([a, b]), 4)  # same batches: 4 divides 8
    assert set(merged) == set(pooled) == {"bn1", "bn2"}
    for name in merged:
        assert merged[name].count == pooled[name].count == 20 * (T if name == "bn1" else T // 2)
        torch.testing.assert_close(merged[name].total, pooled[name].total)
        torch.testing.assert_close(merged[name].squares, pooled[name].squares)


def test_computing_sums_leaves_the_model_unchanged() -> None:
    model = _model()
    model.train()
    before = copy.deepcopy(model.state_dict())
    batchnorm_sums(model, _windows(10), 5)
    assert model.training and all(m.training for m in model.modules())
    for name, tensor in model.state_dict().items():
        torch.testing.assert_close(tensor, before[name], rtol=0, atol=0)


def test_narrow_first_statistics_are_the_leading_channels_of_the_full_ones() -> None:
    model, x = _model(), _windows(10)
    sums = width_sums(MODEL, model.state_dict(), [0.25, 1.0], x, 5)
    narrow, full = statistics_from_sums(sums[0.25]), statistics_from_sums(sums[1.0])
    channels = narrow["bn1.running_mean"].shape[0]
    assert channels < full["bn1.running_mean"].shape[0]
    for entry in ("bn1.running_mean", "bn1.running_var"):
        torch.testing.assert_close(narrow[entry], full[entry][:channels])


def test_statistics_replace_the_sliced_ones_in_width_evaluation() -> None:
    model, x = _model(), _windows(30)
    y = np.random.default_rng(3).integers(0, K, 30)
    stats = {0.5: statistics_from_sums(width_sums(MODEL, model.state_dict(), [0.5], x, 10)[0.5])}
    scores = evaluate_widths(MODEL, model.state_dict(), [0.5], x, y, K, stats)
    sub = build_model(MODEL, C, K, 0.5)
    sub.load_state_dict(extract(model.state_dict(), slice_width(model, sub, 0.5)) | stats[0.5])
    assert scores[width_key(0.5, "loss")] == evaluate(sub, x, y, K).loss
    plain = evaluate_widths(MODEL, model.state_dict(), [0.5], x, y, K)
    assert plain[width_key(0.5, "loss")] != scores[width_key(0.5, "loss")]


def test_statistics_need_two_values_and_sums_need_matching_channels() -> None:
    one = MomentSums(1.0, torch.zeros(3, dtype=torch.float64), torch.zeros(3, dtype=torch.float64))
    with pytest.raises(ValueError, match="cannot give a variance"):
        statistics_from_sums({"bn1": one})
    other = MomentSums(4.0, torch.zeros(2, dtype=torch.float64), torch.ones(2, dtype=torch.float64))
    with pytest.raises(ValueError, match="channels"):
        one + other
    with pytest.raises(ValueError, match="different BatchNorm layers"):
        merge_sums([{"bn1": one}, {"bn2": one}])


def test_statistic_names_are_the_running_buffers_only() -> None:
    names = _model().state_dict()
    assert {n for n in names if is_statistic(n)} == {
        f"{bn}.{s}" for bn in ("bn1", "bn2")
        for s in ("running_mean", "running_var", "num_batches_tracked")
    }  # fmt: skip


def test_scaler_divides_hidden_outputs_by_the_width_in_training_only() -> None:
    torch.manual_seed(0)
    width = 0.5
    plain = build_model("dscnn", C, K, width)
    scaled = copy.deepcopy(plain)
    install_scaler(scaled, width)
    conv = next(m for m in scaled.modules() if isinstance(m, torch.nn.Conv1d))
    seen: list[torch.Tensor] = []
    conv.register_forward_hook(lambda _m, _i, out: seen.append(out))  # after the scaler's hook
    x = torch.as_tensor(_windows(4))
    plain.eval(), scaled.eval()
    torch.testing.assert_close(scaled(x), plain(x), rtol=0, atol=0)
    scaled.train()
    scaled(x)
    raw = conv._conv_forward(x, conv.weight, conv.bias)
    torch.testing.assert_close(seen[-1], raw / width)


def test_scaler_divides_the_lstm_state_the_head_reads() -> None:
    torch.manual_seed(0)
    model = build_model(MODEL, C, K, 0.5)
    features = torch.randn(3, model.lstm.input_size, 8)
    expected = model.temporal(features)
    install_scaler(model, 0.5)
    model.train()
    _, (h_n, _) = model.lstm(features.transpose(1, 2))
    unscaled = torch.nn.LSTM.forward(model.lstm, features.transpose(1, 2))[1][0]
    torch.testing.assert_close(h_n, unscaled / 0.5)
    model.eval()
    torch.testing.assert_close(model.temporal(features), expected)


def test_scaler_survives_quantization_aware_preparation() -> None:
    torch.manual_seed(0)
    model = build_model(MODEL, C, K, 0.5)
    prepared = prepare_qat(model, QuantConfig())
    scaled = prepare_qat(model, QuantConfig())
    scaled.load_state_dict(prepared.state_dict())
    install_scaler(model, 0.5)
    scaled = prepare_qat(model, QuantConfig())  # hooks installed before preparation
    assert isinstance(scaled.lstm, QLSTM)
    features = torch.randn(3, 8, scaled.lstm.input_size)
    scaled.train(), prepared.train()
    _, (h_scaled, _) = scaled.lstm(features)
    _, (h_plain, _) = prepared.lstm(features)
    torch.testing.assert_close(h_scaled, h_plain / 0.5)


def test_full_width_scaler_is_a_no_op_and_bad_widths_are_refused() -> None:
    model = build_model("dscnn", C, K)
    install_scaler(model, 1.0)
    assert not any(m._forward_hooks for m in model.modules())
    with pytest.raises(ValueError, match=r"\(0, 1\]"):
        install_scaler(model, 1.5)
