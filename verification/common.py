"""Small shared pieces of the verification suite."""

from __future__ import annotations

import numpy as np

import gpwref


class NotApplicable(Exception):
    """A real implementation (or a check) cannot express this batch; the reason is the message."""


def rules(profile: str) -> gpwref.Profile:
    """The profile's rules. The rules are the specification being checked, so sharing them is fine."""
    return gpwref.get_profile(profile)


def rel_err(got, want, floor: float = 0.0) -> float:
    """Normwise relative error max|got - want| / max(max|got|, max|want|, floor); 0 when both are 0.

    ``floor`` is the natural scale of the quantity when its exact value may cancel to ~0 (for
    example dL/dX of collapsed embeddings, which is radial and projected away by the normalisation).
    """
    got = np.asarray(got, dtype=np.float64)
    want = np.asarray(want, dtype=np.float64)
    if got.shape != want.shape:
        return float("inf")
    if got.size == 0:
        return 0.0
    if not (np.all(np.isfinite(got)) and np.all(np.isfinite(want))):
        return float("inf")
    scale = max(np.max(np.abs(got)), np.max(np.abs(want)), floor)
    if scale == 0.0:
        return 0.0
    return float(np.max(np.abs(got - want)) / scale)
