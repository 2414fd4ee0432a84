"""Runtime benchmark: fedhar's default path against plain Flower and a sequential torch loop.

Run: ``python -m experiments.bench.runtime [--users 10 100 1000 10000] [--rounds 3]
[--out outputs/bench-runtime]``. One invocation runs, at each scale, three arms doing the same
work, each as its own process on the same machine:

- ``fedhar``: ``fedhar`` with its default runtime (``runtime.backend=ray-fast``);
- ``flower``: a plain Flower 1.41 app written here (FedAvg, a ClientApp that trains with
  ``fedhar.train.train_local`` and evaluates with ``fedhar.train.evaluate``) under
  ``flwr.simulation.run_simulation``;
- ``floor``: the same training, averaging and evaluation as a sequential loop in one process.

Work per round: ``min(100, N)`` of the N registered client users train one local epoch
(MicroBi-ConvLSTM, synthetic data, no fleet, no QAT) and as many are evaluated on their own
test split; 25 held-out users are scored on the server. The synthetic users' windows are
generated into a shared cache before the arms run, so no arm pays for data generation.
Reported per arm: whole-process wall, time to first round (process start to the start of
round 1), time per round (mean of rounds 2+), client updates per second, peak RSS of the
process tree (server and every worker, polled every 0.1 s), and the fixed cost per round
(2 clients with 1 local step each). Wall-clock figures are ratios within one invocation;
the table is printed and written to ``runtime.json``.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import random
import subprocess
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np
import psutil
import torch

HOLDOUT = 25  # held-out users scored on the server at every scale
PER_ROUND = 100  # clients asked to train (and to evaluate) per round
SECONDS_PER_USER = 240.0  # as the default synthetic dataset
ARMS = ("fedhar", "flower", "floor")


@dataclass(frozen=True)
class Workload:
    """What every arm does: N client users, k of them per round, R rounds."""

    clients: int
    rounds: int
    seconds_per_user: float = SECONDS_PER_USER
    seed: int = 0

    @property
    def users(self) -> int:
        return self.clients + HOLDOUT

    @property
    def per_round(self) -> int:
        return min(PER_ROUND, self.clients)

    @property
    def holdout_fraction(self) -> float:
        return HOLDOUT / self.users

    @property
    def fraction(self) -> float:
        return self.per_round / self.clients

    def spec(self) -> Any:
        from fedhar.federation import FederationSpec

        options = {"num_users": self.users, "seconds_per_user": self.seconds_per_user,
                   "seed": self.seed}  # fmt: skip
        return FederationSpec(
            "synthetic",
            FederationSpec.options_from(options),
            holdout_fraction=self.holdout_fraction,
            seed=self.seed,
        )


@dataclass(frozen=True)
class ArmResult:
    arm: str
    clients: int
    per_round: int
    finished: bool
    wall_s: float
    first_round_s: float | None  # process start -> round 1 starts
    round_s: float | None  # mean wall of rounds 2+
    updates_per_s: float | None
    peak_rss_gb: float
    note: str = ""


# ---- the Flower peer and the sequential floor (each runs in its own process) -------------


@lru_cache(maxsize=256)
def _client(spec: Any, partition: int) -> Any:
    from fedhar.federation import load_client

    return load_client(spec, partition)


def _events(path: Path) -> Any:
    """Append-only round log: {"round": r, "time": unix seconds} when round r ends."""

    def log(server_round: int) -> None:
        with path.open("a") as fh:
            fh.write(json.dumps({"round": server_round, "time": time.time()}) + "\n")

    return log


def _holdout_score(spec: Any, state: dict[str, torch.Tensor]) -> float:
    from fedhar.federation import load_federation
    from fedhar.models import build_model
    from fedhar.train import evaluate

    federation = load_federation(spec)
    model = build_model("microbi_convlstm", federation.in_channels, federation.num_classes)
    model.load_state_dict(state)
    holdout = federation.holdout
    return evaluate(model, holdout.x, holdout.y, federation.num_classes).macro_f1


def run_flower_peer(work: Workload, events: Path) -> None:
    """Plain Flower: FedAvg and a minimal ClientApp under ``run_simulation``."""
    from flwr.app import ArrayRecord, ConfigRecord, Context, Message, MetricRecord, RecordDict
    from flwr.clientapp import ClientApp
    from flwr.serverapp import Grid, ServerApp
    from flwr.serverapp.strategy import FedAvg
    from flwr.simulation import run_simulation

    from fedhar.federation import load_federation
    from fedhar.models import build_model
    from fedhar.train import TrainConfig, evaluate, train_local

    spec = work.spec()
    federation = load_federation(spec)
    shape = (federation.in_channels, federation.num_classes)
    client_app = ClientApp()

    def received(msg: Message, context: Context) -> tuple[Any, torch.nn.Module]:
        """The node's data and the model the message carries."""
        torch.set_num_threads(1)
        model = build_model("microbi_convlstm", *shape)
        model.load_state_dict(msg.content.array_records["arrays"].to_torch_state_dict())
        return _client(spec, int(context.node_config["partition-id"])), model

    @client_app.train()
    def train(msg: Message, context: Context) -> Message:
        data, model = received(msg, context)
        result = train_local(model, data.train.x, data.train.y, TrainConfig(epochs=1), seed=0)
        content = RecordDict({
            "arrays": ArrayRecord(model.state_dict()),
            "metrics": MetricRecord({"num-examples": result.num_examples,
                                     "train-loss": result.mean_loss}),
        })  # fmt: skip
        return Message(content, reply_to=msg)

    @client_app.evaluate()
    def evaluate_client(msg: Message, context: Context) -> Message:
        data, model = received(msg, context)
        result = evaluate(model, data.test.x, data.test.y, shape[1])
        metrics = MetricRecord({"num-examples": result.num_examples,
                                "eval-macro-f1": result.macro_f1})  # fmt: skip
        return Message(RecordDict({"metrics": metrics}), reply_to=msg)

    server_app = ServerApp()
    log = _events(events)

    @server_app.main()
    def main(grid: Grid, context: Context) -> None:
        torch.manual_seed(work.seed)
        initial = ArrayRecord(build_model("microbi_convlstm", *shape).state_dict())

        def server_eval(server_round: int, arrays: ArrayRecord) -> MetricRecord:
            score = _holdout_score(spec, arrays.to_torch_state_dict())
            log(server_round)
            return MetricRecord({"macro-f1": score})

        strategy = FedAvg(fraction_train=work.fraction, fraction_evaluate=work.fraction,
                          min_available_nodes=work.clients, min_train_nodes=1,
                          min_evaluate_nodes=1)  # fmt: skip
        train_config = ConfigRecord({"lr": 0.05})
        strategy.start(grid, initial, num_rounds=work.rounds, timeout=3600,
                       train_config=train_config, evaluate_fn=server_eval)  # fmt: skip

    run_simulation(
        server_app=server_app,
        client_app=client_app,
        num_supernodes=work.clients,
        backend_config={"client_resources": {"num_cpus": 1, "num_gpus": 0.0},
                        "init_args": {"num_cpus": 2, "include_dashboard": False,
                                      "log_to_driver": False, "logging_level": 40}},
    )  # fmt: skip


