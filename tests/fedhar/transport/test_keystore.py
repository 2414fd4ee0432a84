"""The run key store: OS-random keys kept on disk, created once, race-free; seeded on request."""

from __future__ import annotations

import multiprocessing
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest

from fedhar.transport.keys import DeviceIdentity, ServerKeyPair
from fedhar.transport.keystore import MAGIC, RunKeys


def test_os_keys_are_created_once_private_to_the_owner_and_kept(tmp_path: Path) -> None:
    store = RunKeys(tmp_path / "keys")
    device, server = store.device(3), store.server()
    assert store.device(3).public_keys() == device.public_keys()
    assert store.server().fingerprint() == server.fingerprint()
    for name in ("device-3.key", "server.key"):
        path = tmp_path / "keys" / name
        assert path.stat().st_mode & 0o777 == 0o600
        assert path.read_bytes().startswith(MAGIC) and len(path.read_bytes()) == len(MAGIC) + 64
    assert store.device(4).public_keys() != device.public_keys()
    assert sorted(p.name for p in (tmp_path / "keys").iterdir()) == [
        "device-3.key", "device-4.key", "server.key",
    ]  # fmt: skip


def test_two_runs_never_share_keys(tmp_path: Path) -> None:
    first, second = RunKeys(tmp_path / "a"), RunKeys(tmp_path / "b")
    assert first.device(0).public_keys() != second.device(0).public_keys()
    assert first.server().fingerprint() != second.server().fingerprint()


def test_seeded_keys_are_the_seed_derived_ones_and_touch_no_disk(tmp_path: Path) -> None:
    store = RunKeys(tmp_path / "keys", seed=9)
    assert store.device(2).public_keys() == DeviceIdentity.from_seed(9, 2).public_keys()
    assert store.server().fingerprint() == ServerKeyPair.from_seed(9).fingerprint()
    assert not (tmp_path / "keys").exists()


def test_private_bytes_round_trip() -> None:
    identity = DeviceIdentity.generate()
    again = DeviceIdentity.from_private_bytes(identity.private_bytes())
    assert again.public_keys() == identity.public_keys()
    with pytest.raises(ValueError, match="64 bytes"):
        DeviceIdentity.from_private_bytes(b"short")


@pytest.mark.parametrize(
    "content", [b"", b"not a key file", MAGIC + b"\x00" * 10], ids=["empty", "alien", "truncated"]
)
def test_a_damaged_key_file_names_itself_and_the_fix(tmp_path: Path, content: bytes) -> None:
    (tmp_path / "device-1.key").write_bytes(content)
    with pytest.raises(ValueError, match=r"device-1\.key is damaged.*resume=false"):
        RunKeys(tmp_path).device(1)


def _create_after(barrier: Any, directory: str, results: Any) -> None:
    barrier.wait()  # every process reaches the creation at the same moment
    results.put(RunKeys(Path(directory)).device(7).signing_public_bytes())


def test_processes_racing_to_create_a_key_all_get_the_same_one(tmp_path: Path) -> None:
    context = multiprocessing.get_context("spawn")
    barrier, results = context.Barrier(4), context.Queue()
    workers = [
        context.Process(target=_create_after, args=(barrier, str(tmp_path), results))
        for _ in range(4)
    ]
    for worker in workers:
        worker.start()
    keys = {results.get(timeout=60) for _ in workers}
    for worker in workers:
        worker.join(timeout=60)
    assert len(keys) == 1
    assert [p.name for p in tmp_path.iterdir()] == ["device-7.key"]  # no temp files left


def test_threads_racing_in_one_process_get_the_same_key(tmp_path: Path) -> None:
    with ThreadPoolExecutor(max_workers=8) as pool:
        keys = set(pool.map(lambda _: RunKeys(tmp_path).device(3).signing_public_bytes(),
                            range(32)))  # fmt: skip
    assert len(keys) == 1 and [p.name for p in tmp_path.iterdir()] == ["device-3.key"]
