"""On-device deployment report: the federated model as each device class would run it.

From a finished run directory (``--run-dir``), or after running one (``--out`` and Hydra
overrides), every client's test recording is rebuilt as a stream, recorded by each device
class's sensor model, and classified window by window by the int8 model (BatchNorm folded,
activations calibrated on the held-out users' windows, streaming front end). Per device class:

- footprint: int8 macro-F1 against the float model, flash bytes of the exported weights,
  peak inference RAM, MACs and non-MAC operations per window (streaming and batch), latency
  and compute energy per hour;
- smoothing: macro-F1 and spurious transitions per minute, raw, majority vote, HMM filter;
- offload: the cloud model classifies windows whose int8 confidence is at or below a
  threshold (the run's float global model, or with ``--cloud-run`` the global model of another
  run on the same federation, e.g. a larger DeepConvLSTM); macro-F1, offload rate, uplink
  bytes and radio energy per hour over thresholds, and the int8 model's calibration (ECE);
- segment consensus (TSN) on activity bouts: bout macro-F1 against K and snippet memory.

Writes devices.csv, offload.csv, consensus.csv, summary.json, summary.md, model_int8_<device>.npz,
offload.png, reliability.png and consensus.png.

    python -m experiments.studies.deployment --out outputs/deploy-synthetic -- num_rounds=10
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import matplotlib
import numpy as np
import torch
from omegaconf import DictConfig

from experiments.compose import CONFIG_DIR, federation_spec, fleet_config, load_config, model_shape
from experiments.report import global_model, run_config
from experiments.run import run_experiment
from experiments.studies.adaptation import write_csv
from fedhar.deploy.consensus import bouts, segment_consensus
from fedhar.deploy.device_model import DeployedModel, deploy_float, deploy_int8
from fedhar.deploy.footprint import export_int8, inference_memory
from fedhar.deploy.offload import (
    SAMPLE_BYTES,
    expected_calibration_error,
    offload_curve,
    softmax,
    window_bytes,
)
from fedhar.deploy.smoothing import (
    forward_filter,
    majority_vote,
    spurious_transitions,
    transition_matrix,
)
from fedhar.deploy.streaming import batch_logits, front_end_geometry, stream_logits
from fedhar.deploy.streams import Stream, cut_windows, infer_stride, record_stream, streams_of
from fedhar.device.costs import compute_seconds
from fedhar.device.profiles import (
    DeviceProfile,
    client_seed,
    load_catalogue,
    training_budget_bytes,
)
from fedhar.device.sensors import SensorVariability
from fedhar.federation import Federation, open_federation
from fedhar.metrics import accuracy, confusion_matrix, macro_f1
from fedhar.models.ops import OpCounts
from fedhar.seeding import derive_seed

matplotlib.use("Agg")
import matplotlib.pyplot as plt

DEFAULT_DEVICES = ("nrf52840", "esp32s3", "apollo4_plus", "wearos_watch", "android_phone")
THRESHOLDS = tuple(float(t) for t in np.round(np.linspace(0.0, 1.0, 21), 2))
SEGMENTS = (1, 2, 3, 5)  # snippets per bout; bouts shorter than the largest are left out
VOTE_HISTORIES = (3, 5)  # windows a majority vote looks back over; 3 outvotes a one-window blip
ANCHOR_FLASH_BYTES = 23 * 1024  # MicroBi-ConvLSTM's int8 model, as its paper reports it
MAX_INT8_DROP_POINTS = 0.5  # int8 macro-F1 within this many points of float, either way


@dataclass
class DeviceRun:
    """One device class's predictions over every client's test streams."""

    profile: DeviceProfile
    device: list[np.ndarray] = field(default_factory=list)  # int8 softmax per stream (W, K)
    reference: list[np.ndarray] = field(default_factory=list)  # the same model in float
    cloud: list[np.ndarray] = field(default_factory=list)  # the cloud model's softmax
    labels: list[np.ndarray] = field(default_factory=list)  # (W,) per stream
    seconds: float = 0.0  # recorded time over all streams
    streaming: OpCounts = field(default_factory=OpCounts)
    batch: OpCounts = field(default_factory=OpCounts)
    stream_gap: float = 0.0  # largest |streaming - batch| logit difference

    def pooled(self, name: str) -> np.ndarray:
        return np.concatenate(getattr(self, name))

    @property
    def windows(self) -> int:
        return sum(len(y) for y in self.labels)


def deployment_hop(stride: int, model: DeployedModel) -> int:
    """The dataset's stride, rounded down to the front end's frame stride so frames are reused."""
    frame = front_end_geometry(model.layers()).stride
    return max(frame, stride // frame * frame)


def record(profile: DeviceProfile, streams: list[Stream], variability: SensorVariability,
           seed: int) -> list[Stream]:  # fmt: skip
    """The streams as each user's instance of `profile` records them."""
    recorded = []
    for index, stream in enumerate(streams):
        device_seed = client_seed(f"{stream.user}@{profile.name}", seed)
        recorded.append(record_stream(stream, profile, variability, device_seed,
                                      derive_seed(device_seed, index)))  # fmt: skip
    return recorded


