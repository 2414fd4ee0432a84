"""The one place where fedhar's dataclasses become Flower records and back.

Keys are snake_case in Python and kebab-case on the wire (Flower's convention). Flower's
default keys stay as they are (``arrays``, ``config``, ``num-examples``) so that Flower's
built-in strategies and mods keep working on fedhar messages.
"""

from __future__ import annotations

from dataclasses import MISSING, dataclass, fields
from typing import Any, TypeVar

import numpy as np
import torch
from flwr.app import Array, ArrayRecord, ConfigRecord, MetricRecord, RecordDict
from flwr.common.serde import recorddict_from_proto, recorddict_to_proto
from flwr.proto.recorddict_pb2 import RecordDict as ProtoRecordDict

from fedhar.partial.static_bn import LayerSums, MomentSums
from fedhar.transport.keys import DevicePublicKeys

ARRAYS_KEY = "arrays"
CONFIG_KEY = "config"
METRICS_KEY = "metrics"
CLIENT_KEY = "client"  # ConfigRecord with the replying user's identity (strings)
TRAINED_KEY = "trained"  # ConfigRecord {"names": [...]}: state keys the local update changed
NODE_KEY = "node"  # ConfigRecord answering enrollment (NodeInfo)
NODE_KEYS_KEY = "node-keys"  # ConfigRecord {"signing": bytes, "exchange": bytes}: device keys
DECLINE_KEY = "decline"  # ConfigRecord sent instead of an update when a client cannot train

# Compressed transport (strategies.compression, clients.compression).
COMPRESSED_KEY = "compressed"  # ConfigRecord {"payload": bytes[, "schema": bytes]}
RESIDUAL_KEY = "compression-residual"  # context.state ArrayRecord: error-feedback residual

# Personal layers (strategies.masked and .personal, clients.personal).
PERSONAL_NAMES_KEY = "personal-names"  # config list of state entries the node keeps to itself
PERSONAL_STATE_KEY = "personal-layers"  # context.state ArrayRecord holding them between rounds
HEAD_EPOCHS_KEY = "head-epochs"  # config int: FedRep's head-only epochs before the body's

# Static BatchNorm (strategies.masked, clients.app): statistics of the global model per width.
BN_STATS_ACTION = "bn_stats"  # query action ("query.bn_stats") asking for BatchNorm sums
BN_STATS_KEY = "bn-stats"  # ConfigRecord {"widths": [...], "batch-size": int}
BN_SUMS_PREFIX = "bn-sums/"  # one ArrayRecord per width: "<layer>/count|total|squares"

# Secure aggregation (strategies.secagg, clients.secagg).
SECAGG_KEY = "secagg"  # ConfigRecord: a secure-aggregation stage's instructions or answer
MASKED_KEY = "masked"  # ConfigRecord {"vector": bytes}: a masked update in the secagg ring
SECURE_SUM_KEY = "secure-sum"  # ConfigRecord {"senders": [...]}: the server's unmasked average
SECAGG_STATE_KEY = "secagg-round"  # context.state ConfigRecord: this round's secrets, never saved

# Encrypted transport (strategies.encryption, clients.encryption).
SEALED_KEY = "sealed"  # ConfigRecord {"envelope": bytes, "inner": name of the main payload}
SEALED_MODEL_KEY = "sealed-model"  # ConfigRecord {"envelope": bytes}: the sealed downlink model
SIGNATURE_KEY = "signature"  # ConfigRecord {"signature": bytes}: the device signed this reply
CHALLENGE_KEY = "enroll-challenge"  # config bytes: the random challenge an enrolling node signs
TRANSPORT_KEY = "transport"  # MetricRecord of the client's seal/open seconds, clear telemetry
PAYLOAD_KEYS = (COMPRESSED_KEY, ARRAYS_KEY, MASKED_KEY)  # records that only travel sealed
PAYLOAD_FORMAT_KEY = "payload-format"  # config int: the sealed payload's format version
SERVER_PUBLIC_KEY_KEY = "server-public-key"  # config bytes: the server's X25519 public key
SERVER_SIGNING_KEY_KEY = "server-signing-key"  # config bytes: the server's Ed25519 public key
RUN_ID_KEY = "run-id"  # config str: the run an envelope is bound to
PAYLOAD_FORMAT = 1  # sealed payload format: the records as Flower protobuf bytes (record_to_bytes)

