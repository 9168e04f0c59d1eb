"""Pair masks and similarities in torch, written apart from gpwref.pairs so the two can disagree.

Only the rules are shared (they are the specification): positives = same label minus self pairs,
negatives = different label; self = the diagonal when the batch is its own reference set, the
``ref_self`` pairs otherwise, plus (``self_rule="value"``) every same-label pair with S >= threshold.
"""

from __future__ import annotations

import numpy as np
import torch

import gpwref


def similarity(X: torch.Tensor, R: torch.Tensor | None, normalize: bool) -> torch.Tensor:
    if normalize:
        X = torch.nn.functional.normalize(X, dim=1, eps=0.0)
        R = X if R is None else torch.nn.functional.normalize(R, dim=1, eps=0.0)
    elif R is None:
        R = X
    return X @ R.T


def masks(S: torch.Tensor, labels, ref_labels, ref_is_batch: bool, profile: str, ref_self=None):
    prof = gpwref.get_profile(profile)
    y = torch.as_tensor(np.asarray(labels))
    yr = y if ref_is_batch else torch.as_tensor(np.asarray(ref_labels))
    same = y[:, None] == yr[None, :]
    self_pair = torch.zeros_like(same)
    if ref_is_batch:
        self_pair |= torch.eye(len(y), dtype=torch.bool)
    elif ref_self is not None:
        for i, j in enumerate(np.asarray(ref_self)):
            if j >= 0:
                self_pair[i, int(j)] = True
    if prof.self_rule == "value":
        self_pair |= same & (S.detach() >= prof.self_threshold)
    return same & ~self_pair, ~same
