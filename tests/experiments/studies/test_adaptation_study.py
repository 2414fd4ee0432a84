"""The adaptation report on a tiny finished run: who is scored on what."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
from omegaconf import OmegaConf

from experiments.compose import federation_spec
from experiments.studies import adaptation
from fedhar.federation import open_federation
from tests.helpers.app_runs import run_in_process


def _rows(path: Path) -> list[dict[str, str]]:
    with path.open() as f:
        return list(csv.DictReader(f))


def test_report_scores_clients_and_held_out_users_apart(tmp_path: Path, in_process_grid) -> None:
    run_dir = tmp_path / "run"
    run_in_process(run_dir, in_process_grid, "num_rounds=2 dataset.options.num_users=6 "
                   "federation.holdout_fraction=0.34", num_nodes=4)  # fmt: skip
    result = adaptation.report(run_dir, tmp_path / "report", None, seed=0)
    federation = open_federation(federation_spec(OmegaConf.load(run_dir / "config.yaml")))
    clients = {r["user"] for r in _rows(tmp_path / "report" / "per_user.csv")}
    new = {r["user"] for r in _rows(tmp_path / "report" / "new_users.csv")}
    assert clients <= set(federation.clients) and new
    assert new <= set(federation.holdout.users) and not new & set(federation.clients)
    for method in ("global", "ft_all", "ft_head", "ft_bias", "local_only"):
        assert method in result["summary"]
        stats = result["summary"][method]
        assert stats["mean"]["low"] <= stats["mean"]["value"] <= stats["mean"]["high"]
    curve = result["new_users"]["mean_macro_f1"]
    assert {"k0_global", "k1_ft_all", "k10_ft_head", "k5_local_only"} <= set(curve)
    assert all(0 <= v <= 1 for v in curve.values() if np.isfinite(v))
    saved = json.loads((tmp_path / "report" / "summary.json").read_text())
    assert saved["users"] == result["users"] == len(clients)
    for plot in ("paired.png", "cdf.png", "new_users.png"):
        assert (tmp_path / "report" / plot).stat().st_size > 0
    again = adaptation.report(run_dir, tmp_path / "again", None, seed=0)  # reproducible
    assert again["summary"] == result["summary"]


def test_personal_layers_of_a_fedper_run_are_scored(tmp_path: Path, in_process_grid) -> None:
    run_dir = tmp_path / "run"
    run_in_process(run_dir, in_process_grid, "num_rounds=2 strategy=fedper fleet=none")
    heads = adaptation.personal_state(run_dir, 0)
    assert heads and all(name.startswith("head.") for name in heads)
    result = adaptation.report(run_dir, tmp_path / "report", None, seed=0)
    assert "personal" in result["summary"]
    rows = _rows(tmp_path / "report" / "per_user.csv")
    assert any(r["personal"] != r["global"] for r in rows)
