"""The deployed model: folded BatchNorm, int8 weights and activations, exported weights."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch

from fedhar.data.synthetic import SyntheticConfig
from fedhar.data.users import SyntheticUsers
from fedhar.deploy.device_model import DeployedModel, deploy_float, deploy_int8, fold_batchnorm
from fedhar.deploy.footprint import dequantized, export_int8, inference_memory
from fedhar.metrics import confusion_matrix, macro_f1
from fedhar.models import MODEL_NAMES, build_model, count_parameters
from fedhar.train import TrainConfig, evaluate, train_local
from tests.fedhar.deploy.conftest import CHANNELS, WINDOW, warmed


@pytest.mark.parametrize("name", MODEL_NAMES)
def test_folding_batchnorm_keeps_the_eval_outputs(name) -> None:
    model = warmed(name)
    x = torch.randn(8, CHANNELS, WINDOW)
    folded = fold_batchnorm(model)
    assert not any(isinstance(m, torch.nn.BatchNorm1d) for m in folded.modules())
    with torch.no_grad():
        torch.testing.assert_close(folded(x), model(x), atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("name", ["microbi_convlstm", "dscnn"])
def test_int8_model_of_a_trained_network_is_within_half_a_point_of_float(name) -> None:
    users = SyntheticUsers(SyntheticConfig(num_users=4, seconds_per_user=120, seed=0))
    train = users.windows_of_users(users.users[:3])
    test = users.windows_of(users.users[3])
    torch.manual_seed(0)
    model = build_model(name, train.x.shape[1], train.num_classes)
    train_local(model, train.x, train.y, TrainConfig(epochs=3, batch_size=32, lr=0.05), seed=0)
    model.eval()
    k = train.num_classes
    float_f1 = evaluate(model, test.x, test.y, k).macro_f1
    int8 = deploy_int8(model, train.x[:256]).logits(test.x).argmax(axis=1)
    int8_f1 = macro_f1(confusion_matrix(test.y, int8, k))
    assert float_f1 > 0.5  # the network learned something for int8 to keep
    assert abs(float_f1 - int8_f1) <= 0.005


def test_export_holds_int8_weights_that_reproduce_the_device_model() -> None:
    model = warmed("microbi_convlstm")
    device = deploy_int8(model, np.random.default_rng(0).normal(size=(32, CHANNELS, WINDOW)))
    export = export_int8(device)
    assert export.tensors["conv1.weight"].dtype == np.int8
    assert export.tensors["conv1.bias"].dtype == np.int32  # the folded BatchNorm's shift
    assert export.tensors["lstm.weight_hh_l0"].dtype == np.int8
    weights = {n: p for n, p in device.module.named_parameters() if "weight" in n}
    state = dequantized(export)
    for name, param in weights.items():  # within half a quantization step of the float weight
        step = torch.from_numpy(export.tensors[f"{name}.scale"]).reshape(
            -1, *[1] * (param.dim() - 1)
        )
        assert torch.all((state[name] - param.detach()).abs() <= step / 2 + 1e-7)
    module = copy.deepcopy(device.module)  # the same observers, the exported weights
    with torch.no_grad():
        for param in module.parameters():
            param.zero_()
    module.load_state_dict(state, strict=False)
    restored = DeployedModel(module, device.bits)
    x = np.random.default_rng(1).normal(size=(16, CHANNELS, WINDOW)).astype(np.float32)
    np.testing.assert_allclose(restored.logits(x), device.logits(x), atol=1e-4)


def test_int8_flash_is_a_quarter_of_float_and_under_the_23_kb_anchor(tmp_path) -> None:
    model = warmed("microbi_convlstm")
    export = export_int8(deploy_int8(model, np.ones((4, CHANNELS, WINDOW), np.float32)))
    float_bytes = 4 * count_parameters(model)
    assert export.flash_bytes < 0.4 * float_bytes
    assert export.flash_bytes < 23 * 1024
    export.save(tmp_path / "model.npz")
    with np.load(tmp_path / "model.npz") as saved:
        assert sum(saved[name].nbytes for name in saved.files) == export.flash_bytes


def test_int8_inference_needs_less_ram_than_float() -> None:
    model = warmed("dscnn")
    int8 = inference_memory(deploy_int8(model, np.ones((4, CHANNELS, WINDOW), np.float32)),
                            CHANNELS, WINDOW)  # fmt: skip
    as_float = inference_memory(deploy_float(model), CHANNELS, WINDOW)
    assert int8.peak_bytes < as_float.peak_bytes / 2
    stem_output = 32 * WINDOW  # int8 bytes of the widest activation, the stem's output
    assert int8.front_working_bytes >= stem_output
    assert int8.peak_bytes >= int8.input_bytes + int8.feature_bytes
    assert int8.input_bytes == CHANNELS * WINDOW * 2


def test_each_tensor_has_one_grid_and_relus_are_fused() -> None:
    model = warmed("microbi_convlstm")
    device = deploy_int8(model, np.random.default_rng(0).normal(size=(32, CHANNELS, WINDOW)))
    conv1, conv2, lstm = device.module.conv1, device.module.conv2, device.module.lstm
    scale, zero = conv1.output_observer.qparams()
    assert int(zero) == 0  # the ReLU after conv1 is its output clamp
    assert torch.equal(conv2.input_observer.qparams()[0], scale)  # conv2 reads conv1's grid
    assert torch.equal(lstm.input_observer.qparams()[0], conv2.output_observer.qparams()[0])
    with torch.no_grad():  # the fused ReLU and the shared grids change no decision of note
        x = torch.from_numpy(np.random.default_rng(1).normal(size=(64, CHANNELS, WINDOW)))
        float_logits = deploy_float(model).logits(x.float().numpy())
    agree = (device.logits(x.float().numpy()).argmax(1) == float_logits.argmax(1)).mean()
    assert agree > 0.9
