"""Per-pair scalar formulas, written once and compiled for both targets.

Every function here is plain Python on scalars, with no NumPy and no Numba in its body, so that
``cpu.py`` can compile it with ``numba.njit(inline="always")`` and ``cuda.py`` with
``numba.cuda.jit(device=True)``: the CPU kernels and the CUDA kernels then evaluate the very same
expression for a pair, and the reference (``gpwref/losses/``) is the third, independent, spelling.

Codes shared with the kernels (integers, since kernels take no strings):

* pair kinds: ``NOT_A_PAIR`` (self pair, or dropped by the value self rule), ``POSITIVE``, ``NEGATIVE``;
* mining comparisons (``Profile.mining_compare``): ``SHIFT_EXTREME`` evaluates ``S_ij > min_pos - eps``
  (the paper's formula), ``SHIFT_PAIR`` evaluates ``S_ij + eps > min_pos`` (official code and PML).

Every argument of a scalar function is already in the kernel's working dtype (the backends cast
hyper-parameters once), so a float32 kernel does float32 arithmetic throughout, as the NumPy
reference does when it is run in float32.
"""

from __future__ import annotations

import math
import types

NOT_A_PAIR = 0
POSITIVE = 1
NEGATIVE = 2

SHIFT_EXTREME = 0
SHIFT_PAIR = 1

MINING_CODES = {"shift_extreme": SHIFT_EXTREME, "shift_pair": SHIFT_PAIR}


def pair_kind(s, same_label, is_self_index, value_rule, self_threshold):
    """What the pair (anchor, j) is: the self pair and, under the value self rule, every
    same-label pair with ``s >= self_threshold`` are not pairs (``gpwref.pairs.build_pairs``)."""
    if not same_label:
        return NEGATIVE
    if is_self_index:
        return NOT_A_PAIR
    if value_rule and s >= self_threshold:
        return NOT_A_PAIR
    return POSITIVE


def ms_keep_negative(s, min_pos, eps, compare):
    """MS mining of a negative: ``s > min_pos - eps`` (strict; False when the anchor has no positive,
    min_pos = +inf)."""
    if compare == SHIFT_EXTREME:
        return s > min_pos - eps
    return s + eps > min_pos


def ms_keep_positive(s, max_neg, eps, compare):
    """MS mining of a positive: ``s < max_neg + eps`` (strict; False when the anchor has no negative,
    max_neg = -inf)."""
    if compare == SHIFT_EXTREME:
        return s < max_neg + eps
    return s - eps < max_neg


def ms_positive_logit(s, alpha, lam):
    """Exponent of a positive's term in the MS loss: ``-alpha (S_ij - lam)``."""
    return -alpha * (s - lam)


def ms_negative_logit(s, beta, lam):
    """Exponent of a negative's term in the MS loss: ``beta (S_ij - lam)``."""
    return beta * (s - lam)


def ms_pair_weight(s, kind, min_pos, max_neg, any_pos, any_neg, top_pos, top_neg, total_pos, total_neg,
                   mine, eps, compare, alpha, beta, lam, m):
    """MS weight of one pair from its anchor row's statistics: ``(G_ij in float64, kept as positive,
    kept as negative)``. ``top_*`` are the rows' largest kept logits (at least 0) and ``total_*`` the
    add-one softmax denominators ``exp(-top) + sum_k exp(z_k - top)``; the order of operations is
    the reference's, ``(e / total) / m``."""
    if kind == POSITIVE and any_pos:
        if not mine or ms_keep_positive(s, max_neg, eps, compare):
            e = math.exp(ms_positive_logit(float(s), alpha, lam) - top_pos)
            return -((e / total_pos) / m), True, False
    elif kind == NEGATIVE and any_neg:
        if not mine or ms_keep_negative(s, min_pos, eps, compare):
            e = math.exp(ms_negative_logit(float(s), beta, lam) - top_neg)
            return (e / total_neg) / m, False, True
    return 0.0, False, False


# A row whose largest kept negative logit is at most this may use the unshifted form below:
# exp(-top) and exp(z) for z <= top stay normal float64 numbers (exp(+-600) ~ 1e+-261).
UNSHIFTED_TOP_LIMIT = 600.0


