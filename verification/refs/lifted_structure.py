"""Second opinions on the lifted structured loss (Song form and generalized form).

Written from the formulas (docs/losses.md#lifted_structure, the module docstring of gpwref.losses.lifted_structure)
without calling gpwref's vectorised code. Shared with it are only the rules: the per-form defaults,
the duplicate gap (pairs with 2 - 2S <= DUPLICATE_GAP have D = 0 and zero slope) and the profile rules.
"""

from __future__ import annotations

import math

import numpy as np
import torch

from gpwref.losses.lifted_structure import DUPLICATE_GAP
from ..common import NotApplicable, rules
from .contract import LossRefs


def _for_form(value, form):
    return value[form] if isinstance(value, dict) else value


def _settings(form, distance, pos_margin, neg_margin):
    return _for_form(distance, form), float(_for_form(pos_margin, form)), float(_for_form(neg_margin, form))


def torch_loss(S: torch.Tensor, pos: torch.Tensor, neg: torch.Tensor, profile: str, *, form, distance, pos_margin, neg_margin) -> torch.Tensor:
    """Vectorised torch formulation; autograd gives G (the duplicate rule is a torch.where)."""
    r = rules(profile)
    distance, pm, nm = _settings(form, distance, pos_margin, neg_margin)
    zero = (S * 0).sum()
    if r.zero_if_at_most_one_pair and pos.sum() <= 1 and neg.sum() <= 1:
        return zero
    if distance == "euclidean":
        gap = 2 - 2 * S
        apart = gap > DUPLICATE_GAP
        D = torch.where(apart, torch.sqrt(torch.where(apart, gap, torch.ones_like(gap))), torch.zeros_like(gap))
        z_pos, z_neg = D - pm, nm - D
    else:
        z_pos, z_neg = pm - S, S - nm
    ninf = torch.tensor(-math.inf, dtype=S.dtype)
    m = S.shape[0]
    if form == "song":
        if not pos.any() or not neg.any():
            return zero
        masked = torch.where(neg, z_neg, ninf)  # row i: the negatives of i
        # Pair (a, p): the negatives of a followed by those of p, in one log-sum-exp.
        joined = torch.cat([masked[:, None, :].expand(m, m, -1), masked[None, :, :].expand(m, m, -1)], dim=2)
        log_E = torch.logsumexp(joined, dim=2)
        J = log_E + z_pos
        hinge = torch.relu(J[pos])
        return (hinge**2).sum() / (2 * pos.sum())
    pos_lse = torch.logsumexp(torch.where(pos, z_pos, ninf), dim=1)
    neg_lse = torch.logsumexp(torch.where(neg, z_neg, ninf), dim=1)
    if r.empty_lse == "zero":
        pos_lse = torch.where(pos.any(dim=1), pos_lse, torch.zeros_like(pos_lse))
        neg_lse = torch.where(neg.any(dim=1), neg_lse, torch.zeros_like(neg_lse))
    return torch.relu(pos_lse + neg_lse).sum() / m


def _distance_and_slope(s: float) -> tuple[float, float]:
    gap = 2.0 - 2.0 * s
    if gap <= DUPLICATE_GAP:
        return 0.0, 0.0
    d = math.sqrt(gap)
    return d, 1.0 / d


