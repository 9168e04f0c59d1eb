r"""P2SGrad, Zhang, Zhao, Liu, Yan, Li, Wang, Qiao, CVPR 2019, as GPW weights on sample-proxy pairs.

The reference set IS the class weights: ``compute(X, y, ref=W, ref_labels=classes)`` gives the
cosines S = X W^T and ``grad_ref = dL/dW``. The paper does not state a loss: it replaces the
gradient of margin softmax losses by (Eq. 11)

    dL/dx_i = sum_j (cos theta_ij - 1[j = y_i]) d cos theta_ij / dx_i    (likewise for W_j)

which IS the gradient of a loss value, (1/2) sum_j (cos theta_ij - 1[j = y_i])^2, since
d/dc (1/2)(c - t)^2 = c - t. pytorch-metric-learning ``P2SGradLoss`` (``losses/p2s_grad_loss.py``)
trains with that loss as torch's mean squared error over the m x n cosines, clamped to [-1, 1]::

    L = (1/(m n)) sum_{i, j in P_i or N_i} (clamp(S_ij, -1, 1) - [j in P_i])^2

(P_i: sample i's class proxies, N_i: the others; every sample-proxy pair is one or the other, so
Z = m n is the number of terms). Its gradient is Eq. 11 times 2/(m n), the constant that the mean
and the square put on it; the directions are the paper's.

GPW weights, C = clamp(S, -1, 1)::

    G_ij = 2 (C_ij - 1) / (m n)   (positives),      G_ij = 2 C_ij / (m n)   (negatives)

and 0 where |S_ij| > 1 (the clamp is flat there; at |S| = 1 exactly it passes the slope, as
torch.clamp does). Uses self similarity only: each pair is pulled to its target on its own.

GPW sign: positives keep G <= 0. A negative proxy with S_ij < 0 gets G < 0: the squared error pulls
every cosine to 0, so a negative pair that is already dissimilar is made more similar. The sign rule
holds only on negatives with S >= 0.

Rules at the edges: a sample whose class has no proxy has only negatives and still counts in Z (its
cosines are pulled to 0); the loss is smooth except at the clamp's ends |S| = 1.

Assumptions: PML keeps W's columns at unit norm by rescaling ``W.data`` (not through autograd), so its
W gradient is the plain gradient of S = x W / |x| in W, without the projection that differentiating
through W's normalisation adds; gpwref's grad_ref is through the normalisation (the harness compares
value and dL/dX with PML; the two W gradients differ by their component along each W_j).
"""

from __future__ import annotations

import numpy as np

from ..entry import LossEntry
from ..pairs import PairResult, Pairs
from ..profiles import Profile
from .proxy_anchor import require_proxies


def value_and_grad(S: np.ndarray, pairs: Pairs, profile: Profile) -> PairResult:
    require_proxies(pairs, "p2sgrad")
    m, n = S.shape
    used = pairs.pos | pairs.neg
    C = np.clip(S, -1.0, 1.0)
    residual = np.where(used, C - pairs.pos, 0.0)
    Z = m * n
    per_anchor = np.sum(residual**2, axis=1) / Z
    slope = np.where(np.abs(S) > 1.0, 0.0, 1.0)
    return PairResult(
        loss=float(per_anchor.sum()),
        per_anchor=per_anchor,
        grad_sim=2.0 * residual * slope / Z,
        pos_used=pairs.pos.copy(),
        neg_used=pairs.neg.copy(),
    )


ENTRY = LossEntry(
    name="p2sgrad",
    function=value_and_grad,
    hyper={},
    defaults={"pml": {}},
    reference="Zhang, Zhao, Liu, Yan, Li, Wang, Qiao. P2SGrad: Refined Gradients for Optimizing Deep Face Models. CVPR 2019",
    similarities=("self",),
    gpw_sign=False,
    supports_ref=True,
    limits="sample-to-proxy: ref IS the class weights (ref_labels = their classes) and is required; the paper gives a "
    "gradient, which is the gradient of the squared error of the cosines against one-hot targets (PML's mean form); "
    "negatives with S < 0 get G < 0 (every cosine is pulled to 0); PML's W gradient skips W's normalisation",
    family="proxy",
    counterparts={"pytorch-metric-learning": "P2SGradLoss"},
)