def run_device(
    profile: DeviceProfile, streams: list[Stream], models: dict[str, DeployedModel],
    window_length: int, hop: int,
) -> DeviceRun:  # fmt: skip
    """The recorded streams classified on and off the device."""
    run = DeviceRun(profile)
    for recorded in streams:
        x, labels = cut_windows(recorded, window_length, hop)
        if len(x) == 0:
            continue
        logits = stream_logits(models["device"], recorded.x, window_length, hop, run.streaming)
        reference = batch_logits(models["device"], recorded.x, window_length, hop, run.batch)
        run.stream_gap = max(run.stream_gap, float(np.abs(logits - reference).max()))
        run.device.append(softmax(logits))
        run.reference.append(softmax(models["float"].logits(x)))
        run.cloud.append(softmax(models["cloud"].logits(x)))
        run.labels.append(labels)
        run.seconds += recorded.seconds
    return run


def _scores(labels: np.ndarray, predictions: np.ndarray, num_classes: int) -> tuple[float, float]:
    confusion = confusion_matrix(labels, predictions, num_classes)
    return macro_f1(confusion), accuracy(confusion)


def _vote(probabilities: np.ndarray, history: int) -> np.ndarray:
    return majority_vote(probabilities.argmax(axis=1), history)


def smoothing_row(run: DeviceRun, transition: np.ndarray, num_classes: int) -> dict[str, float]:
    """Macro-F1 and spurious transitions per minute, raw and with each smoother."""
    methods: dict[str, Callable[[np.ndarray], np.ndarray]] = {"raw": lambda p: p.argmax(axis=1)}
    for n in VOTE_HISTORIES:
        methods[f"vote{n}"] = partial(_vote, history=n)
    methods["hmm"] = lambda p: forward_filter(p, transition).argmax(axis=1)
    minutes = run.seconds / 60
    row: dict[str, float] = {}
    for name, smooth in methods.items():
        predictions = [smooth(p) for p in run.device]
        row[f"{name}_macro_f1"] = _scores(run.pooled("labels"), np.concatenate(predictions),
                                          num_classes)[0]  # fmt: skip
        spurious = sum(spurious_transitions(p, y) for p, y in zip(predictions, run.labels,
                                                                  strict=True))  # fmt: skip
        row[f"{name}_spurious_per_min"] = spurious / minutes
    truth = sum(int(np.sum(y[1:] != y[:-1])) for y in run.labels)
    row["true_transitions_per_min"] = truth / minutes
    return row


def consensus_rows(run: DeviceRun, num_classes: int, bytes_per_window: int) -> list[dict[str, Any]]:
    """Bout scores for each K of `SEGMENTS` and for dense scoring of every window.

    Bouts and their boundaries come from the labels (known in advance, as in TSN's clips);
    balanced accuracy is the mean recall over the activities the bouts hold.
    """
    spans = [(probs[a:b], int(y[a])) for probs, y in zip(run.device, run.labels, strict=True)
             for a, b in bouts(y) if b - a >= max(SEGMENTS)]  # fmt: skip
    if not spans:
        return []
    truth = np.array([label for _, label in spans])
    lengths = np.array([len(p) for p, _ in spans])
    present = np.unique(truth)
    rows = []
    for k in (*SEGMENTS, None):
        predicted = np.array([segment_consensus(p, k).argmax() for p, _ in spans])
        f1, acc = _scores(truth, predicted, num_classes)
        recall = [np.mean(predicted[truth == c] == c) for c in present]
        held = k if k is not None else float(lengths.mean())
        rows.append({"device": run.profile.name, "segments": "dense" if k is None else k,
                     "bouts": len(spans), "classes": len(present),
                     "bout_balanced_accuracy": float(np.mean(recall)), "bout_accuracy": acc,
                     "bout_macro_f1": f1, "inferences_per_bout": held,
                     "snippet_bytes": held * bytes_per_window})  # fmt: skip
    return rows


