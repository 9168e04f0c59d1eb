"""Rules shared by a loss's reference code and its kernels (neutral ground: imports no loss, no kernel)."""

from __future__ import annotations

from typing import Mapping

import numpy as np

from .errors import GpwrefError

# Contrastive loss: a pair with |2 - 2 S_ij| at or below this is a duplicate (d = 0 exactly, S read as 1).
# These are the float64 cut-offs; S computed in another dtype uses ``duplicate_cutoff``.
DUPLICATE_SQ_DISTANCE = 1e-12
# Lifted structured loss: 2 - 2S at or below this: a duplicate pair, D = 0 with zero slope.
DUPLICATE_GAP = 1e-12

_FLOAT64_ROUNDOFF = 2.0**-53


def duplicate_cutoff(dtype, float64_cutoff: float = DUPLICATE_SQ_DISTANCE) -> float:
    """The duplicate cut-off on 2 - 2S for similarities S computed in ``dtype`` (a float, compared in float64).

    S = u_i . u_j of unit rows carries a round-off of at most about (d + 2) u (u: the dtype's unit
    round-off; the normalisation and the d-term sum), so 2 - 2S of an exact copy lies within 2 (d + 2) u
    of 0. float64's 1e-12 is about 9000 u (d up to ~4500); every dtype gets that many of its own u:
    float32 5.4e-4, so pairs closer than sqrt(5.4e-4) = 0.023 are duplicates (d = 0) in float32.
    """
    unit_roundoff = float(np.finfo(np.dtype(dtype)).eps) / 2.0
    return float64_cutoff * (unit_roundoff / _FLOAT64_ROUNDOFF)


def check_margins(distance: str, **margins: float | None) -> None:
    """Distance margins are distances: they must be >= 0 (a negative one makes its hinge vanish or constant)."""
    if distance != "euclidean":
        return
    for name, value in margins.items():
        if value is not None and value < 0:
            raise GpwrefError(name, "must be >= 0 with distance='euclidean' (it is a distance on the unit sphere)", repr(value))


def for_form(value, form: str):
    """A hyper-parameter given per form (a mapping) or for every form (a plain value)."""
    return value[form] if isinstance(value, Mapping) else value
