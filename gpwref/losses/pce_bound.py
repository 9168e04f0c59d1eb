r"""The pairwise loss that cross-entropy bounds (Boudiaf et al., ECCV 2020), "PCE", on unit features.

Boudiaf, Rony, Ziko, Granger, Pedersoli, Piantanida, Ben Ayed, "A unifying mutual information view
of metric learning: cross-entropy vs. pairwise losses" (arXiv 2003.08983) relate the cross-entropy of
a linear classifier to a pairwise loss with a "tightness" part (pull same-class features together)
and a "contrastive" part (a softmax over classes). gpwref implements it in the form docs/losses.md#pce_bound
records (tagged [P] there: recalled, not re-read in the PDF), for n = m samples, classes k present in
the batch and lam > 0::

    c_k   = (1/n) sum_{j : y_j = k} z_j                         (class sums / n, self included)
    L_PCE = - (1/(2 lam n^2)) sum_i sum_{j : y_j = y_i} S_ij                              [tightness]
            + (1/n) sum_i log sum_k exp( (1/(lam n)) sum_{j : y_j = k} S_ij - ||c_k||^2 / (2 lam) )   [contrastive]

with S_ij = z_i . z_j and ||c_k||^2 = (1/n^2) sum_{a, b in class k} S_ab. Both inner sums include
j = i (the paper sums over every sample of a class). Writing pi_ik for the softmax over k inside
the contrastive term and pi_bar_k = (1/n) sum_a pi_ak, the GPW weights on the pairs (i != j) are::

    G_ij = pi_{i, y_j} / (lam n^2)                                   negative pair (push, >= 0)
    G_ij = (2 pi_{i, y_i} - 1 - pi_bar_{y_i}) / (2 lam n^2)          positive pair

[derivation: d/dS_ij of the tightness is -1/(2 lam n^2) on same-class pairs; the softmax term gives
pi_{i,y_j}/(lam n^2) through the row sum and -pi_bar_{y_i}/(2 lam n^2) through ||c_{y_i}||^2.]
The positive weight is a pull while pi_{i,y_i} < (1 + pi_bar_{y_i})/2 but turns into a PUSH for an
anchor that is more confident in its own class than the class is on average: the loss does not obey
the GPW sign rule (``gpw_sign=False``). Weights use self (constant tightness) and negative-relative
similarity (the class softmax, through every pair of the anchor); no mining.

Evaluation without cancellation. Taking each anchor's own class out of the log-sum-exp and using
sum_i sum_{j : y_j = y_i} S_ij = n^2 sum_k ||c_k||^2 gives the equivalent form::

    L_PCE = sum_k (1 - n_k/n) ||c_k||^2 / (2 lam)  +  (1/n) sum_i log(1 + sum_{k != y_i} exp(Delta_ik)),
    Delta_ik = [(1/(lam n)) sum_{j in k} S_ij - ||c_k||^2/(2 lam)] - [the same for k = y_i]

(n_k = class size): two non-negative terms, so L_PCE >= 0, and exactly 0 on a one-class batch
(where the textbook form cancels O(1) terms). gpwref evaluates this form; ``per_anchor[i]`` =
(1/n_{y_i} - 1/n) ||c_{y_i}||^2 / (2 lam) + (1/n) log(1 + ...), the class term split evenly over
the class's anchors. tests/losses/test_pce_bound.py checks it against the textbook form.

Self terms. The self-similarity z_i . z_i enters only through the constant-in-S self terms: gpwref
takes it as 1, i.e. unit rows (``normalize=True``), so the self pair carries no weight (on unit rows
its gradient is radial and vanishes anyway, docs/conventions.md#notation). A similarity matrix whose diagonal is not 1
(within 1e-5) is refused: on raw features the self terms would need ||z_i||^2, which S of unit rows
does not hold. The batch is its own reference set (``supports_ref=False``): L_PCE is a function of
the whole labelled sample, and c_k would be undefined against a memory bank.

What could not be confirmed (the paper was not available here): (1) the exact constants, i.e.
whether ||c_k||^2 / (2 lam) (hard class means) or a soft-mean term sits inside the exponent;
(2) the bound itself. Numerically (tests/losses/test_pce_bound.py), for the form above none of
"CE(theta) >= L_PCE for every classifier theta", "min_theta CE(theta) + lam/2 ||theta||^2 >= L_PCE"
or "CE(c/lam) >= L_PCE" holds on all batches, so gpwref checks the loss and its weights, not the
bound. Classes absent from the batch are left out of the softmax (a classifier over K > k classes
would add a term exp(0) per absent class).
"""

