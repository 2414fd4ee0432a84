"""The secure-aggregation wrapper and client mod over a grid: exact sums, drop-outs, refusals."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch
from flwr.app import ArrayRecord, ConfigRecord, Message, RecordDict
from flwr.clientapp import ClientApp
from flwr.serverapp.strategy import FedAvg, FedMedian

from clients.secagg import secagg_mod
from fedhar.transport.keystore import ClientKeys, RunKeys
from fedhar.transport.masking import RingSpec
from fedhar.wire import (
    MASKED_KEY,
    SECAGG_KEY,
    SECAGG_STATE_KEY,
    arrays_to_state,
    record_from_bytes,
)
from strategies.heterofl import HeteroFL
from strategies.secagg import SecureAggregation
from tests.helpers.fleet import MODEL, global_arrays, run_with
from tests.helpers.grids import InProcessGrid
from tests.helpers.replies import trained_reply

SEED, NODES, FIRST = 7, 6, 101
KEYS = ClientKeys(RunKeys(Path("unused"), seed=SEED), server_fingerprint="")
RING = RingSpec.for_cohort(NODES, 16, 4.0, 65536)
WIDTHS = {FIRST + i: w for i, w in enumerate((1.0, 0.5, 0.25, 1.0, 0.75, 0.5))}


def grid_update(partition: int) -> Callable[[str, torch.Tensor], torch.Tensor]:
    """Updates on the secagg grid (whole multiples of its step), so quantizing loses nothing."""
    gen = torch.Generator().manual_seed(partition)

    def update(name: str, t: torch.Tensor) -> torch.Tensor:
        if not t.is_floating_point():
            return t
        steps = torch.randint(-400, 401, t.shape, generator=gen).double() * RING.step
        return (t.double() + steps).to(t.dtype)

    return update


def stand_in_app(secure: bool, head_only: set[int] = frozenset(), mods: tuple = ()) -> ClientApp:
    """A ClientApp whose 'training' adds a seeded on-grid update; ``head_only`` partitions
    list only the head as trained; ``mods`` sit inside the secagg mod."""
    app = ClientApp(mods=[secagg_mod(SEED, KEYS), *mods] if secure else list(mods))

    @app.train()
    def train(msg: Message, context) -> Message:
        partition = int(context.node_config["partition-id"])
        names = list(arrays_to_state(msg.content["arrays"]))
        trained = [n for n in names if n.startswith("head")] if partition in head_only else None
        content = trained_reply(msg, grid_update(partition), 10 + 7 * partition, trained)
        return Message(content, reply_to=msg)

    @app.query()
    def query(msg: Message, context) -> Message:  # enrollment; secagg stages never get here
        raise AssertionError("the secagg mod answers its own stages")

    return app


class StageGrid(InProcessGrid):
    """An in-process grid where chosen nodes miss chosen stages and replies can be altered."""

    def __init__(
        self,
        app: ClientApp,
        missing: dict[str, set[int]] | None = None,
        alter: Callable[[str, Message], Message] | None = None,
    ) -> None:
        super().__init__(app, NODES, first_node_id=FIRST)
        self.missing = missing or {}
        self.alter = alter or (lambda stage, reply: reply)
        self.asked: dict[str, int] = {}

    def send_and_receive(self, messages, timeout=None) -> list[Message]:
        messages = list(messages)
        replies = []
        for message in messages:
            record = message.content.config_records.get(SECAGG_KEY)
            stage = (
                "train" if record is None or record["stage"] == "collect" else str(record["stage"])
            )
            self.asked[stage] = self.asked.get(stage, 0) + 1
            if message.metadata.dst_node_id in self.missing.get(stage, set()):
                continue  # this node never answers: a timeout
            for reply in super().send_and_receive([message], timeout):
                replies.append(self.alter(stage, reply))
        return replies


def _run(strategy, grid) -> tuple[ArrayRecord | None, object]:
    arrays = global_arrays()
    config = ConfigRecord({"epochs": 1, "batch-size": 8, "lr": 0.1})
    messages = list(strategy.configure_train(1, arrays, config, grid))
    return strategy.aggregate_train(1, grid.send_and_receive(messages))


def _secure(inner, **kwargs) -> SecureAggregation:
    run = run_with(WIDTHS, seed=SEED)
    for i, node in enumerate(sorted(WIDTHS)):
        run.keys.register(node, KEYS.store.device(i).public_keys())
    return SecureAggregation(inner, run, **kwargs)


def _assert_same(ours: ArrayRecord | None, plain: ArrayRecord | None) -> None:
    assert ours is not None and plain is not None and list(ours) == list(plain)
    for name in ours:
        a, b = ours[name].numpy(), plain[name].numpy()
        if np.issubdtype(a.dtype, np.floating):
            np.testing.assert_allclose(a, b, rtol=0, atol=2e-6, err_msg=name)


def _fedavg() -> FedAvg:
    return FedAvg(min_available_nodes=NODES, min_train_nodes=NODES, fraction_train=1.0)


def _heterofl() -> HeteroFL:
    return HeteroFL(
        model=MODEL,
        run=run_with(WIDTHS, seed=SEED),
        min_available_nodes=NODES,
        min_train_nodes=NODES,
        fraction_train=1.0,
    )


def test_fedavg_under_secagg_equals_plain_fedavg_on_the_same_quantized_updates() -> None:
    ours, metrics = _run(_secure(_fedavg()), StageGrid(stand_in_app(secure=True)))
    plain, plain_metrics = _run(_fedavg(), StageGrid(stand_in_app(secure=False)))
    _assert_same(ours, plain)
    assert metrics["train-loss"] == pytest.approx(plain_metrics["train-loss"])


def test_partial_models_under_secagg_equal_masked_averaging() -> None:
    strategy = _secure(_heterofl())
    ours, _ = _run(strategy, StageGrid(stand_in_app(secure=True, head_only={3})))
    plain, _ = _run(_heterofl(), StageGrid(stand_in_app(secure=False, head_only={3})))
    _assert_same(ours, plain)
    stats = strategy.round_stats()
    assert stats["secagg/accepted"] == NODES and stats["secagg/contributors/head"] == NODES
    assert stats["secagg/contributors/conv1"] == NODES - 1  # partition 3 trained its head only


def test_the_server_sees_only_masked_vectors() -> None:
    seen: list[RecordDict] = []

    def keep(stage: str, reply: Message) -> Message:
        if stage == "train":
            seen.append(reply.content)
        return reply

    _run(_secure(_fedavg()), StageGrid(stand_in_app(secure=True), alter=keep))
    assert len(seen) == NODES
    assert all("arrays" not in c and MASKED_KEY in c for c in seen)


@pytest.mark.parametrize("stage", ["advertise", "share-keys", "train", "unmask"])
def test_one_drop_out_at_any_stage_still_aggregates_the_rest_exactly(stage: str) -> None:
    lost = FIRST + 2
    strategy = _secure(_fedavg())
    ours, _ = _run(strategy, StageGrid(stand_in_app(secure=True), missing={stage: {lost}}))
    stats = strategy.round_stats()
    expected_senders = NODES if stage == "unmask" else NODES - 1
    assert stats["secagg/accepted"] == expected_senders
    plain_grid = StageGrid(
        stand_in_app(secure=False), missing={"train": {lost} if stage != "unmask" else set()}
    )
    plain_strategy = FedAvg(min_available_nodes=NODES, min_train_nodes=NODES, fraction_train=1.0)
    plain, _ = _run(plain_strategy, plain_grid)
    _assert_same(ours, plain)


def test_too_many_drop_outs_fail_the_round_and_keep_the_model() -> None:
    strategy = _secure(_fedavg())  # 6 nodes: 4 shares needed
    grid = StageGrid(stand_in_app(secure=True), missing={"unmask": {FIRST, FIRST + 1, FIRST + 2}})
    arrays, metrics = _run(strategy, grid)
    assert arrays is None and metrics is None  # Flower keeps the previous global model
    stats = strategy.round_stats()
    assert stats["secagg/round-failed"] == 1
    reasons = [reason for _, reason in strategy.round_rejections()]
    assert any("round-failed" in r and "threshold" in r for r in reasons)


def test_below_threshold_at_share_keys_fails_before_anyone_trains() -> None:
    strategy = _secure(_fedavg())
    grid = StageGrid(
        stand_in_app(secure=True), missing={"share-keys": {FIRST, FIRST + 1, FIRST + 2}}
    )
    arrays, _ = _run(strategy, grid)
    assert arrays is None and grid.asked.get("train", 0) == 0
    assert strategy.round_stats()["secagg/round-failed"] == 1


def _forge(field: str, value) -> Callable[[str, Message], Message]:
    def alter(stage: str, reply: Message) -> Message:
        if reply.metadata.src_node_id != FIRST + 1 or reply.has_error():
            return reply
        if stage == "train" and field == "vector":
            vector = reply.content[MASKED_KEY]["vector"]
            reply.content[MASKED_KEY]["vector"] = vector[:-3]
        elif stage == "train" and field == "weight":
            reply.content[SECAGG_KEY]["weight"] = 10**6
        elif stage == "train" and field == "train-node":
            reply.content[SECAGG_KEY]["node-id"] = FIRST + 4
        elif stage == "share-keys" and field == "ciphertext":
            blobs = list(reply.content[SECAGG_KEY]["ciphertexts"])
            blobs[0] = blobs[0][:-1] + bytes([blobs[0][-1] ^ 1])
            reply.content[SECAGG_KEY]["ciphertexts"] = blobs
        elif stage == "unmask" and field == "short-share":
            shares = list(reply.content[SECAGG_KEY]["b-shares"])
            reply.content[SECAGG_KEY]["b-shares"] = [shares[0][:10], *shares[1:]]
        elif stage == "unmask" and field == "shifted-share":
            shares = list(reply.content[SECAGG_KEY]["b-shares"])
            shifted = (int.from_bytes(shares[0], "big") ^ 1).to_bytes(len(shares[0]), "big")
            reply.content[SECAGG_KEY]["b-shares"] = [shifted, *shares[1:]]
        elif stage == field:
            reply.content[SECAGG_KEY]["node-id"] = FIRST + 4
        elif field == "signature" and stage == "advertise":
            reply.content[SECAGG_KEY]["signature"] = bytes(64)
        return reply

    return alter


@pytest.mark.parametrize(
    ("field", "code"),
    [
        ("vector", "wrong-length"),
        ("weight", "weight-mismatch"),
        ("advertise", "wrong-node"),
        ("share-keys", "wrong-node"),
        ("train-node", "wrong-node"),
        ("signature", "bad-signature"),
        ("ciphertext", "bad-share"),
    ],
)
def test_forged_replies_are_rejected_and_the_rest_aggregate(field: str, code: str) -> None:
    # threshold 0.6 of 6 holders: 4 shares; a node its neighbour cannot decrypt keeps 4 holders
    strategy = _secure(_fedavg(), threshold=0.6)
    ours, _ = _run(strategy, StageGrid(stand_in_app(secure=True), alter=_forge(field, None)))
    stats = strategy.round_stats()
    assert stats[f"secagg/rejected/{code}"] == 1
    assert stats["secagg/accepted"] == NODES - 1
    plain_grid = StageGrid(stand_in_app(secure=False), missing={"train": {FIRST + 1}})
    plain, _ = _run(_fedavg(), plain_grid)
    _assert_same(ours, plain)


@pytest.mark.parametrize(
    ("node", "windows", "ratio"),
    [
        (FIRST + 1, 16, 10.0),  # claims 17 examples: more than its 16 windows
        (FIRST + 5, 10**6, 0.4),  # claims 45: within its windows, above 0.4 x the median 100
    ],
)
def test_more_examples_than_the_enrolled_bound_is_rejected(
    node: int, windows: int, ratio: float
) -> None:
    strategy = _secure(_fedavg(), threshold=0.6, max_examples_ratio=ratio)
    directory = strategy.run.directory.nodes
    directory[node] = dataclasses.replace(directory[node], num_windows=windows)
    ours, _ = _run(strategy, StageGrid(stand_in_app(secure=True)))
    stats = strategy.round_stats()
    assert stats["secagg/rejected/num-examples"] == 1 and stats["secagg/accepted"] == NODES - 1
    plain, _ = _run(_fedavg(), StageGrid(stand_in_app(secure=False), missing={"train": {node}}))
    _assert_same(ours, plain)


def test_a_robust_aggregator_behind_secure_aggregation_is_refused() -> None:
    with pytest.raises(ValueError, match="FedMedian one sum"):
        _secure(FedMedian(min_available_nodes=NODES, min_train_nodes=NODES))


@pytest.mark.parametrize(
    ("field", "code"),
    [("short-share", "malformed"), ("shifted-share", None), ("unmask", "wrong-node")],
)
def test_a_bad_unmask_answer_costs_only_that_holder(field: str, code: str | None) -> None:
    """The holder's own update was sent and stays in the sum; its shares are not needed."""
    strategy = _secure(_fedavg())
    ours, _ = _run(strategy, StageGrid(stand_in_app(secure=True), alter=_forge(field, None)))
    stats = strategy.round_stats()
    assert stats["secagg/accepted"] == NODES and "secagg/round-failed" not in stats
    if code is not None:
        assert stats[f"secagg/rejected/{code}"] == 1
    plain, _ = _run(_fedavg(), StageGrid(stand_in_app(secure=False)))
    _assert_same(ours, plain)  # a shifted share is caught by the seed's commitment