def device_row(
    run: DeviceRun, device: DeployedModel, flash_bytes: int, num_classes: int,
    channels: int, window_length: int, windows_per_hour: float,
) -> dict[str, Any]:  # fmt: skip
    """Accuracy, calibration and cost of the int8 model on one device class."""
    profile, labels = run.profile, run.pooled("labels")
    device_probs, float_probs = run.pooled("device"), run.pooled("reference")
    int8_f1, int8_acc = _scores(labels, device_probs.argmax(axis=1), num_classes)
    float_f1, _ = _scores(labels, float_probs.argmax(axis=1), num_classes)
    cloud_f1, _ = _scores(labels, run.pooled("cloud").argmax(axis=1), num_classes)
    streaming, batch = (counts.scaled(1 / run.windows) for counts in (run.streaming, run.batch))
    reuses = streaming.macs < batch.macs  # the device runs whichever costs less
    latency = compute_seconds(profile, streaming if reuses else batch)
    memory = inference_memory(device, channels, window_length)
    return {
        "device": profile.name, "kind": profile.kind, "windows": run.windows,
        "minutes": run.seconds / 60, "float_macro_f1": float_f1, "int8_macro_f1": int8_f1,
        "int8_accuracy": int8_acc, "int8_drop_points": 100 * (float_f1 - int8_f1),
        "int8_within_0.5": abs(100 * (float_f1 - int8_f1)) <= MAX_INT8_DROP_POINTS,
        "int8_ece": expected_calibration_error(device_probs, labels),
        "float_ece": expected_calibration_error(float_probs, labels),
        "cloud_macro_f1": cloud_f1,
        "stream_max_logit_gap": run.stream_gap,
        "macs_batch": batch.macs, "macs_streaming": streaming.macs, "frames_reused": reuses,
        "non_mac_ops_streaming": streaming.compares + streaming.elementwise
        + streaming.nonlinear + streaming.requantize,
        "latency_ms_batch": 1e3 * compute_seconds(profile, batch),
        "latency_ms_streaming": 1e3 * compute_seconds(profile, streaming),
        "latency_ms": 1e3 * latency,
        "compute_energy_j_per_hour": latency * profile.active_power_w * windows_per_hour,
        "ram_peak_bytes": memory.peak_bytes, "ram_budget_bytes": training_budget_bytes(profile),
        "fits_ram": memory.peak_bytes <= training_budget_bytes(profile),
        "flash_bytes": flash_bytes, "fits_flash": flash_bytes <= profile.flash_bytes,
    }  # fmt: skip


def plot(devices: list[DeviceRun], offload: list[dict[str, Any]], consensus: list[dict[str, Any]],
         out: Path) -> None:  # fmt: skip
    fig, ax = plt.subplots(figsize=(5, 3.5))
    for run in devices:
        points = [r for r in offload if r["device"] == run.profile.name]
        ax.plot([r["offload_rate"] for r in points], [r["macro_f1"] for r in points],
                marker=".", label=f"{run.profile.name} ({run.profile.kind})")  # fmt: skip
    ax.set(xlabel="share of windows offloaded", ylabel="macro-F1")
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(out / "offload.png", dpi=120)
    plt.close(fig)
    fig, ax = plt.subplots(figsize=(4, 4))
    bins = np.linspace(0, 1, 11)
    for run in devices:
        probs, labels = run.pooled("device"), run.pooled("labels")
        confidence, correct = probs.max(axis=1), probs.argmax(axis=1) == labels
        which = np.minimum(np.digitize(confidence, bins) - 1, len(bins) - 2)
        filled = [b for b in range(len(bins) - 1) if np.any(which == b)]
        ax.plot(
            [confidence[which == b].mean() for b in filled],
            [correct[which == b].mean() for b in filled],
            marker="o",
            label=run.profile.name,
        )
    ax.plot([0, 1], [0, 1], color="grey", linestyle=":")
    ax.set(xlabel="int8 confidence", ylabel="accuracy")
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(out / "reliability.png", dpi=120)
    plt.close(fig)
    if consensus:
        fig, ax = plt.subplots(figsize=(5, 3.5))
        for run in devices:
            rows = [r for r in consensus if r["device"] == run.profile.name]
            snippets = [r for r in rows if r["segments"] != "dense"]
            line = ax.plot([r["segments"] for r in snippets],
                           [r["bout_balanced_accuracy"] for r in snippets], marker="o",
                           label=run.profile.name)  # fmt: skip
            dense = [r["bout_balanced_accuracy"] for r in rows if r["segments"] == "dense"]
            ax.axhline(dense[0], color=line[0].get_color(), linestyle=":")
        ax.set(
            xlabel="snippets per bout (K); dotted: every window", ylabel="bout balanced accuracy"
        )
        ax.legend(fontsize=7)
        fig.tight_layout()
        fig.savefig(out / "consensus.png", dpi=120)
        plt.close(fig)