from __future__ import annotations

import numpy as np

from ..entry import LossEntry, number
from ..errors import GpwrefError
from ..pairs import PairResult, Pairs, masked_lse
from ..profiles import Profile

DIAGONAL_TOLERANCE = 1e-5


def value_and_grad(S: np.ndarray, pairs: Pairs, profile: Profile, *, lam: float) -> PairResult:
    n = S.shape[0]
    diagonal = np.diag(S)
    if np.any(np.abs(diagonal - 1.0) > DIAGONAL_TOLERANCE):
        i = int(np.argmax(np.abs(diagonal - 1.0)))
        raise GpwrefError(
            "embeddings",
            "pce_bound includes the self-similarities z_i.z_i and is defined on unit rows (use normalize=True)",
            f"S[{i},{i}] = {diagonal[i]!r}",
        )
    classes, column = np.unique(pairs.labels, return_inverse=True)
    onehot = np.zeros((n, classes.size))
    onehot[np.arange(n), column] = 1.0
    S_unit = S.copy()
    np.fill_diagonal(S_unit, 1.0)  # the self terms, as constants
    class_sums = S_unit @ onehot  # [i, k] = sum_{j in class k} S_ij
    centre_term = np.einsum("ik,ik->k", onehot, class_sums) / (2 * lam * n**2)  # B_k = ||c_k||^2 / (2 lam)
    logits = class_sums / (lam * n) - centre_term[None, :]
    rows = np.arange(n)
    relative = logits - logits[rows, column][:, None]  # Delta_ik, 0 at the own class
    others = onehot == 0.0
    rest, soft_others = masked_lse(relative, others, add_one=True)  # log(1 + sum_{k != y_i} e^Delta_ik)
    soft = np.where(others, soft_others, np.exp(-rest)[:, None])  # pi_ik
    class_size = onehot.sum(axis=0)
    per_anchor = (1.0 / class_size[column] - 1.0 / n) * centre_term[column] + rest / n

    soft_mean = soft.mean(axis=0)  # pi_bar_k
    grad_sim = soft[:, column] / (lam * n**2) - pairs.pos * (1.0 + soft_mean[column])[None, :] / (2 * lam * n**2)
    grad_sim[~(pairs.pos | pairs.neg)] = 0.0
    return PairResult(
        loss=float(per_anchor.sum()),
        per_anchor=per_anchor,
        grad_sim=grad_sim,
        pos_used=pairs.pos.copy(),
        neg_used=pairs.neg.copy(),
    )


ENTRY = LossEntry(
    name="pce_bound",
    function=value_and_grad,
    hyper={"lam": number(above=0)},
    defaults={"paper": {"lam": 1.0}},
    reference="Boudiaf, Rony, Ziko, Granger, Pedersoli, Piantanida, Ben Ayed. A unifying mutual information view of metric learning: cross-entropy vs. pairwise losses. ECCV 2020",
    similarities=("self", "negative-relative"),
    gpw_sign=False,
    supports_ref=False,
    variants=({}, {"lam": 0.1}),
    limits="unit rows only (self terms z_i.z_i taken as 1); the batch is its own reference set; constants as recorded in docs/losses.md#pce_bound, bound not confirmed",
    family="pair",
)
