"""fast_ap: hand-derived batches, modelled conventions and bad input (drawn batches: tests/test_catalog.py)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import gpwref


# FastAP. One anchor (class 0) against a reference set of one positive and one negative, B = 2 bins
# of width 2 (z = 0, 2, 4). Positive at S = 0.75 (d = 0.5), negative at S = 0 (d = 2):
#   K(0.5) = (0.75, 0.25, 0), K(2) = (0, 1, 0): h+ = (0.75, 0.25, 0), h- = (0, 1, 0);
#   H+ = (0.75, 1, 1), H = (0.75, 2, 2), H- = (0, 1, 1).
#   FastAP = 0.75 * 0.75 / 0.75 + 0.25 * 1 / 2 = 0.875; L = 0.125.
#   dFastAP/dh+ = ((H+_0 H_0 + h+_0 H-_0)/H_0^2 + h+_1 H-_1/H_1^2, (H+_1 H_1 + h+_1 H-_1)/H_1^2, ...)
#              = (1 + 0.0625, (2 + 0.25)/4, 0) = (1.0625, 0.5625, 0)
#   dFastAP/dh-_1 = -(h+_1 H+_1/H_1^2 + h+_2 H+_2/H_2^2) = -0.0625.
#   K' at d = 0.5: bin 0 -1/2, bin 1 +1/2. At d = 2 (bin 1's centre, bin 0's right foot, bin 2's left
#   foot): "zero" gives 0 for all three; "left" (slope from below in d) gives bin 0 -1/2, bin 1 +1/2, bin 2 0.
#   dFastAP/dh-_0 = -(h+_0 H+_0/H_0^2 + h+_1 H+_1/H_1^2) = -(1 + 0.0625) = -1.0625.
#   G = 2 sum_l dFastAP/dh_l K'_l:  G_pos = 2 (1.0625 (-1/2) + 0.5625 (1/2)) = -0.5;
#   G_neg = 0 ("zero") or 2 (-1.0625 (-1/2) - 0.0625 (1/2)) = 1.0 ("left").


def test_fast_ap_hand_derived_and_the_kink_rule():
    S = np.array([[0.75, 0.0]])
    y, yr = np.array([0]), np.array([0, 1])
    zero = gpwref.from_similarity("fast_ap", S, y, yr, num_bins=2)
    assert zero.loss == pytest.approx(0.125, rel=1e-14)
    np.testing.assert_allclose(zero.grad_sim, [[-0.5, 0.0]], rtol=1e-14, atol=0)
    left = gpwref.from_similarity("fast_ap", S, y, yr, num_bins=2, kink_slope="left")
    np.testing.assert_allclose(left.grad_sim, [[-0.5, 1.0]], rtol=1e-14)


def test_fast_ap_weights_can_break_the_gpw_sign():
    # A drawn batch with a positive pair whose G > 0 (or a negative with G < 0), confirmed by a
    # central difference of the loss itself: FastAP is not a GPW-signed loss (gpw_sign=False).
    for seed in range(50):
        rng = np.random.default_rng(seed)
        X, y = rng.normal(size=(6, 3)), np.array([0, 0, 0, 1, 1, 2])
        r = gpwref.compute("fast_ap", X, y)
        same = y[:, None] == y[None, :]
        wrong = np.argwhere(((r.grad_sim > 1e-3) & same) | ((r.grad_sim < -1e-3) & ~same))
        if len(wrong):
            i, j = wrong[0]
            up, down = r.sim.copy(), r.sim.copy()
            up[i, j] += 1e-6
            down[i, j] -= 1e-6
            fd = (gpwref.from_similarity("fast_ap", up, y).loss - gpwref.from_similarity("fast_ap", down, y).loss) / 2e-6
            assert fd == pytest.approx(r.grad_sim[i, j], rel=1e-5)
            return
    pytest.fail("no sign violation found")


def test_fast_ap_official_backward_is_n_alive_over_two_times_the_gradient():
    # docs/losses.md#fast_ap: the official hand-written backward returns (N'/2) dL/dX.
    from gpwref_verification.refs.fast_ap import _OfficialFastAP

    rng = np.random.default_rng(2)
    X = rng.normal(size=(8, 4))
    X /= np.linalg.norm(X, axis=1, keepdims=True)
    y = np.array([0, 0, 0, 1, 1, 2, 2, 3])  # anchor 7 has no positive: N' = 7
    ours = gpwref.compute("fast_ap", X, y, normalize=False, kink_slope="left")
    Xt = torch.tensor(X, requires_grad=True)
    value = _OfficialFastAP.apply(Xt, torch.as_tensor(y), 10, 1.0)
    value.backward()
    assert value.item() == pytest.approx(ours.loss, rel=1e-13)
    assert ours.extras["official_backward_scale"] == 3.5
    np.testing.assert_allclose(Xt.grad.numpy(), 3.5 * ours.grad_emb, rtol=1e-10, atol=1e-14)


def test_fast_ap_duplicates_sit_at_distance_zero():
    # 1 - S of a copy is a few ulps either way; within 64 ulps it is d = 0 (bin 0's centre), no weight.
    S = np.array([[1.0 - 2.0**-52, 0.3], [0.3, 1.0 + 2.0**-51]])
    r = gpwref.from_similarity("fast_ap", S, np.array([0, 1]), np.array([0, 1]))
    assert r.grad_sim[0, 0] == 0.0 and r.grad_sim[1, 1] == 0.0



# A kink with a tiny slope jump (issue 6's root cause). B = 10 (Delta = 0.4, t = d B/4 = 2.5 d), one
# anchor (class 0) against a reference set: negatives at S = 0, -1/16, 5/8, positives at S = -1/8, 3/8.
#   t: neg 5 (exactly bin 5's centre), neg 5.3125, neg 1.875, pos 5.625, pos 3.125.
#   h+ = (bin 3: 7/8, bin 4: 1/8, bin 5: 3/8, bin 6: 5/8), h- = (bin 1: 1/8, bin 2: 7/8, bin 5: 1 + 11/16,
#   bin 6: 5/16); H+_4 = 1, H_4 = 2, H+_5 = 11/8, H_5 = 65/16.
# For a negative, dL/dh-_m = (1/|P|) sum_{l >= m} T_l with T_l = h+_l H+_l / H_l^2, and dd/dS = -2, so
# G = -2 (1/2) sum_l (dL/dh-_l) K_l'(d) with K' = +-1/Delta = +-2.5 on the triangle's two sides:
#   from above in S (d from below): K_4' = -2.5, K_5' = +2.5:  G = -2.5 (-T_4) / 2 * 2 = 2.5 T_4
#       = 2.5 (1/8)(1)/4 = 5/64;
#   from below in S (d from above): K_5' = -2.5, K_6' = +2.5:  G = 2.5 T_5 = 2.5 (3/8)(11/8)/(65/16)^2 = 66/845.
# "left" takes the first (the slope from below in d); "zero" takes 0 (torch's |x|'(0) = relu'(0) = 0).
# The two one-sided slopes differ by 5/64 - 66/845 = 1.8e-5, i.e. 3.4e-5 of max|G| (0.539): the generic
# harness's kink detector (a jump of G above 1e-3 max|G|) does not see it, so it compared the central
# difference there -- the mean of the two slopes, 9e-6 (1.7e-5 max|G|) from "left" and 0.078 from
# "zero" -- against the fd tolerance 1e-6. verification/refs/fast_ap.py skips a step that crosses the
# grid (its regime is each pair's grid cell floor(t)) and compares every other entry.
FAST_AP_KINK_S = np.array([[0.0, -0.125, -0.0625, 0.375, 0.625]])
FAST_AP_KINK_LABELS = (np.array([0]), np.array([1, 0, 1, 0, 1]))


def _one_sided_slope(S, labels, ref_labels, entry, step, **hyper):
    """Richardson-extrapolated one-sided difference of gpwref's value along +step (error O(step^2))."""
    def at(k):
        moved = S.copy()
        moved[entry] += k * step
        return gpwref.from_similarity("fast_ap", moved, labels, ref_labels, **hyper).loss

    base = at(0)
    return 2 * (at(1) - base) / step - (at(2) - base) / (2 * step)


