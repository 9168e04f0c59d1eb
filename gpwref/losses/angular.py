r"""Angular loss, Wang, Zhou, Wen, Liu, Lin, ICCV 2017 (as pytorch-metric-learning's AngularLoss).

For an anchor a, a positive p and a negative n, the angle at n of the triangle (x_a, x_p, x_n)
is bounded through the midpoint x_c = (x_a + x_p)/2; with unit rows the paper's smooth (log-sum-exp)
form uses, with t = tan^2(alpha),

    f_apn = 4 t (x_a + x_p) . x_n - 2 (1 + t) x_a . x_p = 4 t (S_an + S_pn) - 2 (1 + t) S_ap

The midpoint enters only through dot products, so on unit rows the loss is a function of the batch's
own similarity matrix S (m x m): S_an and S_ap are entries of anchor a's row, S_pn one of the
positive's row. Over the ordered positive pairs P (self pairs excluded) and each anchor's negatives
N_a (every row of another label)::

    l_ap = log(1 + sum_{n in N_a} exp f_apn),      L = (1/|P|) sum_{(a,p) in P} l_ap

(PML: one term per positive pair, "pos_pair" reduction with its default MeanReducer; an anchor with
no negative has l_ap = log 1 = 0; no positive pair, L = 0). With the softmax weights
w_apn = exp f_apn / (1 + sum_k exp f_apk)::

    G_an += 4 t w_apn / |P|,   G_pn += 4 t w_apn / |P|,   G_ap = -2 (1 + t) sum_n w_apn / |P|

(sums over every positive pair whose anchor or positive is the row: (p, n) is a negative pair of
row p, since y_p = y_a != y_n). GPW-signed. Similarities used: negative-relative (the softmax over
the negatives) and positive-relative (S_ap against S_an, S_pn in f).

Edges: smooth everywhere (no hinge, no mining). Evaluated with the maximum taken out of the
log-sum-exp (``masked_lse``).

Assumptions, said plainly:
* the batch is its own reference set (``supports_ref=False``): with a separate reference set S_pn
  would be a similarity between two reference rows, which S does not hold;
* rows are unit (``normalize=True``): PML normalises the anchors and positives but multiplies by
  the raw reference rows (``ref_emb``) in ``(x_a + x_p) . x_n``, so on rows that are not unit its
  value is not a function of cosines; gpwref's loss equals PML's on unit rows (the real check feeds
  it normalised rows, tests/losses/test_angular.py shows the difference on raw rows);
* alpha is in degrees, as PML takes it (default 40); the paper combines the angular loss with an
  N-pair loss (lambda = 2), which is a separate entry (npair);
* every positive pair of the batch is a term (the paper's N-pair batches have one per anchor).
"""

from __future__ import annotations

import math

import numpy as np

from ..entry import LossEntry, number
from ..errors import check_memory
from ..pairs import PairResult, Pairs, masked_lse
from ..profiles import Profile


def value_and_grad(S: np.ndarray, pairs: Pairs, profile: Profile, *, alpha: float) -> PairResult:
    pos, neg = pairs.pos, pairs.neg
    m, n = S.shape
    anchor, positive = np.nonzero(pos)
    count = len(anchor)
    if count == 0:
        return PairResult(loss=0.0, per_anchor=np.zeros(m), grad_sim=np.zeros_like(S),
                          pos_used=np.zeros_like(pos), neg_used=np.zeros_like(neg))
    check_memory(count, n, 3, "labels", what=f"the {count} positive pairs x {n} columns of angular logits")
    t = math.tan(math.radians(alpha)) ** 2
    logits = 4.0 * t * (S[anchor] + S[positive]) - 2.0 * (1.0 + t) * S[anchor, positive][:, None]
    lse, weights = masked_lse(logits, neg[anchor], add_one=True)
    scale = 1.0 / count
    grad_sim = np.zeros_like(S)
    push = (4.0 * t * scale) * weights  # dL/dS_an and dL/dS_pn, one row per positive pair
    np.add.at(grad_sim, anchor, push)
    np.add.at(grad_sim, positive, push)
    grad_sim[anchor, positive] -= 2.0 * (1.0 + t) * scale * weights.sum(axis=1)
    per_anchor = np.bincount(anchor, weights=scale * lse, minlength=m).astype(np.float64)
    has_neg = neg.any(axis=1)
    return PairResult(
        loss=float(per_anchor.sum()),
        per_anchor=per_anchor,
        grad_sim=grad_sim,
        pos_used=pos & has_neg[:, None],
        neg_used=neg & pos.any(axis=1)[:, None],
    )


ENTRY = LossEntry(
    name="angular",
    function=value_and_grad,
    hyper={"alpha": number(above=0, below=90, noun="an angle in degrees")},
    defaults={"pml": {"alpha": 40.0}},
    reference="Wang, Zhou, Wen, Liu, Lin. Deep Metric Learning with Angular Loss. ICCV 2017",
    similarities=("negative-relative", "positive-relative"),
    supports_ref=False,
    variants=({}, {"alpha": 45.0}),
    limits="batch as its own reference set only (f uses the positive's similarity to each negative); PML "
    "multiplies by the raw negative rows, so it matches on unit rows only; the paper's N-pair term is separate",
    counterparts={"pytorch-metric-learning": "AngularLoss"},
)
