"""The tolerance policy: how closely a kernel's result must match the float64 reference, and why.

A kernel result differs from the reference for two reasons only, and each gets its own term:

1. **Its similarities differ** by ``dS = max |S_kernel - S_reference|`` (another GEMM, and in float32
   the rounding of X, of U = X / |X| and of the GEMM itself: about 1e-7 to 1e-6 for unit rows and
   d <= 512). ``dS`` is measured, not assumed, and the rest of the bound follows from it through
   each loss's conditioning (``_conditioning``):

   * multi_similarity: each half of an anchor term, ``(1/c) log(1 + sum_k exp(c (S_ik - lam)))``, is
     1-Lipschitz in the max-norm of S, so ``|dL| <= 2 dS``; ``log |G_ij| = z_ij - log(1 + sum_k e^z_k)``
     with ``|dz| <= c dS`` (``c = max(alpha, beta)``) and the log-sum-exp 1-Lipschitz, so
     ``|G'_ij / G_ij - 1| <= exp(2 c dS) - 1`` entry by entry;
   * binomial_deviance: means of ``softplus(c (...))`` (1-Lipschitz in its argument), so
     ``|dL| <= 2 c dS``; ``log sigma(z)`` is 1-Lipschitz, so ``|G'/G - 1| <= exp(c dS) - 1``;
   * contrastive, cosine: slopes are the constants -1, +1 (no weight error); each counted term moves
     by at most dS: ``|dL| <= 2 dS`` (avg_nonzero) or ``(counted pairs / m) dS`` (anchor_sum);
     euclidean: ``d = sqrt(2 - 2S)`` moves by ``dd <= 2 dS / d_min`` (d_min: the smallest distance of a
     used pair), the slope ``1/d`` by the relative ``dd / (d_min - dd)``, each term by ``dd``. Small
     distances are ill-conditioned, and the bound says so by growing.

   * lifted_structure: every score z (``+-S`` or ``+-D``, D = sqrt(2 - 2S)) moves by at most
     ``dz = dS`` (cosine) or ``2 dS / sqrt(g_min - 2 dS)`` (euclidean; g_min the smallest 2 - 2S of a
     non-duplicate pair); log-sum-exps are 1-Lipschitz, so Song's ``J_ap`` and the generalised
     ``A_i`` move by at most ``2 dz``. Generalised: ``|dL| <= 2 dz``, a weight
     ``(phi / m) softmax`` by the relative ``exp(2 dz) (1 + phi_rel) - 1`` with
     ``phi_rel = dz / (D_min - dz)`` (0 for cosine). Song: ``|dL| <= 2 dz (sqrt(2 L) + dz)`` (the mean
     of [J]_+ is at most sqrt(2 L)); ``c = [J]_+ / Q`` moves by the relative ``2 dz / J_min`` (J_min:
     the smallest active J: a hinge near 0 is ill-conditioned, and the bound says so), a positive
     weight ``-c phi`` by ``(1 + 2 dz / J_min)(1 + phi_rel) - 1``, a negative weight (a softmax times
     a sum of c times shares E_i / E_ap) by ``(1 + 2 dz / J_min) exp(4 dz) (1 + phi_rel) - 1``. Pairs
     with ``|J| <= 2 dz`` (anchors with ``|A| <= 2 dz``) may flip, with the negatives of their rows;
     the duplicate rule (2 - 2S <= 1e-12) is a weight jump, as for contrastive.

   * Duplicates in float32 (contrastive and lifted, euclidean): a float32 kernel reads 2 - 2S <=
     5.4e-4 as a duplicate (``gpwref.rules.duplicate_cutoff``: the float64 cut-off's 9000 unit
     round-offs, in float32's). Exact copies then get the float64 answer (d = 0, weight 0); pairs
     whose true distance is below sqrt(5.4e-4) = 0.023 but not duplicates in float64 are not
     resolved by float32: ``near_boundary`` marks them, and no numeric bound is claimed for them.

   Embedding gradients are sums over j of ``H_ij v_j`` (H = G or G + G^T): their error is at most
   the weights' relative error times ``scale_i = sum_j |H_ij| |v_j|_inf / |x_i|``, which is also the
   size round-off has when the exact gradient cancels (tied embeddings).

   These bounds hold when both sides used the same pairs and no pair sits at a discontinuity. Pairs
   whose decision lies within ``2 dS`` (plus the comparison's own rounding) of a boundary may
   legitimately flip (``near_boundary``: self value rule, MS mining, contrastive hinges): a flip
   moves that pair's whole weight, so only "every differing mask entry is near a boundary" is
   checked. Contrastive's duplicate rule (|2 - 2S| <= 1e-12 means S = 1, d = 0, slope 0) changes a
   weight without changing a mask; a pair near that threshold makes the batch ill-conditioned and
   only the masks are compared.

2. **Its arithmetic rounds differently**: a few units in the last place of the working dtype for
   storing G and the gradients (``3 u``), plus ``(n + d + 10) u`` for the sums inside the GEMMs and the
   row reductions (the classical ``n u`` bound of a length-n sum), with ``u = 2^-24`` in float32 and
   ``2^-53`` in float64. A logit ``z = c (S - lam)`` and its shift by the row maximum carry an
   absolute error of about ``2 u64 |z|`` on each side, which ``exp`` turns into a relative error:
   ``8 u64 c (max|S| + |lam| + 1)`` for the pair of evaluations. The kernels evaluate logits,
   exponentials and sums in float64 even for float32 data, so these terms use float64's u.

"Well-conditioned" inputs (docs/tolerances.md#what-well-conditioned-means: relative 1e-5 for float32) are those with ``2 c dS`` below
about 1e-5 (and, for euclidean forms, no pair closer than about 0.1): unit-norm rows with d up to
512 and beta up to 50 give dS ~ 5e-7 and a measured normwise MS weight error ~ 2e-7 (elementwise up
to ~1e-5). Large beta, large unnormalised embeddings (``normalize=False``), near-duplicates or
huge d raise the bound with them; it never hides a formula error, which is O(1).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from ..pairs import Result

UNIT_ROUNDOFF = {np.dtype(np.float32): 2.0**-24, np.dtype(np.float64): 2.0**-53}
U64 = 2.0**-53


def logit_scale(loss: str, params: dict) -> float:
    """The largest |d z / d S| of the loss's logits (how strongly S errors are magnified)."""
    if loss in ("multi_similarity", "binomial_deviance"):
        return max(float(params["alpha"]), float(params["beta"]))
    if loss in ("contrastive", "lifted_structure"):
        return 1.0
    raise KeyError(f"no tolerance rule for loss {loss!r}")