def test_fast_ap_kink_with_a_tiny_slope_jump():
    y, yr = FAST_AP_KINK_LABELS
    left = gpwref.from_similarity("fast_ap", FAST_AP_KINK_S, y, yr, kink_slope="left")
    zero = gpwref.from_similarity("fast_ap", FAST_AP_KINK_S, y, yr)
    assert left.grad_sim[0, 0] == pytest.approx(5 / 64, rel=1e-14)
    assert zero.grad_sim[0, 0] == 0.0
    # "left" is the exact one-sided derivative from above in S; the other side is 66/845.
    assert _one_sided_slope(FAST_AP_KINK_S, y, yr, (0, 0), 1e-5) == pytest.approx(5 / 64, rel=1e-8)
    assert _one_sided_slope(FAST_AP_KINK_S, y, yr, (0, 0), -1e-5) == pytest.approx(66 / 845, rel=1e-8)
    scale = np.abs(left.grad_sim).max()
    assert (5 / 64 - 66 / 845) / scale < 1e-3  # below the generic detector's threshold
    assert (5 / 64 - 66 / 845) / 2 / scale > 1e-5  # a central difference there is off by far more than 1e-6


def test_fast_ap_fd_check_skips_grid_crossings_and_still_fails_a_wrong_gradient():
    from types import SimpleNamespace

    from gpwref_verification.refs import fast_ap as ref
    from gpwref_verification.harness import frozen_fd_error

    y, yr = FAST_AP_KINK_LABELS
    pos, neg = yr[None, :] == y[:, None], yr[None, :] != y[:, None]
    S = FAST_AP_KINK_S
    for kink_slope in ("zero", "left"):
        params = {"num_bins": 10, "kink_slope": kink_slope}
        r = gpwref.from_similarity("fast_ap", S, y, yr, kink_slope=kink_slope)
        ours = SimpleNamespace(sim=S, grad_sim=r.grad_sim)
        err, compared = frozen_fd_error(ref.REFS, "paper", params, ours, pos, neg)
        assert compared == 4 and err < 1e-8  # every entry but the one on bin 5's centre
        # the regime is what protects the kink: without it the comparison at the kink fails
        cells = ref.grid_cells
        try:
            ref.grid_cells = lambda *args: ()
            assert frozen_fd_error(ref.REFS, "paper", params, ours, pos, neg)[0] > 1e-5
        finally:
            ref.grid_cells = cells
        # and a wrong weight away from the grid is still caught: 1% off on the positive at t = 3.125
        wrong = SimpleNamespace(sim=S, grad_sim=r.grad_sim * np.where(np.arange(5) == 3, 1.01, 1.0))
        assert frozen_fd_error(ref.REFS, "paper", params, wrong, pos, neg)[0] > 1e-3



