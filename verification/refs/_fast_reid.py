"""How JDAI-CV/fast-reid's pairwise losses read a batch, shared by the refs that re-express them.

They normalise the rows, form S = U U^T, and mark positives as same label minus the diagonal and
negatives as other labels, as float masks.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from ..common import NotApplicable


def batch_masks(X, labels, R, normalize, function_name):
    """(S, positive mask, negative mask) as fast-reid forms them; NotApplicable for a reference set or raw rows."""
    if R is not None:
        raise NotApplicable(f"fast-reid's {function_name} works on the batch only")
    if not normalize:
        raise NotApplicable(f"fast-reid's {function_name} normalises rows itself")
    unit = F.normalize(X, dim=1)
    sim = unit @ unit.T
    y = torch.as_tensor(np.asarray(labels))
    same = (y[:, None] == y[None, :]).to(sim.dtype)
    return sim, same - torch.eye(len(y), dtype=sim.dtype), 1.0 - same
