"""Membership inference on a released model: did this window train it?

- **Loss threshold** (Yeom et al. 2018): members have lower loss; the score is ``-loss``.
- **LiRA** (Carlini et al. 2022, online): shadow models trained on random halves of a
  population the attacker holds give, per window, the distribution of the model's confidence
  ``log(p_y / (1 - p_y))`` when the window is in the training set and when it is out; the
  score is the likelihood ratio of the target model's confidence under the two Gaussians.

Scores are higher for members; ``roc_auc`` and ``tpr_at_fpr`` (at 0.1% FPR, the regime
that matters for privacy) summarize them.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
from scipy import stats
from torch import nn

from fedhar.train import TrainConfig, train_local


def confidences(model: nn.Module, x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """``log(p_y / (1 - p_y))`` per window, computed stably from the logits."""
    model.eval()
    with torch.no_grad():
        logits = model(torch.as_tensor(x)).double()
    true = logits[torch.arange(len(y)), torch.as_tensor(y)]
    others = logits.clone()
    others[torch.arange(len(y)), torch.as_tensor(y)] = -torch.inf
    return (true - torch.logsumexp(others, dim=1)).numpy()


def loss_scores(model: nn.Module, x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """``-cross_entropy`` per window."""
    model.eval()
    with torch.no_grad():
        losses = nn.functional.cross_entropy(
            model(torch.as_tensor(x)), torch.as_tensor(y), reduction="none"
        )
    return -losses.double().numpy()


@dataclass(frozen=True)
class Shadow:
    """A shadow model and which of the population's windows trained it."""

    model: nn.Module
    trained_on: np.ndarray  # bool per population window


def train_shadows(
    build: Callable[[], nn.Module],
    x: np.ndarray,
    y: np.ndarray,
    count: int,
    config: TrainConfig,
    seed: int,
) -> list[Shadow]:
    """``count`` shadow models, each trained on a random half of ``(x, y)``; every window is
    in about half of them."""
    rng = np.random.default_rng(seed)
    shadows = []
    for index in range(count):
        chosen = rng.random(len(y)) < 0.5
        model = build()
        train_local(model, x[chosen], y[chosen], config, seed + index)
        shadows.append(Shadow(model, chosen))
    return shadows


def lira_scores(
    target: nn.Module, shadows: list[Shadow], x: np.ndarray, y: np.ndarray
) -> np.ndarray:
    """Online LiRA scores of ``target`` on the population ``(x, y)`` the shadows split."""
    observed = np.stack([confidences(s.model, x, y) for s in shadows])  # shadows x windows
    inside = np.stack([s.trained_on for s in shadows])
    scores = confidences(target, x, y)
    out = np.empty(len(y))
    global_in = observed[inside].std() + 1e-6
    global_out = observed[~inside].std() + 1e-6
    for i in range(len(y)):
        ins, outs = observed[inside[:, i], i], observed[~inside[:, i], i]
        mu_in = ins.mean() if len(ins) else observed[:, i].mean()
        mu_out = outs.mean() if len(outs) else observed[:, i].mean()
        out[i] = stats.norm.logpdf(scores[i], mu_in, global_in) - stats.norm.logpdf(
            scores[i], mu_out, global_out
        )
    return out


def roc_auc(scores: np.ndarray, is_member: np.ndarray) -> float:
    """Area under the ROC curve: the chance a member outscores a non-member (ties half)."""
    members, others = scores[is_member], scores[~is_member]
    ranks = stats.rankdata(np.concatenate([members, others]))
    return float((ranks[: len(members)].sum() - len(members) * (len(members) + 1) / 2)
                 / (len(members) * len(others)))  # fmt: skip


def tpr_at_fpr(scores: np.ndarray, is_member: np.ndarray, fpr: float = 0.001) -> float:
    """Share of members caught at the threshold that flags ``fpr`` of the non-members."""
    others = np.sort(scores[~is_member])[::-1]
    allowed = int(np.floor(fpr * len(others)))
    threshold = others[allowed] if allowed < len(others) else -np.inf
    return float(np.mean(scores[is_member] > threshold))
