"""User re-identification: which user produced a window, from the model's embeddings.

The attacker holds a few labelled-by-user windows of every user (enrollment) and the model;
each user's centroid of the head's input (the model's embedding) names the nearest user for a
new window by cosine similarity. Accuracy against chance (1 / users) measures how much of the
user's identity the shared model's features carry.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import torch
from torch import nn


def embeddings(model: nn.Module, x: np.ndarray, layer: str = "head") -> np.ndarray:
    """The input of ``layer`` (the classifier head) for each window."""
    captured: list[torch.Tensor] = []
    module = dict(model.named_modules())[layer]
    handle = module.register_forward_hook(lambda _m, inputs, _o: captured.append(inputs[0]))
    model.eval()
    try:
        with torch.no_grad():
            model(torch.as_tensor(x))
    finally:
        handle.remove()
    return captured[0].double().numpy()


def _unit(v: np.ndarray) -> np.ndarray:
    return v / np.maximum(np.linalg.norm(v, axis=-1, keepdims=True), 1e-12)


def reidentification_accuracy(
    model: nn.Module, enrol: Mapping[str, np.ndarray], probe: Mapping[str, np.ndarray]
) -> float:
    """Share of ``probe`` windows whose nearest enrolled user centroid is their own user."""
    users = sorted(enrol)
    centroids = _unit(np.stack([_unit(embeddings(model, enrol[u])).mean(0) for u in users]))
    hits, total = 0, 0
    for index, user in enumerate(users):
        if user not in probe or not len(probe[user]):
            continue
        guesses = np.argmax(_unit(embeddings(model, probe[user])) @ centroids.T, axis=1)
        hits += int((guesses == index).sum())
        total += len(guesses)
    return hits / max(total, 1)