def run_floor(work: Workload, events: Path) -> None:
    """The same rounds as a sequential torch loop in this process."""
    from fedhar.federation import load_federation
    from fedhar.models import build_model
    from fedhar.train import TrainConfig, evaluate, train_local

    torch.set_num_threads(1)
    spec = work.spec()
    federation = load_federation(spec)
    shape = (federation.in_channels, federation.num_classes)
    log = _events(events)
    torch.manual_seed(work.seed)
    state = build_model("microbi_convlstm", *shape).state_dict()
    _holdout_score(spec, state)
    log(0)
    rng = random.Random(work.seed)
    for server_round in range(1, work.rounds + 1):
        updates, weights = [], []
        for partition in rng.sample(range(work.clients), work.per_round):
            data = _client(spec, partition)
            model = build_model("microbi_convlstm", *shape)
            model.load_state_dict(state)
            result = train_local(model, data.train.x, data.train.y, TrainConfig(epochs=1), 0)
            updates.append(model.state_dict())
            weights.append(result.num_examples)
        total = float(sum(weights))
        state = {
            name: sum(
                u[name].double() * (w / total) for u, w in zip(updates, weights, strict=True)
            ).to(updates[0][name].dtype)  # type: ignore[union-attr]
            for name in updates[0]
        }
        model = build_model("microbi_convlstm", *shape)
        model.load_state_dict(state)
        for partition in rng.sample(range(work.clients), work.per_round):
            data = _client(spec, partition)
            evaluate(model, data.test.x, data.test.y, shape[1])
        _holdout_score(spec, state)
        log(server_round)


