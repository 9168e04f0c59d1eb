r"""FastAP, Cakir, He, Xia, Kulis, Sclaroff, CVPR 2019: average precision from soft distance histograms.

Per anchor i, over its retrieval set (positives P_i and negatives N_i; ``ref`` may be a separate
set), squared distances of unit rows d_ij = 2 - 2 S_ij are binned by triangular kernels at
z_l = l Delta, Delta = 4/B, l = 0..B::

    K_l(d) = max(0, 1 - |d - z_l| / Delta)
    h+_il = sum_{j in P_i} K_l(d_ij),  h-_il = sum_{j in N_i} K_l(d_ij),
    H+_il = sum_{k <= l} h+_ik,        H_il = sum_{k <= l} (h+_ik + h-_ik),  H-_il = H_il - H+_il
    FastAP_i = (1/|P_i|) sum_l h+_il H+_il / H_il          (a term with H_il = 0 is 0)
    L = (1/N') sum_{i: P_i nonempty} (1 - FastAP_i)        (N' such anchors; L = 0 if N' = 0)

GPW weights (docs/losses.md#fast_ap, derived and checked here numerically)::

    dFastAP_i/dh+_im = [ (H+_im H_im + h+_im H-_im) / H_im^2 + sum_{l > m} h+_il H-_il / H_il^2 ] / |P_i|
    dFastAP_i/dh-_im = -[ sum_{l >= m} h+_il H+_il / H_il^2 ] / |P_i|
    G_ij = (2/N') sum_l dFastAP_i/dh(+ or -)_il * K_l'(d_ij)          (dd/dS = -2, dL/dFastAP_i = -1/N')

(terms with H_il = 0 contribute 0). K_l' = -sign(d - z_l)/Delta inside the triangle. Kinks (d at a
bin centre or at a triangle's foot; exact on the bin scale d B/4, see ``kernel``) follow ``kink_slope``:

* ``"zero"``: K_l' = 0 at the peak and at both feet (torch autograd: |x|'(0) = 0, relu'(0) = 0);
  pytorch-metric-learning's ``FastAPLoss`` (``losses/fast_ap_loss.py``, autograd) does this.
* ``"left"``: the one-sided derivative from below in d (+1/Delta on (z_l - Delta, z_l], -1/Delta on
  (z_l, z_l + Delta]), the official code's ``dSoftBinning`` (FastAP-metric-learning
  ``pytorch/FastAP_loss.py``). gpwref's G is then the exact one-sided derivative of L; the official
  backward agrees except for a distance exactly on a grid point next to an empty bin (its 0/0 -> 0).

The rule at a distance exactly on bin l's centre (t = d B/4 = l): the pair touches the peak of K_l
and the feet of K_{l-1} and K_{l+1}. Under ``"zero"`` all three slopes are 0, so G_ij = 0 exactly;
under ``"left"`` the slopes are K_{l-1}' = -1/Delta, K_l' = +1/Delta, K_{l+1}' = 0, so G_ij is the
derivative of L from above in S_ij. The derivative from below differs from it by (2/N')(1/Delta)
times the second difference of the pair's bin weights across l-1, l, l+1, which can be arbitrarily
small but is not 0 in general: L has a kink there, and a central difference across it returns
the mean of the two slopes, which neither rule is (tests/losses/test_fast_ap.py derives a case
whose jump is 3e-5 of max|G|). PML's autograd gives the ``"zero"`` value and the official backward
the ``"left"`` one wherever their own arithmetic (cdist**2, torch.linspace centres) puts the distance
exactly on the centre (d = 1 with B = 4 in that test file); elsewhere their side of the kink is
decided by round-off. A duplicate at d = 0 (bin 0's centre) has G = 0 under both rules (below).

Duplicates sit on a kink: d = 0 is the centre of bin 0, and 2 - 2S of two copies of one unit row
comes out as 0 or +-4e-16 depending on the order of the floating-point sums. So a pair with
|1 - S| <= DUPLICATE_GAP (64 ulps of 1) is at distance exactly 0, as cdist reports for exact copies,
and carries no weight (d does not move there).

Accuracy: 1 - FastAP_i is evaluated as (1/|P_i|) [sum_l h+_il H-_il / H_il + sum_{j in P_i} out(d_ij)]
with out(d) = 1 - sum_l K_l(d) in closed form (0 on [0, 4], min(1, -d/Delta) below, min(1,
(d - 4)/Delta) above): the triangles are a partition of unity on [0, 4], so a perfectly ranked
anchor has loss exactly 0 instead of the round-off of 1 - (a sum close to 1). G is the derivative
of that form (see value_and_grad): the same numbers as the formula above, without its 1 - 1
cancellation, and exact at kinks next to an empty bin.

The official code's hand-written backward also omits the 1/N' of the mean and the factor 2 of
d(d2)/dX, so its gradient is (N'/2) times the gradient of its own forward value
(docs/losses.md#fast_ap); ``extras["official_backward_scale"]`` = N'/2 is that factor (grad_sim stays the true
gradient). The weights use self similarity and, through the histograms, the relative order of all
of the anchor's pairs (negative- and positive-relative similarity). The sign of a weight is not
fixed (gpw_sign is False): tests/losses/test_fast_ap.py shows a weight of the wrong sign.
"""

