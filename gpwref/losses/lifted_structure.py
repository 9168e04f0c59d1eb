r"""Lifted structured loss (Song, Xiang, Jegelka, Savarese, CVPR 2016) and its generalised form.

Both forms are written on two per-pair scores, a positive score ``z+`` and a negative score ``z-``,
chosen by the ``distance`` knob (the domain the margins ``pos_margin``, ``neg_margin`` live in)::

    distance="euclidean":  z+_ij = D_ij - pos_margin,   z-_ij = neg_margin - D_ij,   D = sqrt(max(2 - 2S, 0))
    distance="cosine":     z+_ij = pos_margin - S_ij,   z-_ij = S_ij - neg_margin

(D is the unit-sphere Euclidean distance; PML's ``distance.margin`` gives the same two scores for
``LpDistance`` and ``CosineSimilarity``.) ``phi_ij = dz-_ij/dS_ij = -dz+_ij/dS_ij`` is 1 for cosine
and 1/D_ij for euclidean.

``form="song"`` (batch only), on ORDERED positive pairs as PML's ``LiftedStructureLoss`` does::

    E_ap  = sum_{k in N_a} exp(z-_ak) + sum_{l in N_p} exp(z-_pl)
    J_ap  = log E_ap + z+_ap
    L     = (1/Q) sum_{(a,p) ordered positive} [J_ap]_+^2 / 2          Q = number of ordered positive pairs

For a symmetric S, J_ap = J_pa, so this is Song's 1/(2|P|) sum over unordered pairs of [J]_+^2 (with
Song's alpha = neg_margin = 1, pos_margin = 0). GPW weights, with c_ap = [J_ap]_+ / Q::

    G_ap = -c_ap phi_ap                                                  ordered positive (a, p)
    G_ik = +phi_ik exp(z-_ik) ( sum_p c_ip / E_ip + sum_a c_ai / E_ai )   negative (i, k)

(a negative of row i is weighted by every active pair in which i is the anchor or the positive).
``per_anchor[a]`` = sum_p [J_ap]_+^2 / (2Q). No negative in the batch: E = 0, J = -inf, L = 0 (PML
returns zero when there is no negative pair, ``lifted_structure_loss.py:20``; in a batch every
sample has a negative as soon as any pair is negative, so no positive pair ever meets an empty
negative set and the profile's ``empty_lse`` rule never applies to this form).
Why batch only: J_ap needs N_p, the negatives of the positive p *as an anchor*; an item of a separate
reference set is never an anchor and has no negative set (PML would silently mix query and
reference indices when it compares negative-pair anchors with the positive's index).

``form="generalized"``: per anchor, over the anchor's own positives and negatives::

    A_i = log sum_{k in P_i} exp(z+_ik) + log sum_{k in N_i} exp(z-_ik)
    L   = (1/m) sum_i [A_i]_+
    G_ij = -(1/m) phi_ij softmax_{P_i}(z+)_j   (positive),   +(1/m) phi_ij softmax_{N_i}(z-)_j   (negative)

for anchors with A_i > 0 (hinge at exactly 0 has weight 0, as torch's relu), 0 elsewhere: only the
relative similarity inside each set matters (the MS paper's reading of this loss). With cosine and
pos_margin = lam, neg_margin = 0 it is the MS paper's form [log sum_P e^{lam - S} + log sum_N e^{S}]_+
(the paper fixes no lam for it; the paper profile uses lam = 1, Song's margin). With euclidean it is
Hermans et al.'s form, PML's ``GeneralizedLiftedStructureLoss`` default (LpDistance, margins 0 / 1).
Empty P_i or N_i: the profile's ``empty_lse`` rule: "neg_inf" (paper: the log-sum is -inf, the anchor
contributes 0) or "zero" (PML's masked logsumexp returns 0, so an anchor with no positive still
contributes [log sum_N exp z-]_+, and one with no negative [log sum_P exp z+]_+).

Rules shared by both forms:
* Duplicates: D is set to exactly 0 with zero slope (phi = 0) when 2 - 2S <= ``DUPLICATE_GAP``
  (1e-12, i.e. D <= 1e-6; the threshold of the contrastive and triplet losses). dD/dS = -1/D is
  unbounded at D = 0 and the S of two copies of one unit vector is 1 only up to a few ulps, so without
  this rule G of a duplicate pair would be 1/sqrt(round-off) (~1e8) and change with the summation
  order of S = U U^T. The gap covers the round-off of unit-row inner products up to d ~ 4000; a
  genuine distance of at most 1e-6 is read as 0 (it moves each score z by at most 1e-6). S computed
  in float32 uses the cut-off scaled to float32's round-off (``rules.duplicate_cutoff``: 5.4e-4,
  D <= 0.023). PML's cdist
  gives exactly 0 for exact copies and torch's cdist backward is 0 there, as here. Near (not exact)
  duplicates stay ill-conditioned in S: G ~ 1/D, so a relative change u in S changes G by ~u/(2 - 2S).
* ``pos_used`` / ``neg_used`` mark the pairs with a non-zero weight: an active term and phi != 0.
* Profile rule ``zero_if_at_most_one_pair`` (PML ``generic_pair_loss.py:18-19``, both PML classes are
  GenericPairLoss): zero loss when the positive and the negative pair lists both have length <= 1
  (ordered batch pairs come in twos, so within a batch this is m = 1 only).
* Every log-sum-exp takes its maximum out: finite for any finite S and margins.

Defaults: ``distance``, ``pos_margin`` and ``neg_margin`` may be given per form as a mapping
``{"song": ..., "generalized": ...}`` (how the catalog states each profile's defaults, since the
paper's two forms live in different domains); a plain value applies to whichever form is chosen.
"""