T = TypeVar("T")


def to_wire_key(name: str) -> str:
    return name.replace("_", "-")


def from_wire_key(key: str) -> str:
    return key.replace("-", "_")


@dataclass(frozen=True)
class TrainInstructions:
    """What the server asks of one client in one round."""

    server_round: int
    epochs: int
    batch_size: int
    lr: float
    proximal_mu: float = 0.0
    width: float = 1.0  # width of the sub-model the arrays belong to
    head_epochs: int = 0  # FedRep: epochs on the head alone before the body's epochs
    scaler: bool = False  # HeteroFL's scaler: hidden outputs divided by the width in training


@dataclass(frozen=True)
class EvalInstructions:
    """What the server asks of one client when it evaluates the global model."""

    server_round: int
    width: float = 1.0


@dataclass(frozen=True)
class ClientIdentity:
    """Who replied: the user and the device they train on."""

    user: str
    device: str


@dataclass(frozen=True)
class TrainReport:
    """Metrics of one local update (``num_examples`` weights the average)."""

    num_examples: int
    train_loss: float
    num_steps: int
    compute_seconds: float  # host wall time of the update
    sim_compute_s: float = 0.0  # simulated on-device compute time (0 without a device model)
    dp_epsilon: float | None = None  # the device's DP-SGD epsilon after it (None: no DP-SGD)
    dp_epsilon_next: float | None = None  # ... and after one more update like it


@dataclass(frozen=True)
class NodeInfo:
    """A node's answer to enrollment: who it is and what it can train (its keys travel beside
    it, into the server's key registry)."""

    node_id: int
    partition_id: int
    user: str
    device: str
    max_width: float  # widest width its SRAM allows; 0.0 when nothing fits
    num_windows: int  # windows it holds (train and test): no update stands for more examples


@dataclass(frozen=True)
class EvalReport:
    """One user's evaluation of the global model on their own test split."""

    num_examples: int
    eval_loss: float
    eval_accuracy: float
    eval_macro_f1: float


def _record_items(obj: Any) -> dict[str, Any]:
    """Every field on the wire; an optional field left at None is left out."""
    values = ((to_wire_key(f.name), getattr(obj, f.name)) for f in fields(obj))
    return {key: value for key, value in values if value is not None}


def _from_record(cls: type[T], record: ConfigRecord | MetricRecord) -> T:
    names = {f.name for f in fields(cls)}  # type: ignore[arg-type]
    values = {from_wire_key(k): v for k, v in record.items() if from_wire_key(k) in names}
    missing = names - values.keys() - _defaults(cls)
    if missing:
        raise ValueError(f"{cls.__name__}: record lacks {sorted(to_wire_key(m) for m in missing)}")
    return cls(**values)


def _defaults(cls: type) -> set[str]:
    return {f.name for f in fields(cls) if f.default is not MISSING}


def to_config_record(obj: Any) -> ConfigRecord:
    return ConfigRecord(_record_items(obj))


def to_metric_record(obj: Any) -> MetricRecord:
    return MetricRecord(_record_items(obj))


def instructions_from_config(config: ConfigRecord) -> TrainInstructions:
    return _from_record(TrainInstructions, config)


def eval_instructions_from_config(config: ConfigRecord) -> EvalInstructions:
    return _from_record(EvalInstructions, config)


def identity_from_record(record: ConfigRecord) -> ClientIdentity:
    return _from_record(ClientIdentity, record)


def eval_report_from_record(record: MetricRecord) -> EvalReport:
    return _from_record(EvalReport, record)