from __future__ import annotations

import numpy as np

from ..entry import LossEntry, integer, one_of
from ..pairs import PairResult, Pairs
from ..profiles import Profile


def kernel(d: np.ndarray, num_bins: int, kink_slope: str) -> tuple[np.ndarray, np.ndarray]:
    """K_l(d) and dK_l/dd for every entry of d and every bin l = 0..B (last axis).

    Evaluated on the bin scale t = d B / 4 as max(0, 1 - |t - l|): a distance on the grid gives
    t - l exactly 0 or +-1, so which kink it sits on does not depend on how z_l = 4l/B rounds.
    """
    delta = 4.0 / num_bins
    u = (d * num_bins / 4.0)[..., None] - np.arange(num_bins + 1)
    v = 1.0 - np.abs(u)
    K = np.maximum(v, 0.0)
    if kink_slope == "zero":
        slope = np.where(v > 0, -np.sign(u) / delta, 0.0)
    else:  # "left": one-sided derivative from below in d
        active = (v > 0) | ((v == 0) & (u > 0))
        slope = np.where(active, np.where(u > 0, -1.0 / delta, 1.0 / delta), 0.0)
    return K, slope


DUPLICATE_GAP = 64 * np.finfo(np.float64).eps


def distances(S: np.ndarray) -> np.ndarray:
    """d = 2 - 2S, with pairs at |1 - S| <= DUPLICATE_GAP (copies up to rounding) at exactly 0."""
    return np.where(np.abs(1.0 - S) <= DUPLICATE_GAP, 0.0, 2.0 - 2.0 * S)


def outside_mass(d: np.ndarray, delta: float) -> np.ndarray:
    """1 - sum_l K_l(d) in closed form: the part of a pair's unit mass that falls off [0, 4]."""
    return np.where(d < 0, np.minimum(1.0, -d / delta), np.where(d > 4.0, np.minimum(1.0, (d - 4.0) / delta), 0.0))