def _pairs(want: Result, profile, labels, ref_labels, ref_self):
    from ..pairs import build_pairs

    S = np.asarray(want.sim, dtype=np.float64)
    ref_is_batch = ref_labels is None
    return S, build_pairs(S, np.asarray(labels), np.asarray(labels if ref_is_batch else ref_labels), ref_is_batch, profile, ref_self)


def near_boundary(loss: str, want: Result, margin: float, profile, params: dict, labels, ref_labels=None,
                  ref_self=None, dtype=np.float64) -> tuple[np.ndarray, np.ndarray]:
    """(flip, jump): pairs (bool m x n) whose decision could flip if every S_ij moved by up to
    ``margin`` (the reference's S_ij within ``2 margin`` of the boundary it is compared with: both
    the pair and, for mining, the row's hardest pair move), and pairs near a threshold where the
    weight jumps without a mask change (the duplicate rule). A kernel working in ``dtype`` reads
    2 - 2S <= ``rules.duplicate_cutoff(dtype)`` as a duplicate: a pair whose float64 2 - 2S lies
    between float64's cut-off and that one (true distance below sqrt(cut-off), 0.023 in float32)
    is one ``dtype`` cannot resolve, and counts as a jump."""
    S, pairs = _pairs(want, profile, labels, ref_labels, ref_self)
    flip = np.zeros(S.shape, dtype=bool)
    jump = np.zeros(S.shape, dtype=bool)
    same = pairs.labels[:, None] == pairs.ref_labels[None, :]
    if profile.self_rule == "value":
        flip |= same & (np.abs(S - profile.self_threshold) <= margin)
    if loss == "multi_similarity" and params.get("eps") is not None:
        eps = params["eps"]
        min_pos = np.where(pairs.pos, S, np.inf).min(axis=1, initial=np.inf)[:, None]
        max_neg = np.where(pairs.neg, S, -np.inf).max(axis=1, initial=-np.inf)[:, None]
        with np.errstate(invalid="ignore"):
            flip |= pairs.neg & (np.abs(S - (min_pos - eps)) <= 2 * margin)
            flip |= pairs.pos & (np.abs(S - (max_neg + eps)) <= 2 * margin)
    if loss == "contrastive":
        from ..rules import DUPLICATE_SQ_DISTANCE

        gap = 2.0 - 2.0 * S
        jump |= (pairs.pos | pairs.neg) & _duplicate_band(np.abs(gap), DUPLICATE_SQ_DISTANCE, margin, dtype)
        pm = params["pos_margin"]
        nm = params["neg_margin"]
        if params["distance"] == "cosine":
            if pm is not None:
                flip |= pairs.pos & (np.abs(S - pm) <= margin)
            elif params["reduction"] == "avg_nonzero":
                flip |= pairs.pos & (np.abs(S - 1.0) <= margin)  # term 1 - S counted iff > 0
            flip |= pairs.neg & (np.abs(S - nm) <= margin)
        else:  # hinge at d = margin, i.e. S = 1 - margin^2 / 2
            flip |= pairs.pos & (np.abs(S - (1.0 - (pm or 0.0) ** 2 / 2)) <= margin)
            flip |= pairs.neg & (np.abs(S - (1.0 - nm**2 / 2)) <= margin)
    if loss == "lifted_structure":
        lifted_flip, lifted_jump = _lifted_near_boundary(want, margin, profile, params, labels, dtype)
        flip |= lifted_flip
        jump |= lifted_jump
    return flip, jump