def loop(S: np.ndarray, pos: np.ndarray, neg: np.ndarray, profile: str, *, form, distance, pos_margin, neg_margin):
    """Plain loops; weights from their closed forms (softmax shares times the hinge), not by differentiating."""
    r = rules(profile)
    distance, pm, nm = _settings(form, distance, pos_margin, neg_margin)
    m, n = S.shape
    G = np.zeros((m, n))
    if r.zero_if_at_most_one_pair and pos.sum() <= 1 and neg.sum() <= 1:
        return 0.0, G

    def score(i, j, kind):  # (z, dz/dS) of entry (i, j) as a positive ("+") or negative ("-") pair
        if distance == "euclidean":
            d, slope = _distance_and_slope(S[i, j])
            return (d - pm, -slope) if kind == "+" else (nm - d, slope)
        return (pm - S[i, j], -1.0) if kind == "+" else (S[i, j] - nm, 1.0)

    negatives = [[k for k in range(n) if neg[i, k]] for i in range(m)]
    positives = [[k for k in range(n) if pos[i, k]] for i in range(m)]
    if form == "song":
        pairs = [(a, p) for a in range(m) for p in positives[a]]
        total = 0.0
        for a, p in pairs:
            terms = [(a, k, score(a, k, "-")) for k in negatives[a]] + [(p, k, score(p, k, "-")) for k in negatives[p]]
            if not terms:
                continue  # log 0 = -inf: the hinge is 0
            top = max(z for _, _, (z, _) in terms)
            E = sum(math.exp(z - top) for _, _, (z, _) in terms)
            z_ap, dz_ap = score(a, p, "+")
            J = math.log(E) + top + z_ap
            if J <= 0:
                continue
            total += J * J / 2.0
            c = J / len(pairs)
            G[a, p] += c * dz_ap
            for i, k, (z, dz) in terms:
                G[i, k] += c * math.exp(z - top) / E * dz
        return (total / len(pairs) if pairs else 0.0), G

    total = 0.0
    for i in range(m):
        halves = []
        for members, kind in ((positives[i], "+"), (negatives[i], "-")):
            scored = [(k, score(i, k, kind)) for k in members]
            if scored:
                top = max(z for _, (z, _) in scored)
                E = sum(math.exp(z - top) for _, (z, _) in scored)
                halves.append((math.log(E) + top, scored, top, E))
            elif r.empty_lse == "zero":
                halves.append((0.0, [], 0.0, 1.0))
            else:
                halves.append((-math.inf, [], 0.0, 1.0))
        A = halves[0][0] + halves[1][0]
        if not A > 0:
            continue
        total += A
        for _, scored, top, E in halves:
            for k, (z, dz) in scored:
                G[i, k] = math.exp(z - top) / E * dz / m
    return total / m, G


# ----------------------------------------------------------------------------------------------
# Real implementation: pytorch-metric-learning's LiftedStructureLoss / GeneralizedLiftedStructureLoss.


def pml(X, labels, R, ref_labels, ref_self, normalize, *, form, distance, pos_margin, neg_margin):
    """PML's class for the form, with the distance and margins of the case."""
    from pytorch_metric_learning.distances import CosineSimilarity, DotProductSimilarity, LpDistance
    from pytorch_metric_learning.losses import GeneralizedLiftedStructureLoss, LiftedStructureLoss

    if R is not None:
        if form == "song":
            raise NotApplicable("gpwref's lifted_structure is batch only; PML's LiftedStructureLoss accepts ref_emb but mixes "
                                "query and reference indices (n_per_p compares negative-pair anchors with the positive's ref index)")
        raise NotApplicable("gpwref's lifted_structure entry is batch only (for the song form); PML's "
                            "GeneralizedLiftedStructureLoss accepts ref_emb")
    distance, pm, nm = _settings(form, distance, pos_margin, neg_margin)
    if distance == "euclidean":
        if not normalize:
            raise NotApplicable("with normalize=False PML's LpDistance measures raw-row distances; gpwref uses the "
                                "unit-sphere form sqrt(2 - 2S)")
        dist = LpDistance()
    else:
        dist = CosineSimilarity() if normalize else DotProductSimilarity(normalize_embeddings=False)
    cls = LiftedStructureLoss if form == "song" else GeneralizedLiftedStructureLoss
    return cls(neg_margin=nm, pos_margin=pm, distance=dist)(X, torch.as_tensor(labels))


REFS = LossRefs(
    torch_loss=torch_loss,
    loop=loop,
    real={"pml": {"pytorch-metric-learning": pml}},
)
