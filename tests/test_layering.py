"""The design's rooms and what each may import (docs/ARCHITECTURE.md keeps the same table).

Every Python file of the project belongs to one room. A room may import the standard library,
the third-party packages listed for it and the fedhar rooms listed for it; anything else is a
violation. The core never sees Flower (except ``fedhar/wire.py``), Hydra or the app layers.
"""

from __future__ import annotations

import ast
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
CORE = ("fedhar.data", "fedhar.models", "fedhar.device", "fedhar.quant", "fedhar.partial",
        "fedhar.transport", "fedhar.privacy", "fedhar.adapt", "fedhar.deploy",
        "fedhar")  # fmt: skip


@dataclass(frozen=True)
class Room:
    """A folder (or one file) of the project and the imports allowed in it."""

    third_party: frozenset[str]
    project: tuple[str, ...]  # module prefixes of this project; "fedhar" alone: top level


def _room(third_party: str, *project: str) -> Room:
    return Room(frozenset(third_party.split()), project)


ROOMS: dict[str, Room] = {  # most specific path first
    "fedhar/wire.py": _room("flwr numpy torch", "fedhar", "fedhar.partial", "fedhar.transport"),
    "fedhar/data": _room("numpy torch", "fedhar.data"),
    "fedhar/models": _room("torch", "fedhar.models"),
    "fedhar/quant": _room("numpy torch", "fedhar.quant", "fedhar"),
    "fedhar/partial": _room("numpy torch", "fedhar.partial", "fedhar.models", "fedhar"),
    "fedhar/transport": _room("cryptography numpy torch", "fedhar.transport"),
    "fedhar/privacy": _room(
        "numpy torch scipy dp_accounting opacus",
        "fedhar.privacy",
        "fedhar.models",
        "fedhar.transport",
        "fedhar",
    ),
    "fedhar/adapt": _room(
        "numpy torch",
        "fedhar.adapt",
        "fedhar.device",
        "fedhar.data",
        "fedhar.models",
        "fedhar",
    ),
    "fedhar/deploy": _room(
        "numpy torch",
        "fedhar.deploy",
        "fedhar.device",
        "fedhar.data",
        "fedhar.models",
        "fedhar.quant",
        "fedhar",
    ),
    "fedhar/device": _room(
        "numpy torch yaml",
        "fedhar.device",
        "fedhar.models",
        "fedhar.quant",
        "fedhar.partial",
        "fedhar.data",
        "fedhar",
    ),
    "fedhar": _room("numpy torch", *CORE),
    "clients": _room("flwr numpy torch", *CORE, "clients"),
    "strategies": _room("flwr numpy torch", *CORE, "strategies"),
    "experiments/studies": _room(
        "flwr hydra omegaconf numpy torch matplotlib rich",
        *CORE,
        "clients",
        "strategies",
        "experiments",
    ),
    "experiments/bench": _room(
        "flwr hydra omegaconf numpy torch matplotlib rich ray psutil",
        *CORE,
        "clients",
        "strategies",
        "experiments",
    ),
    "experiments/runtime": _room(
        "flwr ray omegaconf numpy torch",
        *CORE,
        "clients",
        "experiments.runtime",
        "experiments.server",
    ),
    "experiments": _room(  # the composition root: never the studies or the benchmarks
        "flwr hydra omegaconf numpy torch matplotlib rich wandb",
        *CORE,
        "clients",
        "strategies",
        "experiments.compose",
        "experiments.privacy",
        "experiments.validate",
        "experiments.run_dirs",
        "experiments.server",
        "experiments.run",
        "experiments.flower_app",
        "experiments.sinks",
        "experiments.sweep",
        "experiments.compare",
        "experiments.report",
        "experiments.plots",
        "experiments.runtime",
    ),
}
OWN = ("fedhar", "clients", "strategies", "experiments", "tests")


def room_of(path: Path) -> str:
    relative = path.relative_to(ROOT).as_posix()
    for name in ROOMS:
        if relative == name or relative.startswith(name + "/"):
            return name
    raise LookupError(f"{relative} is in no room; add its folder to ROOMS and ARCHITECTURE.md")


def imports(source: str) -> set[str]:
    """Absolute modules that ``source`` imports (relative imports are not used here)."""
    names: set[str] = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
    return names


def _within(module: str, prefix: str) -> bool:
    if prefix == "fedhar":  # the top level only: fedhar.train, fedhar.wire, ...
        return (
            module.count(".") == 1
            and module.startswith("fedhar.")
            and not any(module == room or module.startswith(room + ".") for room in CORE[:-1])
        )
    return module == prefix or module.startswith(prefix + ".")


def violations(source: str, room: Room) -> list[str]:
    """Imports of ``source`` that ``room`` does not allow."""
    bad = []
    for module in sorted(imports(source)):
        top = module.split(".")[0]
        if top in sys.stdlib_module_names or top == "__future__":
            continue
        if top in OWN:
            if not any(_within(module, prefix) for prefix in room.project):
                bad.append(module)
        elif top not in room.third_party:
            bad.append(module)
    return bad


SOURCES = sorted(
    path for layer in ("fedhar", "clients", "strategies", "experiments")
    for path in (ROOT / layer).rglob("*.py")
)  # fmt: skip


@pytest.mark.parametrize("path", SOURCES, ids=lambda p: str(p.relative_to(ROOT)))
def test_every_module_imports_only_what_its_room_allows(path: Path) -> None:
    room = ROOMS[room_of(path)]
    bad = violations(path.read_text(), room)
    assert not bad, f"{path.relative_to(ROOT)} ({room_of(path)}) imports {bad}"


def test_the_check_catches_each_kind_of_violation() -> None:
    device = ROOMS["fedhar/device"]
    assert violations("import flwr\nfrom hydra import compose", device) == ["flwr", "hydra"]
    assert violations("from strategies.fleet import FleetSimulation", device) == [
        "strategies.fleet"
    ]
    assert violations("from fedhar.transport.keys import KeyRegistry", device) == [
        "fedhar.transport.keys"
    ]
    assert violations("from fedhar.wire import NodeInfo", ROOMS["fedhar/data"]) == ["fedhar.wire"]
    root = ROOMS["experiments"]
    assert violations("from experiments.studies.baselines import main", root) == [
        "experiments.studies.baselines"
    ]
    assert violations("import json\nimport numpy\nfrom fedhar.device.costs import x", device) == []


def test_instantiate_is_called_only_in_the_composition_root() -> None:
    for layer in ("fedhar", "clients", "strategies"):
        for path in sorted((ROOT / layer).rglob("*.py")):
            assert "instantiate(" not in path.read_text(), f"{path.relative_to(ROOT)} instantiates"


def test_every_package_says_what_lives_there() -> None:
    for init in sorted((ROOT / "fedhar").rglob("__init__.py")):
        docstring = ast.get_docstring(ast.parse(init.read_text()))
        assert docstring and len(docstring) > 80, f"{init.relative_to(ROOT)} needs a docstring"