def _duplicate_band(gap: np.ndarray, float64_cutoff: float, margin: float, dtype) -> np.ndarray:
    """Pairs (reference 2 - 2S = ``gap``) that the duplicate rule may read differently in ``dtype``:
    within ``2 margin`` of float64's cut-off, or (another dtype) above float64's cut-off and up to
    that dtype's one plus ``2 margin``."""
    from ..rules import duplicate_cutoff

    cutoff = duplicate_cutoff(dtype, float64_cutoff)
    if cutoff == float64_cutoff:
        return np.abs(gap - float64_cutoff) <= 2 * margin + 1e-15
    return (gap > float64_cutoff) & (gap <= cutoff + 2 * margin + 1e-15)


def _expm1(x: float) -> float:
    """exp(x) - 1, inf where it overflows (a bound that large says: no numeric bound)."""
    return math.expm1(x) if x < 709.0 else math.inf


def _conditioning(loss: str, params: dict, want: Result, dS: float, used: np.ndarray) -> tuple[float, float]:
    """(value bound, weight relative bound) from the similarities' difference dS (item 1 above)."""
    m = want.grad_sim.shape[0]
    if loss == "multi_similarity":
        return 2.0 * dS, _expm1(2 * logit_scale(loss, params) * dS)
    if loss == "binomial_deviance":
        c = logit_scale(loss, params)
        return 2.0 * c * dS, _expm1(c * dS)
    if loss == "contrastive":
        per_term = dS
        weight = 0.0
        if params["distance"] == "euclidean":
            S = np.asarray(want.sim, dtype=np.float64)
            from ..rules import DUPLICATE_SQ_DISTANCE

            gap = 2.0 - 2.0 * S[used]
            gap = gap[gap > DUPLICATE_SQ_DISTANCE]
            d_min = float(np.sqrt(gap.min())) if gap.size else math.inf
            per_term = 2.0 * dS / d_min if d_min > 0 else math.inf
            weight = per_term / (d_min - per_term) if per_term < d_min else math.inf
        if params["reduction"] == "avg_nonzero":
            return 2.0 * per_term, weight
        return float(used.sum()) / m * per_term, weight
    raise KeyError(f"no tolerance rule for loss {loss!r}")