def ms_negative_scale(top_neg, total_neg):
    """The row factor ``exp(-top) / total`` of the unshifted form, or -1 (not usable) when the row's
    largest kept negative logit exceeds UNSHIFTED_TOP_LIMIT."""
    if top_neg > UNSHIFTED_TOP_LIMIT:
        return -1.0
    return math.exp(-top_neg) / total_neg


def ms_negative_weight_unshifted(exp_logit, row_scale, m):
    """A kept negative's weight ``(e^z (e^-top / total)) / m`` from ``e^z`` and the row factor: the
    same number as ``(e^(z - top) / total) / m`` up to round-off, and one exponential e^z then serves
    both rows of a pair (G_ij and G_ji, as S_ij = S_ji) in the symmetric kernel."""
    return (exp_logit * row_scale) / m


def log1p_sum_exp(shifted_sum, top):
    """``log(1 + sum_k exp(z_k))`` from ``shifted_sum = sum_k exp(z_k - top)`` with
    ``top = max(0, max_k z_k)`` (the add-one log-sum-exp of ``gpwref.pairs.masked_lse``).

    When no logit exceeds 0 (top == 0) the sum is unshifted and log1p keeps the relative precision
    of a tiny sum; otherwise ``log(exp(-top) + shifted_sum) + top`` cannot overflow.
    """
    if top > 0:
        return math.log(math.exp(-top) + shifted_sum) + top
    return math.log1p(shifted_sum)


def add_one_total(shifted_sum, top):
    """The softmax denominator ``exp(-top) + shifted_sum`` of the add-one log-sum-exp."""
    return math.exp(-top) + shifted_sum


def softplus(z):
    """``log(1 + e^z)`` in its stable form ``max(z, 0) + log1p(e^-|z|)``."""
    return max(z, 0.0) + math.log1p(math.exp(-abs(z)))


def logistic(z):
    """``1 / (1 + e^-z)``, split by sign so that the exponential never overflows."""
    e = math.exp(-abs(z))
    if z >= 0:
        return 1.0 / (1.0 + e)
    return e / (1.0 + e)


def binomial_positive_logit(s, alpha, lam):
    """Binomial deviance, a positive's softplus argument: ``alpha (lam - S_ij)``."""
    return alpha * (lam - s)


def binomial_negative_logit(s, beta, lam):
    """Binomial deviance, a negative's softplus argument: ``beta (S_ij - lam)``."""
    return beta * (s - lam)


COSINE = 0
EUCLIDEAN = 1
DISTANCE_CODES = {"cosine": COSINE, "euclidean": EUCLIDEAN}


def contrastive_pair(s, positive, distance, linear_pos, pos_margin, neg_margin, duplicate_gap):
    """Contrastive loss, one pair (``gpwref.losses.contrastive``): (term, slope dt/dS, counted).

    Cosine: S within ``duplicate_gap`` of a duplicate (|2 - 2S| <= gap) is read as exactly 1;
    positive ``1 - S`` (``linear_pos``, always counted) or ``[pos_margin - S]_+``, negative
    ``[S - neg_margin]_+``. Euclidean on d = sqrt(2 - 2S) (0 with slope 0 when 2 - 2S <= gap):
    positive ``[d - pos_margin]_+``, negative ``[neg_margin - d]_+``, dd/dS = -1/d. A hinge counts
    when its term is > 0 (exactly 0 has weight 0, as torch's relu).
    """
    if distance == COSINE:
        if abs(2.0 - 2.0 * s) <= duplicate_gap:
            s = 1.0
        if positive:
            if linear_pos:
                return 1.0 - s, -1.0, True
            raw = pos_margin - s
            if raw > 0:
                return raw, -1.0, True
            return 0.0, 0.0, False
        raw = s - neg_margin
        if raw > 0:
            return raw, 1.0, True
        return 0.0, 0.0, False
    squared = 2.0 - 2.0 * s
    d = 0.0
    dd_ds = 0.0
    if squared > duplicate_gap:
        d = math.sqrt(squared)
        dd_ds = -1.0 / d
    if positive:
        raw = d - pos_margin
        if raw > 0:
            return raw, dd_ds, True
        return 0.0, 0.0, False
    raw = neg_margin - d
    if raw > 0:
        return raw, -dd_ds, True
    return 0.0, 0.0, False


