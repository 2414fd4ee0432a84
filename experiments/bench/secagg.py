"""Cost of secure aggregation against the plain encrypted transport, per client and server.

Run: ``python -m experiments.bench.secagg [--cohorts 10 50 200] [--repeats 2]
[--out outputs/bench-secagg]``. One invocation runs, at each cohort size, one round of each
arm on the same model and updates, in this process, through the real wrappers and client
mods and Flower messages routed by an in-process grid:

- ``plain``: FedAvg, updates in clear (reference bytes);
- ``encryption``: ``EncryptedTransport`` + ``encryption_mod`` (sealed, signed updates);
- ``secagg``: ``SecureAggregation`` + ``secagg_mod`` on the complete graph;
- ``secagg-drop10``: the same with 10% of the cohort dropping out after sharing keys (the
  server recovers their masks from shares);
- ``secagg+k16``: SecAgg+ with a 16-regular neighbour graph.

"Training" adds a fixed random update to the received model (the default model of
``configs/config.yaml`` on the synthetic data's shape), so only transport and protocol work
is timed. Client time is the time a node spends handling its messages minus that stand-in
training; server time is the round's wall time minus all client time. Bytes are Flower's
serialized records (``record_to_bytes``), down and up, protocol stages included. Each figure
is the median over ``--repeats`` rounds; ratios compare arms of one invocation.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from collections import defaultdict
from collections.abc import Callable
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from flwr.app import ArrayRecord, ConfigRecord, Context, Error, Message, RecordDict
from flwr.clientapp import ClientApp
from flwr.serverapp.strategy import FedAvg, Strategy
from flwr.supercore.task_identity import TaskIdentity

from clients.encryption import encryption_mod
from clients.secagg import secagg_mod
from experiments.compose import federation_spec, load_config
from fedhar.federation import federation_index
from fedhar.models import build_model
from fedhar.transport.keystore import ClientKeys, RunKeys
from fedhar.wire import (
    ARRAYS_KEY,
    ClientIdentity,
    TrainReport,
    arrays_to_state,
    record_to_bytes,
    state_to_arrays,
    train_reply,
)
from strategies.encryption import EncryptedTransport
from strategies.grid_proxy import screening
from strategies.run_info import RunInfo
from strategies.secagg import SecureAggregation

SEED = 0
ARMS = ("plain", "encryption", "secagg", "secagg-drop10", "secagg+k16")


class MeteredGrid:
    """Routes messages to a ClientApp in this process; times each node, counts record bytes.

    Nodes in ``silent`` never answer train messages (drop-outs after sharing keys).
    """

    def __init__(self, app: ClientApp, num_nodes: int, silent: set[int]) -> None:
        TaskIdentity.run_id, TaskIdentity.node_id, TaskIdentity.task_id = 1, 0, 1
        self.app, self.silent = app, silent
        self.contexts = {
            node: Context(
                run_id=1,
                node_id=node,
                node_config={"partition-id": node - 1},
                state=RecordDict(),
                run_config={},
            )
            for node in range(1, num_nodes + 1)
        }
        self.seconds: dict[int, float] = defaultdict(float)
        self.bytes_down: dict[int, int] = defaultdict(int)
        self.bytes_up: dict[int, int] = defaultdict(int)

    def get_node_ids(self) -> list[int]:
        return list(self.contexts)

    def send_and_receive(self, messages: Any, timeout: float | None = None) -> list[Message]:
        replies = []
        for message in messages:
            node = message.metadata.dst_node_id
            self.bytes_down[node] += len(record_to_bytes(message.content))
            if node in self.silent and str(message.metadata.message_type) == "train":
                continue
            started = time.perf_counter()
            try:
                reply = self.app(message, self.contexts[node])
            except Exception as error:  # as the runtime: a raising handler is an error reply
                reply = Message(Error(code=0, reason=repr(error)), reply_to=message)
            self.seconds[node] += time.perf_counter() - started
            if not reply.has_error():
                self.bytes_up[node] += len(record_to_bytes(reply.content))
            replies.append(reply)
        return replies


@dataclass(frozen=True)
class ArmResult:
    """One arm at one cohort size: medians over repeats."""

    arm: str
    cohort: int
    senders: int
    client_ms: float  # per client, protocol and transport work only
    client_kb_up: float
    client_kb_down: float
    server_ms: float
    server_mb: float  # all bytes through the server, both directions
    exact: bool  # the aggregate equals the plain arm's within one quantization step


def _stand_in_app(
    mods: list[Callable[..., Message]], update: dict[str, torch.Tensor], training: list[float]
) -> ClientApp:
    app = ClientApp(mods=mods)

    @app.train()
    def train(msg: Message, context: Context) -> Message:
        started = time.perf_counter()
        state = arrays_to_state(msg.content.array_records[ARRAYS_KEY])
        local = {n: t + update[n] if n in update else t for n, t in state.items()}
        report = TrainReport(num_examples=100, train_loss=1.0, num_steps=1, compute_seconds=0.0)
        content = train_reply(local, report, ClientIdentity("u", "phone"), list(local))
        training.append(time.perf_counter() - started)
        return Message(content, reply_to=msg)

    @app.query()
    def query(msg: Message, context: Context) -> Message:
        raise RuntimeError("secagg stages are answered by the mod")

    return app


def _arm(
    name: str, cohort: int, arrays: ArrayRecord, update: dict[str, torch.Tensor]
) -> tuple[ArmResult, ArrayRecord | None]:
    store = RunKeys(Path("."), seed=SEED)  # seeded: the benchmark writes no key files
    keys = ClientKeys(store, store.server().fingerprint())
    run = RunInfo("bench", SEED, Path("."), key_store=store)
    for node in range(1, cohort + 1):
        run.keys.register(node, store.device(node - 1).public_keys())
    fedavg = FedAvg(fraction_train=1.0, min_train_nodes=cohort, min_available_nodes=cohort)
    strategy: Strategy = fedavg
    mods: list[Callable[..., Message]] = []
    if name == "encryption":
        strategy, mods = EncryptedTransport(fedavg, run), [encryption_mod(keys)]
    elif name.startswith("secagg"):
        neighbours = 16 if name == "secagg+k16" else None
        strategy = SecureAggregation(fedavg, run, neighbours=neighbours)
        mods = [secagg_mod(SEED, keys)]
    silent = set(range(1, cohort // 10 + 1)) if name == "secagg-drop10" else set()
    training: list[float] = []
    grid = MeteredGrid(_stand_in_app(mods, update, training), cohort, silent)
    config = ConfigRecord({"epochs": 1, "batch-size": 8, "lr": 0.1})
    started = time.perf_counter()
    messages = list(strategy.configure_train(1, arrays, config, grid))  # type: ignore[arg-type]
    replies = screening(grid, strategy).send_and_receive(messages)  # type: ignore[arg-type]
    new_arrays, _ = strategy.aggregate_train(1, replies)
    wall = time.perf_counter() - started
    client = [grid.seconds[n] for n in grid.contexts]
    per_client_ms = 1e3 * (sum(client) - sum(training)) / cohort
    result = ArmResult(
        arm=name,
        cohort=cohort,
        senders=cohort - len(silent),
        client_ms=per_client_ms,
        client_kb_up=sum(grid.bytes_up.values()) / cohort / 1e3,
        client_kb_down=sum(grid.bytes_down.values()) / cohort / 1e3,
        server_ms=1e3 * (wall - sum(client)),
        server_mb=(sum(grid.bytes_up.values()) + sum(grid.bytes_down.values())) / 1e6,
        exact=False,
    )
    return result, new_arrays


def _close(ours: ArrayRecord | None, plain: ArrayRecord | None, step: float) -> bool:
    if ours is None or plain is None:
        return False
    return all(
        np.allclose(ours[n].numpy(), plain[n].numpy(), rtol=0, atol=1.01 * step)
        for n in plain
        if np.issubdtype(plain[n].numpy().dtype, np.floating) and "num_batches" not in n
    )


def run_cohort(cohort: int, repeats: int) -> list[ArmResult]:
    """Every arm at one cohort size; figures are medians over ``repeats`` rounds."""
    cfg = load_config([])
    channels, classes, _ = federation_index(federation_spec(cfg)).shape
    torch.manual_seed(SEED)
    state = build_model(cfg.model.name, channels, classes).state_dict()
    arrays = state_to_arrays(state)
    gen = torch.Generator().manual_seed(SEED)
    update = {
        n: 0.01 * torch.randn(t.shape, generator=gen)
        for n, t in state.items()
        if t.is_floating_point()
    }
    step = SecureAggregation(FedAvg(), RunInfo("b", 0, Path("."))).clip / (2**15 - 1)
    results, plain_arrays = [], None
    for name in ARMS:
        runs = [_arm(name, cohort, arrays, update) for _ in range(repeats)]
        if name == "plain":
            plain_arrays = runs[0][1]
        # every client sends the same update with the same weight, so the senders' mean is
        # the plain arm's mean also when some drop out
        exact = name in ("plain", "encryption") or _close(runs[0][1], plain_arrays, step)
        results.append(
            replace(
                runs[0][0],
                client_ms=statistics.median(r.client_ms for r, _ in runs),
                server_ms=statistics.median(r.server_ms for r, _ in runs),
                exact=exact,
            )
        )
    return results


def table(results: list[ArmResult]) -> str:
    """A markdown table with ratios against the encrypted transport at the same cohort."""
    base = {r.cohort: r for r in results if r.arm == "encryption"}
    lines = [
        "| arm | cohort | senders | client ms | x enc | client KB up | client KB down "
        "| server ms | x enc | server MB | x enc | aggregate ok |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|",
    ]
    for r in results:
        b = base[r.cohort]
        lines.append(
            f"| {r.arm} | {r.cohort} | {r.senders} | {r.client_ms:.1f} | "
            f"{r.client_ms / b.client_ms:.1f} | {r.client_kb_up:.1f} | {r.client_kb_down:.1f} | "
            f"{r.server_ms:.1f} | {r.server_ms / b.server_ms:.1f} | {r.server_mb:.2f} | "
            f"{r.server_mb / b.server_mb:.2f} | {'yes' if r.exact else 'NO'} |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cohorts", type=int, nargs="+", default=[10, 50, 200])
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--out", type=Path, default=Path("outputs/bench-secagg"))
    args = parser.parse_args(argv)
    results = [r for cohort in args.cohorts for r in run_cohort(cohort, args.repeats)]
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "secagg.json").write_text(json.dumps([asdict(r) for r in results], indent=2))
    text = table(results)
    (args.out / "secagg.md").write_text(text + "\n")
    print(text)


if __name__ == "__main__":
    main()