@dataclass
class Agreement:
    """Measured differences and the policy's limits for one kernel result against the reference."""

    dtype: str
    dS: float
    masks_equal: bool
    flipped_near_boundary: bool  # every differing mask entry is a near-boundary pair
    ill_conditioned: str = ""  # why no numeric bound applies ("" when they do)
    errors: dict = field(default_factory=dict)
    limits: dict = field(default_factory=dict)

    def failures(self) -> list[str]:
        bad = [name for name, err in self.errors.items() if not err <= self.limits[name]]
        if not self.masks_equal and not self.flipped_near_boundary:
            bad.append("masks")
        return bad


def agreement(got: Result, want: Result, *, loss: str, profile, params: dict, labels, ref_labels=None,
              ref_self=None, ref=None, embeddings=None, normalize=True) -> Agreement:
    """Compare a kernel result ``got`` with the float64 reference ``want`` under the policy above.

    All arrays may be NumPy arrays or device arrays (copied to the host here).
    """
    G = _host(got.grad_sim).astype(np.float64)
    G_ref = np.asarray(want.grad_sim, dtype=np.float64)
    dtype = np.dtype(_host(got.grad_sim).dtype)
    u = UNIT_ROUNDOFF[dtype]
    S = _host(got.sim).astype(np.float64)
    dS = float(np.max(np.abs(S - want.sim), initial=0.0))
    m, n = G_ref.shape
    pos, neg = _host(got.pos_used), _host(got.neg_used)
    differ = (pos != want.pos_used) | (neg != want.neg_used)
    result = Agreement(dtype=dtype.name, dS=dS, masks_equal=not differ.any(), flipped_near_boundary=False)
    margin = dS + 4 * u * (1.0 + float(np.max(np.abs(want.sim), initial=0.0)) + abs(params.get("eps") or 0.0))
    work = np.dtype(_host(got.sim).dtype)  # the dtype S was computed in (the duplicate rule's)
    flip, jump = near_boundary(loss, want, margin, profile, params, labels, ref_labels, ref_self, work)
    if differ.any():
        result.flipped_near_boundary = bool(np.all(flip[differ] | jump[differ]))
        result.ill_conditioned = "a pair near a boundary flipped (it moves that pair's whole weight)"
        return result
    if jump.any():
        result.ill_conditioned = "a pair is within round-off of the duplicate threshold (its weight may jump)"
        return result

    used = np.asarray(want.pos_used) | np.asarray(want.neg_used)
    if loss == "lifted_structure":  # its bounds need the pair structure, not only the used pairs
        value_from_S, weight_from_S = _lifted_conditioning(want, dS, profile, params, labels)
    else:
        value_from_S, weight_from_S = _conditioning(loss, params, want, dS, used)
    logit_size = logit_scale(loss, params) * (float(np.max(np.abs(want.sim), initial=0.0)) + abs(float(params.get("lam", 0.0))) + 1.0)
    weight_rel = weight_from_S + 3 * u + 2 * (n + 10) * U64 + 8 * U64 * logit_size
    # value: from the similarities, plus float64 sums on both sides
    result.errors["value"] = abs(got.loss - want.loss)
    result.limits["value"] = value_from_S * (1 + 1e-6) + (m + n + 10) * U64 * (abs(want.loss) + 1.0) * 2
    # weights, entry by entry (exact zeros must stay exact zeros)
    ratio = np.zeros_like(G_ref)
    nz = G_ref != 0
    ratio[nz] = np.abs(G[nz] - G_ref[nz]) / np.abs(G_ref[nz])
    tiny = np.finfo(dtype).tiny  # a float32 weight below the normal range has no relative accuracy
    ratio[nz & (np.abs(G_ref) < tiny)] = 0.0
    result.errors["grad_sim"] = float(np.max(ratio, initial=0.0))
    result.limits["grad_sim"] = weight_rel
    result.errors["grad_sim zeros"] = float(np.max(np.abs(G[~nz]), initial=0.0))
    result.limits["grad_sim zeros"] = 0.0
    # embedding gradients, normwise against their natural scale
    d = np.asarray(want.grad_emb).shape[1]
    grad_rel = weight_rel + (n + m + d + 10) * u
    for name, got_g, want_g, scale in _gradient_pairs(got, want, ref, embeddings, normalize):
        err = float(np.max(np.abs(_host(got_g).astype(np.float64) - want_g), initial=0.0))
        result.errors[name] = err
        # entries below the dtype's normal range have no relative accuracy (float32 flushes 1e-301 to 0)
        relative = grad_rel * 2 * scale if scale > 0 else 0.0  # an exact zero gradient (inf * 0 is no bound)
        result.limits[name] = relative + (float(tiny) if dtype != np.float64 else 0.0)
    return result