LOG_2 = 0.6931471805599453  # log(2) in float64 (NumPy's NPY_LOGE2)


def log_add_exp(x, y):
    """``log(e^x + e^y)`` evaluated as NumPy's ``logaddexp`` does: ``x + log 2`` for x == y (so
    -inf and -inf give -inf), else the larger plus ``log1p(exp(-|x - y|))``; never overflows."""
    if x == y:
        return x + LOG_2
    diff = x - y
    if diff > 0:
        return x + math.log1p(math.exp(-diff))
    return y + math.log1p(math.exp(diff))


def log_sum_from_shifted(total, top):
    """``log sum_k exp(z_k)`` from ``total = sum_k exp(z_k - top)`` with ``top = max_k z_k`` (the
    reference's ``log(total) + top``, ``gpwref.pairs.masked_lse`` without the add-one term); -inf for
    an empty set (total = 0)."""
    if total > 0:
        return math.log(total) + top
    return -math.inf


def lifted_scores(s, distance, pos_margin, neg_margin, duplicate_gap):
    """Lifted structured loss, one pair's scores (``gpwref.losses.lifted_structure.pair_scores``):
    ``(z+, z-, phi)`` with ``phi = dz-/dS = -dz+/dS``.

    Cosine: ``z+ = pos_margin - S``, ``z- = S - neg_margin``, phi = 1. Euclidean on
    ``D = sqrt(2 - 2S)``: ``z+ = D - pos_margin``, ``z- = neg_margin - D``, phi = 1/D; a duplicate
    (``2 - 2S <= duplicate_gap``) has D = 0 and phi = 0.
    """
    if distance == COSINE:
        return pos_margin - s, s - neg_margin, 1.0
    gap = 2.0 - 2.0 * s
    if gap <= duplicate_gap:
        return 0.0 - pos_margin, neg_margin - 0.0, 0.0
    d = math.sqrt(gap)
    return d - pos_margin, neg_margin - d, 1.0 / d


def lifted_song_pair(lse_anchor, lse_partner, z_pos, ordered_pairs):
    """Song's lifted term of one ordered positive pair (a, p) from the two rows' negative
    log-sum-exps ``lse_* = log sum_{k in N_*} exp(z-_*k)`` (-inf for no negative):
    ``(J_ap, c_ap, share_a, share_p)`` with ``J_ap = log(E_a + E_p) + z+_ap``,
    ``c_ap = [J_ap]_+ / Q`` (``ordered_pairs`` = Q) and the shares ``E_a / E_ap``, ``E_p / E_ap``
    of the two rows in E_ap (0 when the pair is inactive, c_ap = 0: the hinge at exactly 0 has
    weight 0)."""
    log_e = log_add_exp(lse_anchor, lse_partner)
    j = log_e + z_pos
    coef = 0.0
    if j > 0:
        coef = j / ordered_pairs
    if coef > 0:
        return j, coef, math.exp(lse_anchor - log_e), math.exp(lse_partner - log_e)
    return j, 0.0, 0.0, 0.0