def markdown(rows: list[dict[str, Any]], offload: list[dict[str, Any]],
             consensus: list[dict[str, Any]]) -> str:  # fmt: skip
    columns = ("device", "kind", "float_macro_f1", "int8_macro_f1", "cloud_macro_f1", "int8_ece",
               "latency_ms", "frames_reused", "ram_peak_bytes", "flash_bytes",
               "compute_energy_j_per_hour", "raw_spurious_per_min", "vote3_macro_f1",
               "vote3_spurious_per_min", "hmm_macro_f1", "hmm_spurious_per_min")  # fmt: skip
    lines = ["| " + " | ".join(columns) + " |", "|---" * len(columns) + "|"]
    for row in rows:
        cells = [f"{row[c]:.3f}" if isinstance(row[c], float) else str(row[c]) for c in columns]
        lines.append("| " + " | ".join(cells) + " |")
    lines += ["", "macro-F1 at offload rate (threshold):"]
    for row in rows:
        points = [p for p in offload if p["device"] == row["device"]]
        shown = [points[0], *[p for p in points if 0 < p["offload_rate"] < 1][::4], points[-1]]
        lines.append(f"- {row['device']}: " + ", ".join(
            f"{p['macro_f1']:.3f} at {p['offload_rate']:.0%} ({p['threshold']:.2f})"
            for p in shown))  # fmt: skip
    if consensus:
        first = consensus[0]
        lines += ["", f"segment consensus on {first['bouts']} bouts of {first['classes']} "
                  f"activities, known boundaries ({first['device']}): " + ", ".join(
            f"K={r['segments']} balanced accuracy {r['bout_balanced_accuracy']:.3f}, accuracy "
            f"{r['bout_accuracy']:.3f} ({r['snippet_bytes']:.0f} B)"
            for r in consensus if r["device"] == first["device"])]  # fmt: skip
        if first["classes"] < 2:
            lines.append("(bouts of one activity only: consensus accuracy says little here)")
    return "\n".join(lines)


def devices_of(cfg: DictConfig, names: list[str] | None) -> list[DeviceProfile]:
    """The named profiles; by default the run's fleet, or `DEFAULT_DEVICES` without one."""
    catalogue, fleet = fleet_config(cfg)
    if not catalogue:
        catalogue = load_catalogue(CONFIG_DIR / "fleet" / "devices" / "catalogue.yaml")
    if names is None:
        names = sorted({*fleet.mix, *fleet.device_map.values()}) if fleet else list(DEFAULT_DEVICES)
    unknown = sorted(set(names) - set(catalogue))
    if unknown:
        raise SystemExit(f"--devices: unknown device {unknown}; choose from {sorted(catalogue)}")
    return [catalogue[name] for name in names]


def cloud_model(cloud_run: Path, federation: Federation) -> tuple[str, torch.nn.Module]:
    """The global model of `cloud_run`, which must be a run on the same federation."""
    cfg = run_config(cloud_run)
    if federation_spec(cfg) != federation.spec:
        raise SystemExit(
            f"--cloud-run {cloud_run} ran on another federation (dataset, splits or seed "
            "differ), so its model may have trained on the test windows"
        )
    shape = model_shape(cfg, federation)
    return shape.name, global_model(cloud_run, shape)