def message_kind(message: Any) -> str:
    """A message's type without its action suffix: "train", "evaluate", "query", ..."""
    return str(message.metadata.message_type).split(".")[0]


def record_to_bytes(content: RecordDict) -> bytes:
    """Serialize records with Flower's protobuf format (no pickle anywhere)."""
    return bytes(recorddict_to_proto(content).SerializeToString())


def record_from_bytes(data: bytes) -> RecordDict:
    """Parse ``record_to_bytes`` output; malformed bytes raise (DecodeError or ValueError)."""
    return recorddict_from_proto(ProtoRecordDict.FromString(data))


def state_to_arrays(state: dict[str, torch.Tensor]) -> ArrayRecord:
    """A state dict as an ArrayRecord, in the state dict's order."""
    return ArrayRecord({k: Array(v.detach().cpu().numpy()) for k, v in state.items()})


def arrays_to_state(record: ArrayRecord) -> dict[str, torch.Tensor]:
    """An ArrayRecord as a state dict of (writable) CPU tensors."""
    return {k: torch.from_numpy(np.array(v.numpy(), copy=True)) for k, v in record.items()}


def arrays_to_numpy(record: ArrayRecord) -> dict[str, np.ndarray]:
    return {k: v.numpy() for k, v in record.items()}


def numpy_to_arrays(state: dict[str, np.ndarray]) -> ArrayRecord:
    # np.asarray keeps 0-d arrays 0-d (np.ascontiguousarray would make them (1,))
    return ArrayRecord({k: Array(np.asarray(v, order="C")) for k, v in state.items()})


def arrays_nbytes(record: ArrayRecord) -> int:
    """Bytes of array payload in a record (what the wire carries, before framing)."""
    return sum(len(array.data) for array in record.values())


def content_nbytes(content: RecordDict) -> int:
    """Payload bytes of a message: every array, plus bytes values in config records
    (where compressed or sealed updates travel)."""
    arrays = sum(arrays_nbytes(record) for record in content.array_records.values())
    blobs = sum(
        len(value)
        for record in content.config_records.values()
        for value in record.values()
        if isinstance(value, bytes)
    )
    return arrays + blobs


def train_reply(
    state: dict[str, torch.Tensor],
    report: TrainReport,
    identity: ClientIdentity,
    trained: list[str],
) -> RecordDict:
    """An update: the (sub-)model's state, metrics, identity and the keys training changed."""
    return RecordDict(
        {
            ARRAYS_KEY: state_to_arrays(state),
            METRICS_KEY: to_metric_record(report),
            CLIENT_KEY: to_config_record(identity),
            TRAINED_KEY: ConfigRecord({"names": list(trained)}),
        }
    )


def personal_names(content: RecordDict) -> list[str]:
    """State entries a train message says the node keeps to itself (never sent up)."""
    config = content.config_records.get(CONFIG_KEY)
    names = None if config is None else config.get(PERSONAL_NAMES_KEY)
    if names is None:
        return []
    if not isinstance(names, list):
        raise ValueError(f"'{PERSONAL_NAMES_KEY}' holds {type(names).__name__}, not a list")
    return [str(name) for name in names]


def trained_names(content: RecordDict) -> list[str] | None:
    """Keys the client's training changed, or None if the reply does not say."""
    record = content.config_records.get(TRAINED_KEY)
    if record is None:
        return None
    names = record["names"]
    if not isinstance(names, list):
        raise ValueError(f"'{TRAINED_KEY}' record holds {type(names).__name__}, not a list")
    return [str(name) for name in names]


def metric_value(content: RecordDict, name: str, default: float | None = None) -> float:
    """A number from the reply's ``metrics`` record; ``default`` if absent (None: required)."""
    record = content.metric_records.get(METRICS_KEY)
    value = default if record is None or name not in record else record[name]
    if not isinstance(value, int | float):
        raise ValueError(f"'{METRICS_KEY}' record: {name!r} is {value!r}, not a number")
    return float(value)