def _gradient_pairs(got, want, ref, embeddings, normalize):
    """(name, got, want, scale) for dL/dX and dL/dX_ref, scale = max_i sum_j |H_ij| |v_j|_inf / |x_i|."""
    G = np.abs(np.asarray(want.grad_sim, dtype=np.float64))
    X = np.asarray(embeddings, dtype=np.float64)
    norms = np.linalg.norm(X, axis=1) if normalize else np.ones(X.shape[0])
    if ref is None:
        V = X / norms[:, None]
        rows = (G + G.T) @ np.max(np.abs(V), axis=1)
        yield "grad_emb", got.grad_emb, want.grad_emb, float(np.max(rows / norms, initial=0.0))
        return
    R = np.asarray(ref, dtype=np.float64)
    ref_norms = np.linalg.norm(R, axis=1) if normalize else np.ones(R.shape[0])
    V = R / ref_norms[:, None]
    U = X / norms[:, None]
    rows = G @ np.max(np.abs(V), axis=1)
    cols = G.T @ np.max(np.abs(U), axis=1)
    yield "grad_emb", got.grad_emb, want.grad_emb, float(np.max(rows / norms, initial=0.0))
    yield "grad_ref", got.grad_ref, want.grad_ref, float(np.max(cols / ref_norms, initial=0.0))


def _host(array):
    if array is None:
        return None
    if isinstance(array, np.ndarray):
        return array
    if hasattr(array, "copy_to_host"):
        return array.copy_to_host()
    return np.asarray(array)


# ---------------------------------------------------------------------------------------------
# Lifted structured loss: its bounds are stated on J_ap (Song) and A_i (generalised), recomputed
# here from the reference's S with the reference's own helpers.


def _lifted_structure(want: Result, profile, params: dict, labels):
    """(form, distance, pos, neg, gap, logits): the pair masks (after PML's pair-count rule), 2 - 2S,
    and Song's J (m x m, -inf off the positives) or the generalised A (m,) of the reference's S."""
    from ..losses import lifted_structure as lifted
    from ..pairs import masked_lse, zero_by_pair_count

    S, pairs = _pairs(want, profile, labels, None, None)
    form = params["form"]
    distance = lifted.for_form(params["distance"], form)
    pos, neg = pairs.pos, pairs.neg
    if zero_by_pair_count(profile, pos, neg):
        pos, neg = np.zeros_like(pos), np.zeros_like(neg)
    z_pos, z_neg, _ = lifted.pair_scores(S, distance, float(lifted.for_form(params["pos_margin"], form)),
                                         float(lifted.for_form(params["neg_margin"], form)))
    neg_lse, _ = masked_lse(z_neg, neg, add_one=False)
    with np.errstate(invalid="ignore"):
        if form == "song":
            logits = np.where(pos, np.logaddexp(neg_lse[:, None], neg_lse[None, :]) + z_pos, -np.inf)
        else:
            pos_lse, _ = masked_lse(z_pos, pos, add_one=False)
            if profile.empty_lse == "zero":
                pos_lse = np.where(pos.any(axis=1), pos_lse, 0.0)
                neg_lse = np.where(neg.any(axis=1), neg_lse, 0.0)
            logits = pos_lse + neg_lse
    return form, distance, pos, neg, 2.0 - 2.0 * S, logits