def test_secagg_plus_neighbour_graphs_aggregate_exactly() -> None:
    strategy = _secure(_fedavg(), neighbours=2)  # 6 nodes on a ring: 2 neighbours each
    ours, _ = _run(strategy, StageGrid(stand_in_app(secure=True)))
    plain, _ = _run(_fedavg(), StageGrid(stand_in_app(secure=False)))
    _assert_same(ours, plain)
    assert strategy.round_stats()["secagg/accepted"] == NODES


def test_round_secrets_never_reach_the_saved_client_state(tmp_path) -> None:
    from clients.state_store import persisted_state_mod

    app = ClientApp(mods=[persisted_state_mod(str(tmp_path)), secagg_mod(SEED, KEYS)])

    @app.train()
    def train(msg: Message, context) -> Message:
        context.state["personal-layers"] = ConfigRecord({"kept": 1})
        return Message(trained_reply(msg, grid_update(0), 10), reply_to=msg)

    @app.query()
    def query(msg: Message, context) -> Message:
        raise AssertionError("the secagg mod answers its own stages")

    arrays, _ = _run(_secure(_fedavg()), StageGrid(app))
    assert arrays is not None
    saved = list(tmp_path.rglob("round*.bin"))
    assert len(saved) == NODES
    for path in saved:
        state = record_from_bytes(path.read_bytes())
        assert "personal-layers" in state and SECAGG_STATE_KEY not in state