def node_info_record(info: NodeInfo, keys: DevicePublicKeys, proof: bytes) -> RecordDict:
    """An enrollment reply: the node's info, its device's public keys and the proof that it
    holds the private signing key (its signature over the server's challenge)."""
    key_record = ConfigRecord({"signing": keys.signing, "exchange": keys.exchange, "proof": proof})
    return RecordDict({NODE_KEY: to_config_record(info), NODE_KEYS_KEY: key_record})


def node_info_from_record(content: RecordDict) -> tuple[NodeInfo, DevicePublicKeys, bytes]:
    """The node's info, public keys and proof; ValueError when any is missing or malformed."""
    info = _from_record(NodeInfo, content.config_records[NODE_KEY])
    record = content.config_records.get(NODE_KEYS_KEY)
    if record is None:
        raise ValueError(f"enrollment reply of node {info.node_id} has no {NODE_KEYS_KEY!r}")
    signing, exchange, proof = record.get("signing"), record.get("exchange"), record.get("proof")
    if not all(isinstance(value, bytes) for value in (signing, exchange, proof)):
        raise ValueError(
            f"{NODE_KEYS_KEY!r} of node {info.node_id} must hold two byte keys and a byte proof"
        )
    return info, DevicePublicKeys(signing, exchange), proof  # type: ignore[arg-type, return-value]


def node_claims(record: ConfigRecord) -> bytes:
    """The canonical bytes of an enrollment record (``NODE_KEY``): what the node signs."""
    return canonical_bytes(RecordDict({NODE_KEY: record}))


def canonical_bytes(content: RecordDict, leave_out: tuple[str, ...] = ()) -> bytes:
    """``content`` serialized with records and their items in sorted order: the same bytes
    for the same records, whatever order they were built or carried in."""
    ordered = RecordDict()
    for key in sorted(k for k in content if k not in leave_out):
        record = content[key]
        ordered[key] = type(record)(dict(sorted(record.items())))  # type: ignore[arg-type]
    return record_to_bytes(ordered)


def eval_reply(report: EvalReport, identity: ClientIdentity) -> RecordDict:
    return RecordDict(
        {METRICS_KEY: to_metric_record(report), CLIENT_KEY: to_config_record(identity)}
    )


def decline_reply(reason: str, identity: ClientIdentity) -> RecordDict:
    """A reply that carries no update: the client could not train (e.g. nothing fits SRAM)."""
    return RecordDict(
        {DECLINE_KEY: ConfigRecord({"reason": reason}), CLIENT_KEY: to_config_record(identity)}
    )


def decline_reason(content: RecordDict) -> str | None:
    """The decline reason carried by a reply, or None for an ordinary reply."""
    record = content.config_records.get(DECLINE_KEY)
    return None if record is None else str(record["reason"])


def config_int(config: ConfigRecord, key: str) -> int:
    """``config[key]`` as an int; missing or not a whole number -> ValueError naming the key."""
    value = config.get(key)
    if isinstance(value, bool) or not isinstance(value, int | float | str):
        raise ValueError(f"config {key!r} must be an int, got {value!r}")
    return int(value)


def config_float(config: ConfigRecord, key: str) -> float:
    value = config.get(key)
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ValueError(f"config {key!r} must be a number, got {value!r}")
    return float(value)


def config_bytes(config: ConfigRecord, key: str) -> bytes:
    value = config.get(key)
    if not isinstance(value, bytes):
        raise ValueError(f"config {key!r} must be bytes, got {type(value).__name__}")
    return value


def config_ints(config: ConfigRecord, key: str) -> list[int]:
    """A list of ints (an absent key: empty)."""
    value = config.get(key, [])
    if not isinstance(value, list) or not all(
        isinstance(v, int) and not isinstance(v, bool) for v in value
    ):
        raise ValueError(f"config {key!r} must be a list of ints")
    return [int(v) for v in value]  # type: ignore[arg-type]


