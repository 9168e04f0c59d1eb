"""Rules shared by a loss's reference code and its kernels (neutral ground: imports no loss, no kernel)."""

from __future__ import annotations

from typing import Mapping

from .errors import GpwrefError

# Contrastive loss: a pair with |2 - 2 S_ij| at or below this is a duplicate (d = 0 exactly, S read as 1).
DUPLICATE_SQ_DISTANCE = 1e-12
# Lifted structured loss: 2 - 2S at or below this: a duplicate pair, D = 0 with zero slope.
DUPLICATE_GAP = 1e-12


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