# An exact bin centre seen by the real codes. B = 4 (Delta = 1, z_l = l: torch.linspace is exact), rows
# a = (1,1,1,1,0)/2 and b = (1,1,1,-1,0)/2 of one class: a.b = 1/2, so d = 1 = z_1 exactly, also in
# PML's cdist(a, b)**2 = 1**2. Rows c near a and e near b keep bin 0 filled for both anchors (the
# official backward's 0/0 -> 0 is exact only there). PML (autograd) must give gpwref's "zero" rule and
# the official hand-written backward (divided by its N'/2, N' = 6) its "left" rule, and the two rules
# must differ on this batch (else the comparison could not tell them apart).
def test_fast_ap_exact_bin_centre_in_pml_and_the_official_code():
    from pytorch_metric_learning.losses import FastAPLoss

    from gpwref_verification.refs.fast_ap import _OfficialFastAP

    rng = np.random.default_rng(0)
    a, b = np.array([0.5, 0.5, 0.5, 0.5, 0.0]), np.array([0.5, 0.5, 0.5, -0.5, 0.0])
    X = np.stack([a, b, a + 0.15 * rng.normal(size=5), b + 0.15 * rng.normal(size=5), *rng.normal(size=(3, 5))])
    X[2:] /= np.linalg.norm(X[2:], axis=1, keepdims=True)
    y = np.array([0, 0, 1, 0, 1, 1, 2])
    # PML normalises the (unit) rows, so its dX holds the normalisation's projection; the official
    # code takes the rows as given (normalize=False).
    zero, left = (gpwref.compute("fast_ap", X, y, num_bins=4, kink_slope=rule) for rule in ("zero", "left"))
    assert 2 - 2 * zero.sim[0, 1] == 1.0 and zero.grad_sim[0, 1] == 0.0 and zero.grad_sim[1, 0] == 0.0
    assert left.grad_sim[0, 1] != 0.0 and left.grad_sim[1, 0] != 0.0

    Xt = torch.tensor(X, requires_grad=True)
    value = FastAPLoss(num_bins=4)(Xt, torch.as_tensor(y))
    value.backward()
    theirs = Xt.grad.numpy()
    assert value.item() == pytest.approx(zero.loss, rel=1e-13)
    assert np.abs(theirs - zero.grad_emb).max() < 1e-12 * np.abs(theirs).max()
    assert np.abs(theirs - left.grad_emb).max() > 1e-2 * np.abs(theirs).max()

    zero, left = (gpwref.compute("fast_ap", X, y, num_bins=4, normalize=False, kink_slope=rule) for rule in ("zero", "left"))
    Xt = torch.tensor(X, requires_grad=True)
    value = _OfficialFastAP.apply(Xt, torch.as_tensor(y), 4, 1.0)
    value.backward()
    theirs = Xt.grad.numpy() / left.extras["official_backward_scale"]
    assert left.extras["official_backward_scale"] == 3.0
    assert value.item() == pytest.approx(left.loss, rel=1e-13)
    assert np.abs(theirs - left.grad_emb).max() < 1e-12 * np.abs(theirs).max()
    assert np.abs(theirs - zero.grad_emb).max() > 1e-2 * np.abs(theirs).max()