from __future__ import annotations

from typing import Mapping

import numpy as np

from ..entry import LossEntry, number, one_of, per_form
from ..pairs import PairResult, Pairs, masked_lse, zero_by_pair_count
from ..profiles import Profile
from ..rules import DUPLICATE_GAP, duplicate_cutoff, for_form

FORMS = ("song", "generalized")
DISTANCES = ("euclidean", "cosine")


def unit_sphere_distance(S: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """D = sqrt(max(2 - 2S, 0)) and phi = -dD/dS = 1/D, with the duplicate rule (D = 0, phi = 0)."""
    gap = 2.0 - 2.0 * S
    duplicate = gap <= duplicate_cutoff(S.dtype, DUPLICATE_GAP)
    D = np.sqrt(np.where(duplicate, 0.0, gap))
    phi = np.where(duplicate, 0.0, 1.0 / np.where(duplicate, 1.0, D))
    return D, phi


def pair_scores(S: np.ndarray, distance: str, pos_margin: float, neg_margin: float):
    """(z+, z-, phi): the positive and negative scores of every entry and phi = dz-/dS = -dz+/dS."""
    if distance == "euclidean":
        D, phi = unit_sphere_distance(S)
        return D - pos_margin, neg_margin - D, phi
    return pos_margin - S, S - neg_margin, np.ones_like(S)


def value_and_grad(
    S: np.ndarray,
    pairs: Pairs,
    profile: Profile,
    *,
    form: str,
    distance,
    pos_margin,
    neg_margin,
) -> PairResult:
    distance = for_form(distance, form)
    pos_margin, neg_margin = float(for_form(pos_margin, form)), float(for_form(neg_margin, form))
    pos, neg = pairs.pos, pairs.neg
    if zero_by_pair_count(profile, pos, neg):
        pos, neg = np.zeros_like(pos), np.zeros_like(neg)
    z_pos, z_neg, phi = pair_scores(S, distance, pos_margin, neg_margin)
    if form == "song":
        return _song(z_pos, z_neg, phi, pos, neg)
    return _generalized(z_pos, z_neg, phi, pos, neg, profile.empty_lse)


def _song(z_pos, z_neg, phi, pos, neg) -> PairResult:
    m = z_pos.shape[0]
    ordered_pairs = int(pos.sum())
    row_lse, row_softmax = masked_lse(z_neg, neg, add_one=False)  # log sum_{N_i} e^{z-}, its softmax
    with np.errstate(invalid="ignore"):  # -inf + -inf is -inf; no NaN can arise
        log_E = np.logaddexp(row_lse[:, None], row_lse[None, :])  # log E_ap, symmetric in (a, p)
    J = np.where(pos, log_E + z_pos, -np.inf)
    hinge = np.where(J > 0, J, 0.0)
    if ordered_pairs == 0:
        per_anchor = np.zeros(m)
        coef = np.zeros_like(hinge)
    else:
        per_anchor = (hinge**2).sum(axis=1) / (2.0 * ordered_pairs)
        coef = hinge / ordered_pairs  # dL/dJ_ap
    active = coef > 0
    safe_log_E = np.where(active, log_E, 0.0)
    # Share of E_ap coming from row a's negatives, and from row p's: exp(log R - log E) <= 1.
    share_anchor = np.where(active, np.exp(np.where(active, row_lse[:, None], 0.0) - safe_log_E), 0.0)
    share_partner = np.where(active, np.exp(np.where(active, row_lse[None, :], 0.0) - safe_log_E), 0.0)
    row_coef = (coef * share_anchor).sum(axis=1) + (coef * share_partner).sum(axis=0)
    grad_z_neg = row_coef[:, None] * row_softmax  # dL/dz-_ik (row_softmax is 0 off N_i)
    grad_sim = phi * (grad_z_neg - coef)
    pos_used = active & (phi != 0)
    neg_used = neg & (row_coef > 0)[:, None] & (phi != 0)
    return PairResult(
        loss=float(per_anchor.sum()),
        per_anchor=per_anchor,
        grad_sim=grad_sim,
        pos_used=pos_used,
        neg_used=neg_used,
    )


def _generalized(z_pos, z_neg, phi, pos, neg, empty_lse: str) -> PairResult:
    m = z_pos.shape[0]
    pos_lse, pos_softmax = masked_lse(z_pos, pos, add_one=False)
    neg_lse, neg_softmax = masked_lse(z_neg, neg, add_one=False)
    if empty_lse == "zero":
        pos_lse = np.where(pos.any(axis=1), pos_lse, 0.0)
        neg_lse = np.where(neg.any(axis=1), neg_lse, 0.0)
    with np.errstate(invalid="ignore"):  # -inf + -inf is -inf; no NaN can arise
        A = pos_lse + neg_lse
    active = A > 0
    per_anchor = np.where(active, A, 0.0) / m
    grad_sim = (active[:, None] / m) * phi * (neg_softmax - pos_softmax)
    pos_used = pos & active[:, None] & (phi != 0)
    neg_used = neg & active[:, None] & (phi != 0)
    return PairResult(
        loss=float(per_anchor.sum()),
        per_anchor=per_anchor,
        grad_sim=grad_sim,
        pos_used=pos_used,
        neg_used=neg_used,
    )


ENTRY = LossEntry(
    name="lifted_structure",
    function=value_and_grad,
    hyper={
        "form": one_of(*FORMS),
        "distance": per_form(one_of(*DISTANCES), FORMS),
        "pos_margin": per_form(number(), FORMS),
        "neg_margin": per_form(number(), FORMS),
    },
    defaults={
        "paper": {
            "form": "song",
            "distance": {"song": "euclidean", "generalized": "cosine"},
            "pos_margin": {"song": 0.0, "generalized": 1.0},
            "neg_margin": {"song": 1.0, "generalized": 0.0},
        },
        "pml": {"form": "song", "distance": "euclidean", "pos_margin": 0.0, "neg_margin": 1.0},
    },
    reference="Song, Xiang, Jegelka, Savarese. Deep Metric Learning via Lifted Structured Feature Embedding. "
    "CVPR 2016; generalized: Hermans, Beyer, Leibe. In Defense of the Triplet Loss. arXiv 2017, and the MS "
    "paper's form (Wang et al. CVPR 2019)",
    similarities=("self", "negative-relative"),
    supports_ref=False,
    variants=({"form": "song"}, {"form": "generalized"}),
    limits="batch only: Song's J_ij uses the negatives of the positive j as an anchor, which a reference item "
    "does not have (the generalized form shares the entry); song weights use self (D_ap) and negative-relative "
    "similarity, generalized only negative-relative; euclidean distances come from S, so pairs with "
    "2 - 2S <= 1e-12 are duplicates (D = 0, zero weight)",
    counterparts={"pytorch-metric-learning": "LiftedStructureLoss + GeneralizedLiftedStructureLoss"},
)
