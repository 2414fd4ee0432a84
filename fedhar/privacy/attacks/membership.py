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
        torch.manual_seed(seed + index)  # each shadow's initialization is its own
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
    fallback = observed.mean(0)
    mu_in = np.array(
        [
            observed[inside[:, i], i].mean() if inside[:, i].any() else fallback[i]
            for i in range(len(y))
        ]
    )
    mu_out = np.array(
        [
            observed[~inside[:, i], i].mean() if (~inside[:, i]).any() else fallback[i]
            for i in range(len(y))
        ]
    )
    # one variance per side, of the confidences around each window's own mean: few shadows
    # cannot estimate a variance per window, and pooling raw values would add the spread
    # between windows
    sigma_in = (observed - mu_in)[inside].std() + 1e-6
    sigma_out = (observed - mu_out)[~inside].std() + 1e-6
    return stats.norm.logpdf(scores, mu_in, sigma_in) - stats.norm.logpdf(scores, mu_out, sigma_out)


def roc_auc(scores: np.ndarray, is_member: np.ndarray) -> float:
    """Area under the ROC curve: the chance a member outscores a non-member (ties half)."""
    members, others = scores[is_member], scores[~is_member]
    if not len(members) or not len(others):
        raise ValueError("AUC needs both members and non-members")
    ranks = stats.rankdata(np.concatenate([members, others]))
    return float(
        (ranks[: len(members)].sum() - len(members) * (len(members) + 1) / 2)
        / (len(members) * len(others))
    )


def tpr_at_fpr(scores: np.ndarray, is_member: np.ndarray, fpr: float = 0.001) -> float:
    """Share of members caught at the threshold that flags at most ``fpr`` of the non-members
    (with fewer than 1 / ``fpr`` non-members: at false-positive rate 0)."""
    others = np.sort(scores[~is_member])[::-1]
    allowed = int(np.floor(fpr * len(others)))
    threshold = others[allowed] if allowed < len(others) else -np.inf
    return float(np.mean(scores[is_member] > threshold))
