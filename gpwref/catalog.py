"""The catalog: every loss's entry, in a fixed order. Tests, benchmarks, the CLI and the docs iterate it.

A new loss is one module in ``gpwref/losses/`` (formula docstring, ``value_and_grad`` and, at its end,
``ENTRY = LossEntry(...)``: see ``gpwref/entry.py``) plus one line here.
"""

from __future__ import annotations

from typing import Mapping

from .entry import REFUSED, Hyper, LossEntry
from .errors import GpwrefError
from .profiles import defaults_name
from .losses import multi_similarity
from .losses import lifted_structure
from .losses import npair
from .losses import histogram
from .losses import contrastive
from .losses import triplet
from .losses import binomial_deviance
from .losses import circle
from .losses import supcon
from .losses import ntxent
from .losses import margin
from .losses import nca
from .losses import tuplet_margin
from .losses import ranked_list
from .losses import snr_contrastive
from .losses import ranknet
from .losses import pairwise_hinge
from .losses import bpr
from .losses import dpsh
from .losses import pce_bound
from .losses import m3g
from .losses import lvm_med_matching  # lvmmed
from .losses import pixel_affinity
from .losses import paired_domain_transfer
from .losses import proxy_anchor
from .losses import proxy_nca
from .losses import normalized_softmax
from .losses import cosface
from .losses import arcface
from .losses import soft_triple
from .losses import fast_ap
from .losses import smooth_ap
from .losses import pnp
from .losses import recall_at_k
from .losses import intra_pair_variance  # catpml
from .losses import threshold_consistent_margin  # catpml
from .losses import angular  # catpml
from .losses import pairwise_cosface  # catvar
from .losses import soft_margin_triplet  # catvar
from .losses import contrastive_ms_mining  # catvar
from .losses import lifted_structure_scaled  # catvar
from .losses import subcenter_arcface  # catproxy
from .losses import p2sgrad  # catproxy
from .losses import large_margin_softmax  # catproxy
from .losses import sphereface  # catproxy

__all__ = ["CATALOG", "LOSSES", "Hyper", "LossEntry", "get_entry", "resolve_hyper"]

CATALOG: tuple[LossEntry, ...] = (
    multi_similarity.ENTRY,
    lifted_structure.ENTRY,
    npair.ENTRY,
    histogram.ENTRY,
    contrastive.ENTRY,
    triplet.ENTRY,
    binomial_deviance.ENTRY,
    circle.ENTRY,
    supcon.ENTRY,
    ntxent.ENTRY,
    margin.ENTRY,
    nca.ENTRY,
    tuplet_margin.ENTRY,
    ranked_list.ENTRY,
    snr_contrastive.ENTRY,
    ranknet.ENTRY,
    pairwise_hinge.ENTRY,
    bpr.ENTRY,
    dpsh.ENTRY,
    pce_bound.ENTRY,
    m3g.ENTRY,
    pixel_affinity.ENTRY,
    paired_domain_transfer.ENTRY,
    proxy_anchor.ENTRY,
    proxy_nca.ENTRY,
    normalized_softmax.ENTRY,
    cosface.ENTRY,
    arcface.ENTRY,
    soft_triple.ENTRY,
    fast_ap.ENTRY,
    smooth_ap.ENTRY,
    pnp.ENTRY,
    recall_at_k.ENTRY,
    # lvmmed
    lvm_med_matching.ENTRY,
    # catpml
    intra_pair_variance.ENTRY,
    threshold_consistent_margin.ENTRY,
    angular.ENTRY,
    # catvar
    pairwise_cosface.ENTRY,
    soft_margin_triplet.ENTRY,
    contrastive_ms_mining.ENTRY,
    lifted_structure_scaled.ENTRY,
    # catproxy
    subcenter_arcface.ENTRY,
    p2sgrad.ENTRY,
    large_margin_softmax.ENTRY,
    sphereface.ENTRY,
    # --- new entries above this line (one module's ENTRY per loss; keep this marker) ---
)

LOSSES: tuple[str, ...] = tuple(entry.name for entry in CATALOG)


def get_entry(loss: str) -> LossEntry:
    for entry in CATALOG:
        if entry.name == loss:
            return entry
    raise GpwrefError("loss", f"must be one of {list(LOSSES)}", repr(loss))


def resolve_hyper(entry: LossEntry, profile_name: str, overrides: Mapping[str, object]) -> dict[str, object]:
    """The profile's defaults with ``overrides``, each checked by its rule and given as a plain Python value."""
    profile_name = defaults_name(profile_name)  # a profile made by gpwref.profiles.derive: its base's defaults
    if profile_name not in entry.defaults:
        raise GpwrefError(
            "profile",
            f"loss '{entry.name}' has no '{profile_name}' convention; it is defined under {sorted(entry.defaults)} "
            "(a custom profile: gpwref.profiles.derive(name, base=..., **rules))",
        )
    params = dict(entry.defaults[profile_name])
    for key, value in overrides.items():
        if key not in entry.hyper:
            raise GpwrefError(key, f"is not a hyper-parameter of '{entry.name}'; accepted: {sorted(entry.hyper)}")
        params[key] = value
    resolved = {}
    for key, value in params.items():
        accepted = entry.hyper[key].accept(value)
        if accepted is REFUSED:
            raise GpwrefError(key, f"'{entry.name}' needs {entry.hyper[key].rule}", repr(value))
        resolved[key] = accepted
    return resolved
