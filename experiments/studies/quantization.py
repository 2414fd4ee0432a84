"""Quantization-aware local training and compressed update transport, side by side.

Runs one federated experiment per setting (same seed, data and fleet) and writes a markdown
table of final macro-F1 (held-out users, and the mean over clients on their own test split),
uplink bytes per round, and the reduction factor against the fp32 run:

- fp32: float local training, plain ArrayRecord uplink; every setting's final model is also
  scored on the held-out users as simulated int8 inference (``fedhar.quant.integer``);
- QAT int8 / QAT int4: fake-quantized local training (weights and activations), plain uplink;
- fp32 / int8 / int4 / 2-bit transport: float local training, updates through the
  compression wrapper. "fp32 transport" is the codec's dense float32 framing: the fair
  baseline for the codec's own framing (the first factor column); "vs record" compares with
  the plain ArrayRecord uplink of the fp32 run (float arrays, integer buffers, numpy headers).

Run: `python -m experiments.studies.quantization --out outputs/quantization` (add
`--dataset sp_sw_har` for the real data, and Hydra overrides after `--`).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig, OmegaConf

from experiments.compose import federation_spec, load_config
from experiments.run import run_experiment
from experiments.sinks import read_metrics
from fedhar.checkpoint import load_checkpoint
from fedhar.federation import load_federation
from fedhar.models import build_model
from fedhar.quant.integer import evaluate_integer
from fedhar.train import evaluate

QUICK = [  # a small federation that runs in minutes on two cores
    "fleet=all_phone",  # one device class: QAT bit widths come from the overrides below
    "tracking.progress=false",
    "tracking.plots=false",
    "resume=false",
]
FP32 = ["quant.enabled=false"]
SETTINGS: dict[str, list[str]] = {
    "fp32": FP32,
    "QAT int8": ["quant.weight_bits=8", "quant.activation_bits=8"],
    "QAT int4": ["quant.weight_bits=4", "quant.activation_bits=4"],
    **{
        f"{label} transport": [
            *FP32,
            "wrappers=[compression]",
            f"wrappers.compression.server.bits={bits}",
        ]
        for label, bits in (("fp32", 32), ("int8", 8), ("int4", 4), ("2-bit", 2))
    },
}
TABLE_FILE = "quantization.md"


CALIBRATION_WINDOWS = 256  # training windows that set the int8 activation ranges


def integer_scores(run_dir: Path) -> dict[str, float]:
    """Held-out macro-F1 of a run's final global model in float and as simulated int8."""
    cfg = OmegaConf.load(run_dir / "config.yaml")
    if not isinstance(cfg, DictConfig):
        raise ValueError(f"{run_dir}/config.yaml is not a run config (a mapping)")
    federation = load_federation(federation_spec(cfg))
    checkpoint = load_checkpoint(run_dir)
    if checkpoint is None:
        raise ValueError(f"{run_dir} has no checkpoint to score")
    model = build_model(
        cfg.model.name, federation.in_channels, federation.num_classes, cfg.model.width
    )
    model.load_state_dict({k: torch.from_numpy(v) for k, v in checkpoint.arrays.items()})
    holdout, k = federation.holdout, federation.num_classes
    calibration = federation.client(0).train.x[:CALIBRATION_WINDOWS]
    return {
        "heldout_f1_float": evaluate(model, holdout.x, holdout.y, k).macro_f1,
        "heldout_f1_int8": evaluate_integer(model, calibration, holdout.x, holdout.y, k).macro_f1,
    }


def measure(run_dir: Path, summary: dict[str, Any]) -> dict[str, float]:
    """Final scores (float and simulated int8 inference) and mean bytes per round of one run."""
    rows = read_metrics(run_dir)
    fp32_framing = [r.get("extra", {}).get("compression/bytes-up-fp32") for r in rows]
    return {
        "heldout_f1": summary["heldout_macro_f1"],
        "user_f1": summary["user_mean_f1"],
        **integer_scores(run_dir),
        "up_per_round": sum(r["bytes_up"] for r in rows) / len(rows),
        "down_per_round": sum(r["bytes_down"] for r in rows) / len(rows),
        "fp32_framing_per_round": (
            sum(fp32_framing) / len(rows) if all(v is not None for v in fp32_framing) else 0.0
        ),
    }


def table(results: dict[str, dict[str, float]]) -> str:
    """Markdown table; factors compare uplink bytes per round with the fp32 runs."""
    record = results["fp32"]["up_per_round"]
    framing = results.get("fp32 transport", {}).get("up_per_round", 0.0)
    lines = [
        "| setting | held-out macro-F1 | held-out, int8 inference | per-user mean macro-F1 "
        "| uplink bytes/round | reduction vs fp32 (same framing) "
        "| reduction vs fp32 (ArrayRecord) |",
        "|---|---|---|---|---|---|---|",
    ]
    for name, r in results.items():
        same = f"{framing / r['up_per_round']:.2f}x" if "transport" in name and framing else "-"
        lines.append(
            f"| {name} | {r['heldout_f1']:.4f} | {r['heldout_f1_int8']:.4f} | {r['user_f1']:.4f} "
            f"| {r['up_per_round']:.0f} "
            f"| {same} | {record / r['up_per_round']:.2f}x |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    """Run every setting and print the table (also saved in the output folder)."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("outputs/quantization"))
    parser.add_argument("--dataset", default="synthetic", help="synthetic or sp_sw_har")
    parser.add_argument("--only", nargs="*", default=None, help="subset of settings to run")
    parser.add_argument("overrides", nargs="*", help="Hydra overrides, e.g. num_rounds=5")
    argv = sys.argv[1:] if argv is None else argv
    args = parser.parse_args(argv)
    unknown = set(args.only or ()) - set(SETTINGS)
    if unknown:
        parser.error(f"unknown settings {sorted(unknown)}; choose from {list(SETTINGS)}")
    torch.set_num_threads(1)
    results: dict[str, dict[str, float]] = {}
    for name, overrides in SETTINGS.items():
        if args.only and name not in args.only and name not in ("fp32", "fp32 transport"):
            continue
        run_dir = args.out / name.replace(" ", "_")
        cfg = load_config([*QUICK, f"dataset={args.dataset}", *overrides, *args.overrides])
        results[name] = measure(run_dir, run_experiment(cfg, run_dir))
        print(f"{name}: {json.dumps(results[name])}", flush=True)
    text = table(results)
    command = " ".join(["python -m experiments.studies.quantization", *argv])
    (args.out / TABLE_FILE).write_text(f"`{command}`\n\n{text}\n")
    (args.out / "quantization.json").write_text(json.dumps(results, indent=2))
    print(text)


if __name__ == "__main__":
    main()