def value_and_grad(S: np.ndarray, pairs: Pairs, profile: Profile, *, num_bins: int, kink_slope: str) -> PairResult:
    from ..errors import check_memory

    # the kernel, its slopes and the weights are m x n x (B + 1) arrays, about six alive at once
    check_memory(S.shape[0], S.shape[1] * (num_bins + 1), 6, "num_bins",
                 what=f"FastAP's {S.shape[0]} x {S.shape[1]} x {num_bins + 1} (pairs x bins) arrays",
                 advice="use fewer bins or a smaller batch")
    pos, neg = pairs.pos, pairs.neg
    delta = 4.0 / num_bins
    d = distances(S)
    K, slope = kernel(d, num_bins, kink_slope)
    h_pos = np.einsum("ijl,ij->il", K, pos.astype(float))
    h_neg = np.einsum("ijl,ij->il", K, neg.astype(float))
    H_pos = np.cumsum(h_pos, axis=1)
    H = np.cumsum(h_pos + h_neg, axis=1)
    H_neg = H - H_pos
    filled = H > 0
    safe_H = np.where(filled, H, 1.0)
    n_pos = pos.sum(axis=1)
    alive = n_pos > 0
    n_alive = int(np.count_nonzero(alive))
    per_anchor = np.zeros(S.shape[0])
    grad_sim = np.zeros(S.shape)
    if n_alive:
        misranked = np.where(filled, h_pos * H_neg / safe_H, 0.0).sum(axis=1)
        lost = np.where(pos, outside_mass(d, delta), 0.0).sum(axis=1)
        per_anchor[alive] = (misranked[alive] + lost[alive]) / n_pos[alive] / n_alive
        # Derivatives of the evaluated form (1/|P|) [sum_l h+_l H-_l / H_l + sum_P out(d)]:
        #   d/dh+_m = [H_m > 0] H-_m (H_m - h+_m) / H_m^2 - sum_{l > m} h+_l H-_l / H_l^2
        #   d/dh-_m = sum_{l >= m} h+_l H+_l / H_l^2,      out'(d) = -sum_l K_l'(d)
        # (equal to -dFastAP/dh of the docstring wherever sum_l K_l' = 0 and H_m > 0; exact at the
        # kinks next to an empty bin, where the 0/0 -> 0 convention of the other form is not).
        later = np.where(filled, h_pos * H_neg / safe_H**2, 0.0)
        later_sum = np.cumsum(later[:, ::-1], axis=1)[:, ::-1] - later  # sum over l > m
        from_here = np.where(filled, h_pos * H_pos / safe_H**2, 0.0)
        here_sum = np.cumsum(from_here[:, ::-1], axis=1)[:, ::-1]  # sum over l >= m
        own = np.where(filled, H_neg * (H - h_pos) / safe_H**2, 0.0)
        count = np.where(alive, n_pos, 1)[:, None]
        d_pos = np.where(alive[:, None], (own - later_sum) / count, 0.0)
        d_neg = np.where(alive[:, None], here_sum / count, 0.0)
        d_out = np.where(alive[:, None], -1.0 / count, 0.0)  # times sum_l K_l'
        weight = np.where(pos[..., None], (d_pos + d_out)[:, None, :], 0.0) + np.where(neg[..., None], d_neg[:, None, :], 0.0)
        grad_sim = (-2.0 / n_alive) * np.sum(weight * slope, axis=2)
        grad_sim[np.abs(1.0 - S) <= DUPLICATE_GAP] = 0.0  # d is held at 0 there
    used = alive[:, None]
    return PairResult(
        loss=float(per_anchor.sum()),
        per_anchor=per_anchor,
        grad_sim=grad_sim,
        pos_used=pos & used,
        neg_used=neg & used,
        extras={"official_backward_scale": n_alive / 2.0},
    )


ENTRY = LossEntry(
    name="fast_ap",
    function=value_and_grad,
    hyper={"num_bins": integer(at_least=1), "kink_slope": one_of("zero", "left")},
    defaults={"paper": {"num_bins": 10, "kink_slope": "zero"}, "pml": {"num_bins": 10, "kink_slope": "zero"}},
    reference="Cakir, He, Xia, Kulis, Sclaroff. Deep Metric Learning to Rank. CVPR 2019",
    similarities=("self", "negative-relative", "positive-relative"),
    gpw_sign=False,
    supports_ref=True,
    variants=({}, {"kink_slope": "left"}),
    limits="histogram kernels are piecewise linear: kinks at bin centres and feet follow kink_slope; "
    "extras['official_backward_scale'] = N'/2 is the official backward's extra factor",
    family="ranking",
    counterparts={"pytorch-metric-learning": "FastAPLoss", "FastAP-metric-learning (official)": "FastAPLoss (pytorch/FastAP_loss.py)"},
)
