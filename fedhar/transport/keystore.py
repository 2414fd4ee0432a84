"""Where a run's private keys come from, and where they are kept.

By default every key is drawn from the OS random generator the first time it is needed and
kept in the run directory (``keys/server.key``, ``keys/device-<id>.key``: 64 raw secret bytes
behind a magic line, readable by the owner only), so a resumed run, and every worker process
of it, uses the same keys. A key file is created atomically: when two processes race to
create one, both end up with the winner's keys.

``seed`` set (``transport.seeded_keys=true``) derives every key from the run seed instead:
reproducible across directories, and insecure, because the seed is in every run's
``config.yaml``.
"""

from __future__ import annotations

import contextlib
import os
import secrets
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

from fedhar.transport.keys import DeviceIdentity, KeyPairs, ServerKeyPair

KEYS_DIR = "keys"  # under the run directory
FINGERPRINT_FILE = "server.fingerprint"  # the server key's public fingerprint, for clients
MAGIC = b"fedhar-private-keys-v1\n"
_K = TypeVar("_K", bound=KeyPairs)


def _create(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` unless it exists; mode 0600; never a half-written file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(8)}.tmp")
    descriptor = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(descriptor, "wb") as file:
        file.write(data)  # no fsync: keys of a simulated fleet need not survive a power cut
    try:
        with contextlib.suppress(FileExistsError):  # another process created the key first
            os.link(tmp, path)
    finally:
        tmp.unlink()


def _load_or_create(path: Path, kind: type[_K]) -> _K:
    if not path.exists():
        _create(path, MAGIC + kind.generate().private_bytes())
    data = path.read_bytes()
    try:
        if not data.startswith(MAGIC):
            raise ValueError("it does not start with the fedhar key header")
        return kind.from_private_bytes(data[len(MAGIC) :])
    except ValueError as error:
        raise ValueError(
            f"key file {path} is damaged ({error}); delete it, or start the run afresh with "
            "resume=false, to draw new keys"
        ) from None


@dataclass(frozen=True)
class RunKeys:
    """A run's key source: OS-random keys kept under ``directory``, or seed-derived keys.

    Parameters
    ----------
    directory : Path
        Where OS-random keys are kept (the run directory's ``keys/``).
    seed : int | None
        Set: derive every key from this seed instead (reproducible, insecure).
    """

    directory: Path
    seed: int | None = None

    def server(self) -> ServerKeyPair:
        """The server's key pair for this run."""
        if self.seed is not None:
            return ServerKeyPair.from_seed(self.seed)
        return _load_or_create(self.directory / "server.key", ServerKeyPair)

    def publish_server_fingerprint(self) -> str:
        """The server key's fingerprint, also written (public, no secret) for clients that
        start later on this host to pin; the server calls this when it composes the run."""
        fingerprint = self.server().fingerprint()
        if self.seed is None:
            (self.directory / FINGERPRINT_FILE).write_text(fingerprint + "\n")
        return fingerprint

    def published_server_fingerprint(self) -> str:
        """The fingerprint the server published in ``directory``; missing -> ValueError."""
        if self.seed is not None:
            return ServerKeyPair.from_seed(self.seed).fingerprint()
        path = self.directory / FINGERPRINT_FILE
        if not path.exists():
            raise ValueError(
                f"no server fingerprint at {path}: start the server first, or give clients "
                "the fingerprint the server logs (flwr run: --run-config "
                "\"server-fingerprint='<hex>'\")"
            )
        return path.read_text().strip()

    def device(self, device_id: int) -> DeviceIdentity:
        """The identity of device ``device_id`` (its partition id) in this run."""
        if self.seed is not None:
            return DeviceIdentity.from_seed(self.seed, device_id)
        return _load_or_create(self.directory / f"device-{int(device_id)}.key", DeviceIdentity)


@dataclass(frozen=True)
class ClientKeys:
    """What a device knows before it talks to the server: its keys and the server it trusts.

    ``server_fingerprint`` is pinned before the device talks to the server: handed over by
    the composition root (``fedhar`` runs), or given in the run config (``flwr run``:
    ``server-fingerprint``, else the one the server published in the run directory). A message
    cannot bring its own server keys and vouch for them, and clients never read the server's
    private key.
    """

    store: RunKeys
    server_fingerprint: str