def test_a_client_with_the_mod_never_sends_an_update_in_clear() -> None:
    grid = StageGrid(stand_in_app(secure=True))
    arrays = global_arrays()
    config = ConfigRecord({"epochs": 1, "batch-size": 8, "lr": 0.1, "server-round": 1})
    messages = list(_fedavg().configure_train(1, arrays, config, grid))
    replies = grid.send_and_receive(messages)
    assert all(r.has_error() and "not-secure" in r.error.reason for r in replies)


def test_bad_settings_are_refused_when_the_stack_is_built() -> None:
    with pytest.raises(ValueError, match=r"\(0.5, 1\]"):
        _secure(_fedavg(), threshold=0.5)
    with pytest.raises(ValueError, match="bits=40"):
        _secure(_fedavg(), bits=40)


def test_flower_client_side_dp_clips_before_masking_and_noises_the_sum() -> None:
    from flwr.clientapp.mod import fixedclipping_mod
    from flwr.serverapp.strategy import DifferentialPrivacyClientSideFixedClipping

    def dp(noise: float) -> SecureAggregation:
        inner = DifferentialPrivacyClientSideFixedClipping(_fedavg(), noise, 0.05, NODES)
        return _secure(inner, max_weight=1)  # DP's sensitivity assumes an unweighted mean

    app = stand_in_app(secure=True, mods=(fixedclipping_mod,))  # inside secagg, as composed
    start = arrays_to_state(global_arrays())
    clipped, _ = _run(dp(0.0), StageGrid(app))
    noisy, _ = _run(dp(1.0), StageGrid(app))
    assert clipped is not None and noisy is not None

    def update_norm(arrays: ArrayRecord) -> float:
        state = arrays_to_state(arrays)
        return float(
            torch.sqrt(
                sum(
                    ((state[n].double() - start[n].double()) ** 2).sum()
                    for n in start
                    if start[n].is_floating_point()
                )
            )
        )

    assert update_norm(clipped) <= 0.05 * 1.01  # every update clipped to 0.05: so is the mean
    # noise of std 1.0 * 0.05 / 6 per coordinate over ~12k coordinates: a far larger norm
    assert update_norm(noisy) > 10 * update_norm(clipped)