# ---- running and measuring the arms -------------------------------------------------------


def _tree_rss(process: psutil.Process) -> int:
    total = 0
    for proc in [process, *process.children(recursive=True)]:
        try:
            total += proc.memory_info().rss
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            continue
    return total


def _fedhar_command(work: Workload, run_dir: Path, extra: list[str]) -> list[str]:
    return [
        sys.executable, "-m", "experiments.run",
        f"dataset.options.num_users={work.users}",
        f"dataset.options.seconds_per_user={work.seconds_per_user}",
        f"federation.holdout_fraction={work.holdout_fraction}",
        f"strategy.algorithm.fraction_train={work.fraction}",
        f"strategy.algorithm.fraction_evaluate={work.fraction}",
        f"num_rounds={work.rounds}", f"seed={work.seed}",
        "fleet=none", "quant.enabled=false", "train.epochs=1",
        "tracking.plots=false", "tracking.progress=false", "resume=false",
        f"hydra.run.dir={run_dir}", *extra,
    ]  # fmt: skip


def _round_ends(run_dir: Path) -> list[tuple[int, float, float]]:
    """(round, wall-clock end, round duration) of every round an arm's event log finished."""
    path = run_dir / "events.jsonl"
    lines = path.read_text().splitlines() if path.exists() else []
    ends = {r["round"]: r["time"] for r in map(json.loads, lines)}
    return [(r, ends[r], ends[r] - ends[r - 1]) for r in sorted(ends) if r >= 1 and r - 1 in ends]


def run_arm(arm: str, work: Workload, out: Path, timeout_s: float, extra: list[str]) -> ArmResult:
    """Run one arm as its own process and measure it from outside."""
    run_dir = out / f"{arm}-{work.clients}-{work.per_round}"
    run_dir.mkdir(parents=True, exist_ok=True)
    for stale in ("metrics.jsonl", "events.jsonl", "checkpoint.pt"):
        (run_dir / stale).unlink(missing_ok=True)
    if arm == "fedhar":
        command = _fedhar_command(work, run_dir, extra)
    else:
        command = [sys.executable, "-m", "experiments.bench.runtime", "--arm", arm,
                   "--clients", str(work.clients), "--rounds", str(work.rounds),
                   "--seconds-per-user", str(work.seconds_per_user),
                   "--out", str(run_dir)]  # fmt: skip
    started = time.time()
    log_file = (run_dir / "stderr.log").open("wb")  # a pipe would fill up and block the arm
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=log_file)
    handle = psutil.Process(process.pid)
    peak, seen_rounds, finished = 0, 0, True
    seen: list[dict[str, Any]] = []
    while process.poll() is None:
        peak = max(peak, _tree_rss(handle))
        if arm == "fedhar":
            seen_rounds = _note_fedhar_rounds(run_dir, seen, seen_rounds)
        if time.time() - started > timeout_s:
            for child in handle.children(recursive=True):
                child.kill()
            process.kill()
            finished = False
            break
        time.sleep(0.1)
    wall = time.time() - started
    if arm == "fedhar":
        _note_fedhar_rounds(run_dir, seen, seen_rounds)
        ends = [(r["server_round"], r["_seen"], r["wall_time_s"]) for r in seen]
    else:
        ends = _round_ends(run_dir)
    log_file.close()
    stderr = (run_dir / "stderr.log").read_text(errors="replace")
    note = "" if finished else f"not finished within {timeout_s:.0f} s"
    if finished and process.returncode != 0:
        finished, note = False, f"exit {process.returncode}: {stderr.strip().splitlines()[-1:]}"
    first = ends[0][1] - ends[0][2] - started if ends else None
    steady = [duration for r, _, duration in ends if r >= 2]
    round_s = float(np.mean(steady)) if steady else (ends[0][2] if ends else None)
    return ArmResult(
        arm=arm,
        clients=work.clients,
        per_round=work.per_round,
        finished=finished and len(ends) == work.rounds,
        wall_s=wall,
        first_round_s=first,
        round_s=round_s,
        updates_per_s=work.per_round / round_s if round_s else None,
        peak_rss_gb=peak / 2**30,
        note=note,
    )


