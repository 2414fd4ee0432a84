"""Bytes per update and encode/decode time of each codec setting, for each bundled model.

Run: `python -m experiments.bench.codec`. The delta is a seeded random perturbation of the
float parameters and buffers (integer buffers such as num_batches_tracked are not sent).
Two baselines: "vs fp32" is the same compact framing with raw float32 values; "vs record" is
the plain ArrayRecord of the full state (float32 arrays, integer buffers and numpy headers),
which is what an uncompressed client sends.
"""

from __future__ import annotations

import time

import numpy as np
import torch

from fedhar.models import MODEL_NAMES, build_model
from fedhar.transport.codec import CodecConfig, decode_update, encode_update
from fedhar.transport.payload import from_bytes, to_bytes
from fedhar.wire import arrays_nbytes, state_to_arrays

SETTINGS = {
    "fp32": CodecConfig(bits=32),
    "int8": CodecConfig(bits=8),
    "int4": CodecConfig(bits=4),
    "int2": CodecConfig(bits=2),
    "int8+top10%": CodecConfig(bits=8, topk_fraction=0.1),
}
REPEATS = 5  # timing repeats; the median is reported


def _time_round_trip(delta: dict[str, torch.Tensor], cfg: CodecConfig) -> tuple[int, float]:
    """Payload size and median seconds to encode+serialize+parse+decode one update."""
    expected = {k: tuple(v.shape) for k, v in delta.items()}
    times, size = [], 0
    for r in range(REPEATS):
        start = time.perf_counter()
        blob = to_bytes(encode_update(delta, cfg, np.random.default_rng(r))[0])
        decode_update(from_bytes(blob, expected), expected)
        times.append(time.perf_counter() - start)
        size = len(blob)
    return size, float(np.median(times))


def main() -> None:
    """Print one table row per (model, setting)."""
    torch.manual_seed(0)
    columns = ("model", "setting", "params", "bytes", "vs fp32", "vs record", "time vs fp32")
    widths = (18, 14, 8, 10, 9, 11, 14)
    print(
        "".join(
            f"{c:<{w}}" if i < 2 else f"{c:>{w}}"
            for i, (c, w) in enumerate(zip(columns, widths, strict=True))
        )
    )
    for name in MODEL_NAMES:
        state = build_model(name, in_channels=6, num_classes=8).state_dict()
        record = arrays_nbytes(state_to_arrays(state))
        delta = {k: 0.01 * torch.randn_like(v) for k, v in state.items() if v.is_floating_point()}
        params = sum(v.numel() for v in delta.values())
        base_size, base_time = _time_round_trip(delta, SETTINGS["fp32"])
        for label, cfg in SETTINGS.items():
            size, seconds = _time_round_trip(delta, cfg)
            print(
                f"{name:<18}{label:<14}{params:>8}{size:>10}{base_size / size:>8.2f}x"
                f"{record / size:>10.2f}x{seconds / base_time:>13.1f}x"
            )


if __name__ == "__main__":
    main()