def report(
    run_dir: Path, out: Path, device_names: list[str] | None, seed: int,
    cloud_run: Path | None = None,
) -> dict[str, Any]:  # fmt: skip
    cfg = run_config(run_dir)
    federation = open_federation(federation_spec(cfg))
    shape = model_shape(cfg, federation)
    model = global_model(run_dir, shape)
    cloud_name, cloud_float = (shape.name, model)
    if cloud_run is not None:
        cloud_name, cloud_float = cloud_model(cloud_run, federation)
    held_out = federation.holdout
    if len(held_out) == 0:
        raise SystemExit("the run holds out no users to calibrate int8 ranges on; rerun with "
                         "federation.holdout_fraction > 0")  # fmt: skip
    if federation.spec.split != "chronological":
        raise SystemExit(f"federation.split={federation.spec.split} tests on pieces of bouts, "
                         "not on continuous recordings; deploy a chronological run")  # fmt: skip
    k, channels, t = shape.num_classes, shape.in_channels, shape.window_length
    stride = infer_stride(held_out)
    models = {"float": deploy_float(model), "cloud": deploy_float(cloud_float)}
    hop = deployment_hop(stride, models["float"])
    clients = [federation.client(pid).test for pid in range(len(federation.clients))]
    streams = [s for test in clients if len(test) for s in streams_of(test, stride)]
    calibration_streams = streams_of(held_out, stride)
    transition = transition_matrix([cut_windows(s, t, hop)[1] for s in calibration_streams], k)
    _, fleet = fleet_config(cfg)
    variability = fleet.sensor_variability if fleet else SensorVariability.none()
    out.mkdir(parents=True, exist_ok=True)
    windows_per_hour = 3600 * held_out.sampling_rate_hz / hop
    snippet_bytes = channels * t * SAMPLE_BYTES
    runs, rows, offload, consensus = [], [], [], []
    for profile in devices_of(cfg, device_names):
        # int8 ranges calibrated on the held-out users' streams as this device records them
        calibration = [cut_windows(s, t, hop)[0] for s in
                       record(profile, calibration_streams, variability, seed + 1)]  # fmt: skip
        device = deploy_int8(model, np.concatenate(calibration))
        export = export_int8(device)
        export.save(out / f"model_int8_{profile.name}.npz")
        run = run_device(profile, record(profile, streams, variability, seed),
                         models | {"device": device}, t, hop)  # fmt: skip
        runs.append(run)
        row = device_row(run, device, export.flash_bytes, k, channels, t, windows_per_hour)
        rows.append(row | smoothing_row(run, transition, k))
        curve = offload_curve(run.pooled("device"), run.pooled("cloud"), run.pooled("labels"),
                              THRESHOLDS, window_bytes(channels, t), windows_per_hour,
                              profile.radio_bandwidth_bps, profile.radio_power_w)  # fmt: skip
        offload += [{"device": profile.name, "kind": profile.kind} | asdict(p) for p in curve]
        consensus += consensus_rows(run, k, snippet_bytes)
    write_csv(rows, out / "devices.csv")
    write_csv(offload, out / "offload.csv")
    write_csv(consensus, out / "consensus.csv")
    result = {
        "run_dir": str(run_dir), "model": shape.name, "cloud_model": cloud_name, "hop": hop,
        "dataset_stride": stride, "streams": len(streams), "flash_bytes": rows[0]["flash_bytes"],
        "anchor_flash_bytes": ANCHOR_FLASH_BYTES, "devices": rows, "offload": offload,
        "consensus": consensus,
    }  # fmt: skip
    (out / "summary.json").write_text(json.dumps(result, indent=2))
    text = markdown(rows, offload, consensus)
    (out / "summary.md").write_text(text + "\n")
    plot(runs, offload, consensus, out)
    print(text)
    return result


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run-dir", type=Path, help="a finished run; omitted: run one in --out")
    parser.add_argument("--out", type=Path, default=Path("outputs/deployment"))
    parser.add_argument("--devices", nargs="+", default=None,
                        help="device profiles to deploy on; default: the run's fleet")  # fmt: skip
    parser.add_argument("--cloud-run", type=Path, default=None,
                        help="a run on this federation whose model serves offloads")  # fmt: skip
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("overrides", nargs="*", help="Hydra overrides of the run")
    args = parser.parse_args(sys.argv[1:] if argv is None else argv)
    run_dir = args.run_dir
    if run_dir is None:
        run_dir = args.out / "run"
        run_experiment(load_config(args.overrides), run_dir)
    report(run_dir, args.out, args.devices, args.seed, args.cloud_run)


if __name__ == "__main__":
    main()