def _note_fedhar_rounds(run_dir: Path, seen: list[dict[str, Any]], count: int) -> int:
    """Stamp each new metrics.jsonl row with the time it was first seen."""
    path = run_dir / "metrics.jsonl"
    if not path.exists():
        return count
    lines = path.read_text().splitlines()
    for line in lines[count:]:
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            return len(seen)
        seen.append({**row, "_seen": time.time()})
    return len(seen)


def _generate(args: tuple[Workload, int, int]) -> None:
    from fedhar.data import open_users

    work, start, stop = args
    users = open_users("synthetic", num_users=work.users,
                       seconds_per_user=work.seconds_per_user, seed=work.seed)  # fmt: skip
    for name in users.users[start:stop]:
        users.windows_of(name)


def warm_cache(work: Workload, processes: int = 2) -> float:
    """Generate every synthetic user of ``work`` into the per-user cache; seconds taken."""
    started = time.perf_counter()
    step = math.ceil(work.users / (processes * 8))
    chunks = [(work, i, min(i + step, work.users)) for i in range(0, work.users, step)]
    with ProcessPoolExecutor(processes) as pool:
        list(pool.map(_generate, chunks))
    return time.perf_counter() - started


def _fmt(value: float | None, digits: int = 1) -> str:
    return "-" if value is None else f"{value:,.{digits}f}"


def table(results: list[ArmResult], fixed: dict[str, float | None]) -> str:
    head = ["arm", "clients", "per round", "wall s", "to round 1 s", "s / round",
            "updates / s", "peak RSS GB", "fixed s / round", "note"]  # fmt: skip
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in results:
        cells = [r.arm, f"{r.clients:,}", str(r.per_round), _fmt(r.wall_s),
                 _fmt(r.first_round_s), _fmt(r.round_s, 2), _fmt(r.updates_per_s),
                 _fmt(r.peak_rss_gb, 2), _fmt(fixed.get(r.arm), 3), r.note]  # fmt: skip
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--users", type=int, nargs="+", default=[10, 100, 1000, 10000])
    parser.add_argument("--arms", nargs="+", default=list(ARMS), choices=ARMS)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--seconds-per-user", type=float, default=SECONDS_PER_USER)
    parser.add_argument("--timeout", type=float, default=900.0, help="per arm and scale")
    parser.add_argument("--out", type=Path, default=Path("outputs/bench-runtime"))
    parser.add_argument("--arm", choices=["flower", "floor"], help=argparse.SUPPRESS)
    parser.add_argument("--clients", type=int, help=argparse.SUPPRESS)
    args, extra = parser.parse_known_args(argv)
    if args.arm is not None:  # one arm, as its own process
        # by module name, not __main__: Ray workers unpickle the peer's handlers from it
        from experiments.bench import runtime

        work = Workload(args.clients, args.rounds, args.seconds_per_user)
        args.out.mkdir(parents=True, exist_ok=True)
        arm = runtime.run_flower_peer if args.arm == "flower" else runtime.run_floor
        arm(work, args.out / "events.jsonl")
        return
    os.environ.setdefault("FEDHAR_CACHE_DIR", str(args.out / "cache"))
    results: list[ArmResult] = []
    fixed_work = Workload(2, 4, seconds_per_user=16.0)  # < 32 windows: one step per epoch
    warm_cache(fixed_work)
    fixed: dict[str, float | None] = {}
    for arm in args.arms:
        fixed[arm] = run_arm(arm, fixed_work, args.out / "fixed", args.timeout, extra).round_s
    warm: dict[int, float] = {}
    for clients in args.users:
        work = Workload(clients, args.rounds, args.seconds_per_user)
        warm[clients] = warm_cache(work)
        for arm in args.arms:
            result = run_arm(arm, work, args.out, args.timeout, extra)
            results.append(result)
            print(table([result], fixed).splitlines()[-1], flush=True)
    report = table(results, fixed)
    print(report)
    args.out.mkdir(parents=True, exist_ok=True)
    payload = {
        "command": " ".join(["python -m experiments.bench.runtime", *(argv or sys.argv[1:])]),
        "cpus": os.cpu_count(),
        "cache_warmup_s": warm,
        "fixed_cost_per_round_s": fixed,
        "results": [asdict(r) for r in results],
    }
    (args.out / "runtime.json").write_text(json.dumps(payload, indent=2))


if __name__ == "__main__":
    main()