def _lifted_score_shift(distance: str, gap: np.ndarray, pairs: np.ndarray, dS: float) -> float:
    """The most any score z (and D) moves when every S_ij moves by up to dS (inf when a
    non-duplicate distance could reach 0)."""
    if distance == "cosine":
        return dS
    from ..rules import DUPLICATE_GAP

    live = gap[pairs & (gap > DUPLICATE_GAP)]
    if live.size == 0 or dS == 0.0:
        return 0.0
    room = float(live.min()) - 2.0 * dS
    return 2.0 * dS / math.sqrt(room) if room > 0 else math.inf


def _lifted_near_boundary(want: Result, margin: float, profile, params: dict, labels, dtype=np.float64):
    form, distance, pos, neg, gap, logits = _lifted_structure(want, profile, params, labels)
    flip = np.zeros(gap.shape, dtype=bool)
    jump = np.zeros(gap.shape, dtype=bool)
    shift = 2.0 * _lifted_score_shift(distance, gap, pos | neg, margin)
    with np.errstate(invalid="ignore"):
        if form == "song":
            near = pos & (np.abs(logits) <= shift)
            rows = near.any(axis=1) | near.any(axis=0)  # their anchors' and partners' negatives
            flip |= near | (neg & rows[:, None])
        else:
            rows = np.abs(logits) <= shift
            flip |= (pos | neg) & rows[:, None]
    if distance == "euclidean":
        from ..rules import DUPLICATE_GAP

        jump |= (pos | neg) & _duplicate_band(gap, DUPLICATE_GAP, margin, dtype)
    return flip, jump


def _lifted_conditioning(want: Result, dS: float, profile, params: dict, labels) -> tuple[float, float]:
    """(value bound, weight relative bound) for the lifted loss (see the module docstring)."""
    form, distance, pos, neg, gap, logits = _lifted_structure(want, profile, params, labels)
    dz = _lifted_score_shift(distance, gap, pos | neg, dS)
    phi_rel = 0.0
    if distance == "euclidean":
        used = np.asarray(want.pos_used) | np.asarray(want.neg_used)
        d_min = float(np.sqrt(gap[used].min())) if used.any() else math.inf
        phi_rel = dz / (d_min - dz) if dz < d_min else math.inf
    margins = abs(float(_for_form(params["pos_margin"], form))) + abs(float(_for_form(params["neg_margin"], form)))
    rounding = 8 * U64 * (2.0 + margins)  # exp of float64 scores that include the margins
    if form == "generalized":
        return 2.0 * dz, _expm1(2.0 * dz) * (1.0 + phi_rel) + phi_rel + rounding
    active = logits[pos & (logits > 0)]
    if active.size == 0:
        return 2.0 * dz * (math.sqrt(2.0 * max(want.loss, 0.0)) + dz), rounding
    coef_rel = 2.0 * dz / float(active.min()) if dz > 0 else 0.0
    weight = (1.0 + coef_rel) * (1.0 + _expm1(4.0 * dz)) * (1.0 + phi_rel) - 1.0
    return 2.0 * dz * (math.sqrt(2.0 * max(want.loss, 0.0)) + dz), weight + rounding


def _for_form(value, form):
    from ..rules import for_form

    return for_form(value, form)