def config_blobs(config: ConfigRecord, key: str, length: int) -> list[bytes]:
    """A list of exactly ``length`` byte strings."""
    value = config.get(key, [])
    if (
        not isinstance(value, list)
        or len(value) != length
        or not all(isinstance(v, bytes) for v in value)
    ):
        raise ValueError(f"config {key!r} must be a list of {length} byte strings")
    return [bytes(v) for v in value]  # type: ignore[arg-type]


def saved_personal_state(data: bytes) -> dict[str, torch.Tensor]:
    """The personal entries (FedPer/FedRep heads, FedBN statistics) in a node's saved state
    (``clients.state_store``); empty when the node keeps none."""
    record = record_from_bytes(data).array_records.get(PERSONAL_STATE_KEY)
    return {} if record is None else arrays_to_state(record)


def bn_stats_request(
    state: dict[str, torch.Tensor], widths: list[float], batch_size: int
) -> RecordDict:
    """A static-BatchNorm query: the global model, the widths to compute and the batch size."""
    config = ConfigRecord({"widths": [float(w) for w in widths], "batch-size": int(batch_size)})
    return RecordDict({ARRAYS_KEY: state_to_arrays(state), BN_STATS_KEY: config})


def bn_stats_request_from_record(
    content: RecordDict,
) -> tuple[dict[str, torch.Tensor], list[float], int]:
    """(global state, widths, batch size) of a static-BatchNorm query."""
    config = content.config_records.get(BN_STATS_KEY)
    if config is None or ARRAYS_KEY not in content.array_records:
        raise ValueError(f"a {BN_STATS_ACTION} query needs {ARRAYS_KEY!r} and {BN_STATS_KEY!r}")
    widths = config.get("widths")
    if not isinstance(widths, list) or not widths:
        raise ValueError(f"{BN_STATS_KEY!r} must list the widths, got {widths!r}")
    state = arrays_to_state(content.array_records[ARRAYS_KEY])
    return state, [float(w) for w in widths], config_int(config, "batch-size")  # type: ignore[arg-type]


def bn_sums_reply(sums: dict[float, LayerSums]) -> RecordDict:
    """A node's BatchNorm sums, one ArrayRecord per width."""
    records: dict[str, ArrayRecord | MetricRecord | ConfigRecord] = {}
    for width, layers in sums.items():
        arrays: dict[str, np.ndarray] = {}
        for name, s in layers.items():
            arrays[f"{name}/count"] = np.array([s.count], dtype=np.float64)
            arrays[f"{name}/total"] = s.total.numpy()
            arrays[f"{name}/squares"] = s.squares.numpy()
        records[f"{BN_SUMS_PREFIX}{width:g}"] = numpy_to_arrays(arrays)
    return RecordDict(records)


def bn_sums_from_reply(content: RecordDict) -> dict[float, LayerSums]:
    """The sums of a `bn_sums_reply`; ValueError naming the defect when malformed."""
    out: dict[float, LayerSums] = {}
    for key, record in content.array_records.items():
        if not key.startswith(BN_SUMS_PREFIX):
            continue
        width = float(key.removeprefix(BN_SUMS_PREFIX))
        arrays = arrays_to_numpy(record)
        layers = {name.rpartition("/")[0] for name in arrays}
        sums: LayerSums = {}
        for layer in layers:
            parts = [arrays.get(f"{layer}/{part}") for part in ("count", "total", "squares")]
            if any(p is None for p in parts):
                raise ValueError(f"{key}: layer {layer!r} lacks count, total or squares")
            count, total, squares = (np.asarray(p, dtype=np.float64) for p in parts)
            if count.shape != (1,) or total.shape != squares.shape or total.ndim != 1:
                raise ValueError(f"{key}: layer {layer!r} has malformed shapes")
            if not (np.isfinite(count).all() and np.isfinite(total).all()
                    and np.isfinite(squares).all()):  # fmt: skip
                raise ValueError(f"{key}: layer {layer!r} has non-finite sums")
            sums[layer] = MomentSums(
                float(count[0]), torch.from_numpy(total.copy()), torch.from_numpy(squares.copy())
            )
        out[width] = sums
    return out
