"""Each catalog loss as its own function of S and the labels (generated from the catalog)."""

from __future__ import annotations

from .catalog import CATALOG
from .core import from_similarity


def _make(entry):
    def loss_of_similarity(S, labels, ref_labels=None, *, profile="paper", ref_self=None, **hyper):
        return from_similarity(entry.name, S, labels, ref_labels, profile=profile, ref_self=ref_self, **hyper)

    loss_of_similarity.__name__ = loss_of_similarity.__qualname__ = entry.name
    loss_of_similarity.__doc__ = (
        f"{entry.name} as a function of S (see ``gpwref.from_similarity``); returns a PairResult.\n\n{entry.doc}"
    )
    return loss_of_similarity


__all__ = [entry.name for entry in CATALOG]
globals().update({entry.name: _make(entry) for entry in CATALOG})