def lifted_song_positive(s, s_t, is_pos, is_pos_t, lse_anchor, lse_partner, distance, pos_margin, neg_margin,
                         duplicate_gap, ordered_pairs):
    """Song's form, anchor a's same-label column p, both orders: (a, p) with ``s = S_ap`` (a positive
    of a when ``is_pos``) and (p, a) with ``s_t = S_pa`` (``is_pos_t``). Returns
    ``(hinge_sq, anchor_term, partner_term, weight, used)``: ``[J_ap]_+^2``, ``c_ap E_a/E_ap`` and
    ``c_pa E_a/E_pa`` (the two parts of row a's negative factor), ``G_ap = -c_ap phi_ap`` and whether
    it is non-zero; a part whose pair is not a positive is 0."""
    hinge_sq = 0.0
    anchor_term = 0.0
    partner_term = 0.0
    weight = 0.0
    used = False
    if is_pos:
        z_pos, _, phi = lifted_scores(s, distance, pos_margin, neg_margin, duplicate_gap)
        j_ap, coef, share_a, _ = lifted_song_pair(lse_anchor, lse_partner, z_pos, ordered_pairs)
        if j_ap > 0:
            hinge_sq = j_ap * j_ap
        anchor_term = coef * share_a
        weight = phi * (0.0 - coef)
        used = coef > 0 and phi != 0
    if is_pos_t:
        z_pos_t, _, _ = lifted_scores(s_t, distance, pos_margin, neg_margin, duplicate_gap)
        _, coef_t, _, share_a_t = lifted_song_pair(lse_partner, lse_anchor, z_pos_t, ordered_pairs)
        partner_term = coef_t * share_a_t
    return hinge_sq, anchor_term, partner_term, weight, used


def lifted_generalized_logit(pos_lse, neg_lse, n_pos, n_neg, empty_zero):
    """Generalised lifted loss, an anchor's hinge argument ``A_i = lse_P(z+) + lse_N(z-)``; with
    ``empty_zero`` (the profile's empty_lse "zero", PML) an empty set's log-sum-exp is 0, else it
    is -inf (and so is A_i)."""
    if empty_zero and n_pos == 0:
        pos_lse = 0.0
    if empty_zero and n_neg == 0:
        neg_lse = 0.0
    return pos_lse + neg_lse


def lifted_generalized_pair(s, kind, active, scale, pos_top, pos_total, neg_top, neg_total, distance, pos_margin,
                            neg_margin, duplicate_gap):
    """Generalised lifted loss, the weight of one pair of an anchor row from the row's max-shifted
    softmax denominators (``pos_top``, ``pos_total``: max z+ and sum exp(z+ - max) over the row's
    positives; likewise for the negatives): ``(G_ij, used)`` with ``G_ij = -scale phi softmax_P(z+)_j``
    on a positive, ``+scale phi softmax_N(z-)_j`` on a negative, 0 when the anchor's hinge is inactive
    or the pair is neither; ``used``: phi != 0 on a weighted pair."""
    if not active or (kind != POSITIVE and kind != NEGATIVE):
        return 0.0, False
    z_pos, z_neg, phi = lifted_scores(s, distance, pos_margin, neg_margin, duplicate_gap)
    if kind == POSITIVE:
        return (scale * phi) * (0.0 - math.exp(z_pos - pos_top) / pos_total), phi != 0
    return (scale * phi) * (math.exp(z_neg - neg_top) / neg_total), phi != 0

# Order matters: a function may call only those above it.
FUNCTIONS = (
    "pair_kind", "ms_keep_negative", "ms_keep_positive", "ms_positive_logit", "ms_negative_logit",
    "ms_pair_weight", "ms_negative_scale", "ms_negative_weight_unshifted", "log1p_sum_exp", "add_one_total", "softplus", "logistic", "binomial_positive_logit",
    "binomial_negative_logit", "contrastive_pair", "log_add_exp", "log_sum_from_shifted", "lifted_scores",
    "lifted_song_pair", "lifted_song_positive", "lifted_generalized_logit", "lifted_generalized_pair",
)


def compile_all(decorator) -> dict:
    """Every scalar function compiled with ``decorator`` (``numba.njit(...)`` or
    ``numba.cuda.jit(device=True)``), calling each other's compiled versions: a namespace dict.

    Each function is re-created over a namespace in which its callees are the compiled functions
    (a plain Python callee cannot be called from compiled code), from the same code object, so the
    CPU and the CUDA kernels run the same source.
    """
    namespace = {"math": math}
    namespace.update({name: value for name, value in globals().items() if name.isupper()})
    for name in FUNCTIONS:
        original = globals()[name]
        clone = types.FunctionType(original.__code__, namespace, name, original.__defaults__, original.__closure__)
        clone.__qualname__ = original.__qualname__
        clone.__module__ = original.__module__
        clone.__doc__ = original.__doc__
        namespace[name] = decorator(clone)
    return namespace
