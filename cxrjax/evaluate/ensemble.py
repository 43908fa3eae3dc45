"""Ensembles by averaging probabilities (S1's ensemble idea, done the robust way).

S1 concatenated its three networks' outputs and trained a dense layer on top, on 248
images, and the ensemble scored far *below* its members (48% vs 93%). Averaging the
members' softmax outputs needs no training, cannot overfit, and is never worse than the
members' average log-loss. Members may use different input sizes and channels; what
must agree is the class list and the examples, in the same order.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np


def check_members_aligned(labels: Sequence[np.ndarray], names: Sequence[str]) -> None:
    """Raise if the members did not see the same examples in the same order.

    Averaging misaligned predictions is S0's diagonal-ROC bug in another form, so the
    labels every member read must be identical.
    """
    first = np.asarray(labels[0])
    for other, name in zip(labels[1:], names[1:]):
        other = np.asarray(other)
        if other.shape != first.shape or not np.array_equal(other, first):
            raise ValueError(
                f"ensemble member {name} saw different examples ({other.shape[0]} labels) than "
                f"{names[0]} ({first.shape[0]} labels): every member must be evaluated on the "
                "same dataset and split, in the same order"
            )


def average_probabilities(member_probs: Sequence[np.ndarray], weights: Sequence[float] | None = None) -> np.ndarray:
    """Weighted mean of per-member probabilities [N, K] (uniform weights by default)."""
    if not member_probs:
        raise ValueError("an ensemble needs at least one member")
    stacked = np.stack([np.asarray(p, np.float64) for p in member_probs])  # [M, N, K]
    if weights is None:
        weights = np.full(len(member_probs), 1.0 / len(member_probs))
    weights = np.asarray(weights, np.float64)
    if weights.shape != (len(member_probs),) or np.any(weights < 0) or weights.sum() <= 0:
        raise ValueError(f"ensemble weights must be {len(member_probs)} non-negative numbers, got {weights}")
    weights = weights / weights.sum()
    return np.einsum("m,mnk->nk", weights, stacked).astype(np.float32)
