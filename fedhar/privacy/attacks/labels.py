"""Labels from the head's update: one window's label (iDLG), a batch's label counts (LLG).

For cross-entropy, the gradient of the head's bias is the batch mean of ``softmax - onehot``.
One window: only the true class is negative, so the label is where the bias update
(``-lr`` times the gradient) is largest (Zhao et al. 2020, iDLG). A batch of B windows: the
count of class k is ``B * (mean_p_k - g_k)``, where the attacker estimates the batch's mean
prediction ``mean_p`` by running the model it sent on windows of its own (Wainakh et al. 2022,
LLG; anchor: Bock et al. 2025 recover HAR labels well above 90%).
"""

from __future__ import annotations

import copy

import numpy as np
import torch
from torch import nn

from fedhar.privacy.observe import Update

HEAD_BIAS = "head.bias"


def label_of_window(update: Update, head_bias: str = HEAD_BIAS) -> int:
    """The label of a single-window update: the class whose head bias rose most."""
    return int(torch.argmax(update[head_bias]))


def label_counts(
    model: nn.Module,
    update: Update,
    batch_size: int,
    lr: float,
    auxiliary: torch.Tensor,
    head_bias: str = HEAD_BIAS,
) -> np.ndarray:
    """Per-class counts of a one-step (FedSGD) batch update of ``batch_size`` windows.

    ``auxiliary`` are windows the attacker holds (any activity); their mean prediction under
    ``model`` (train mode, as the client ran it) stands in for the batch's. Counts are
    rounded to integers that sum to ``batch_size``.
    """
    gradient = -update[head_bias].double().numpy() / lr
    probe = copy.deepcopy(model).train()  # train mode as the client; BN statistics not ours
    with torch.no_grad():
        mean_p = torch.softmax(probe(auxiliary), dim=1).double().mean(0).numpy()
    estimate = batch_size * (mean_p - gradient)
    counts = np.clip(np.floor(estimate), 0, batch_size).astype(int)
    while counts.sum() > batch_size:  # noisy estimates: take from the least supported class
        counts[np.argmin(np.where(counts > 0, estimate - counts, np.inf))] -= 1
    while counts.sum() < batch_size:  # largest remainders first, to sum to the batch size
        counts[np.argmax(estimate - counts)] += 1
    return counts


def count_accuracy(estimated: np.ndarray, true: np.ndarray) -> float:
    """Share of the batch's labels the estimate gets right: 1 - |errors| / (2 B)."""
    return 1.0 - float(np.abs(estimated - true).sum()) / (2 * max(int(true.sum()), 1))
