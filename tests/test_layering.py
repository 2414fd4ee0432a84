"""The design's import rules: the core stays free of Flower, Hydra and the app layers."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
FLOWER_ALLOWED = {ROOT / "fedhar" / "wire.py"}


def _imports(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(), filename=str(path))
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module.split(".")[0])
    return names


FEDHAR_FILES = sorted((ROOT / "fedhar").rglob("*.py"))


@pytest.mark.parametrize("path", FEDHAR_FILES, ids=lambda p: str(p.relative_to(ROOT)))
def test_core_imports_no_flower_hydra_or_app_layers(path: Path) -> None:
    imported = _imports(path)
    forbidden = {"hydra", "omegaconf", "clients", "strategies", "experiments"}
    if path not in FLOWER_ALLOWED:
        forbidden.add("flwr")
    assert not imported & forbidden, f"{path.relative_to(ROOT)} imports {imported & forbidden}"


@pytest.mark.parametrize("layer", ["clients", "strategies"])
def test_app_layers_do_not_import_the_composition_root(layer: str) -> None:
    for path in sorted((ROOT / layer).rglob("*.py")):
        assert "experiments" not in _imports(path), f"{path.relative_to(ROOT)} imports experiments"


def test_instantiate_is_called_only_in_the_composition_root() -> None:
    for layer in ("fedhar", "clients", "strategies"):
        for path in sorted((ROOT / layer).rglob("*.py")):
            assert "instantiate(" not in path.read_text(), f"{path.relative_to(ROOT)} instantiates"
