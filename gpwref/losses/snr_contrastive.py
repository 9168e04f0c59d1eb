r"""Signal-to-noise-ratio (SNR) contrastive loss, Yuan, Chen, Zhang, Wang, Liu, CVPR 2019 (PML's form).

The SNR distance of anchor row u_i and reference row v_j (variances over the D embedding
coordinates, with the same D - 1 correction on top and bottom, so it cancels)::

    d_ij = var(v_j - u_i) / var(u_i) = ( |v_j - u_i|^2 - D (mu_j - mu_i)^2 ) / ( |u_i|^2 - D mu_i^2 )

(mu = a row's coordinate mean; rows are L2-normalised first unless ``normalize=False``, as PML's
SNRDistance does). The loss is PML's ``SignalToNoiseRatioContrastiveLoss``: a contrastive loss on
these distances, each kind averaged over its non-zero terms (AvgNonZeroReducer per sub-loss, summed)::

    L = sum_{P} [d_ij - pos_margin]_+ / Z_P  +  sum_{N} [neg_margin - d_ij]_+ / Z_N

(Z_P, Z_N the numbers of terms > 0; a kind with none contributes 0). PML's GenericPairLoss rule
``zero_if_at_most_one_pair`` applies under the pml profile.

Why it is not a function of S alone: with unit rows, |v_j - u_i|^2 = 2 - 2 S_ij, but the coordinate
means mu_i, mu_j (and, with ``normalize=False``, the norms) enter too, so d_ij - and the loss - is a
function of S AND of each row's mean. The catalog entry therefore names this module's ``compute`` as
its ``embeddings_function``, the pipeline's hook ``compute(inputs, profile, params) -> Result`` called
with the validated inputs: ``gpwref.compute("snr_contrastive", X, y, profile="pml")`` runs it from the
embeddings (NumPy backend, float64), while ``from_similarity`` (S alone) refuses it. Its
``grad_sim`` is the GPW weight on S with every row's mean and norm held fixed,

    G_ij = dL/dS_ij = c_ij * (-2 / (|u_i|^2 - D mu_i^2)),   c_ij = 1/Z_P (active positive), -1/Z_N (active negative)

(<= 0 on positives, >= 0 on negatives), while ``grad_emb``/``grad_ref`` are the full gradients,
including the paths through the means (and norms), so they are NOT (G + G^T) X.
The paper's zero-mean regulariser (lambda mean_i |sum_k u_ik|) and RDML's triplet form are not
modelled; PML adds no regulariser by default. An anchor whose coordinates are all equal has
var(u_i) = 0 and no SNR distance: refused with GpwrefError (PML returns inf/NaN). D = 1 is refused
(a variance over one coordinate has no D - 1 correction; torch.var returns NaN). A hinge exactly at
0 is inactive (torch's relu), and so is one within 1e-12 of 0 (``HINGE_TIE``: on exact dyadic inputs
whose true distance sits on the hinge, rounding of the variances would otherwise decide it).
Similarities used: self only (each weight depends on its own pair and constants; Z is a count).
"""

from __future__ import annotations

import numpy as np

from ..entry import LossEntry, number
from ..errors import GpwrefError, check_memory
from ..pairs import PairResult, Pairs, Result, build_pairs, check_degenerate, through_normalisation, unit_rows, zero_by_pair_count
from ..profiles import Profile


def value_and_grad(S: np.ndarray, pairs: Pairs, profile: Profile, **hyper) -> PairResult:
    """The catalog's function-of-S entry point: refused, the loss needs the embeddings' means."""
    raise GpwrefError(
        "loss",
        "'snr_contrastive' is not a function of S alone (the SNR distance uses each row's coordinate mean); "
        "call gpwref.compute('snr_contrastive', embeddings, labels, profile='pml') instead",
    )


def snr_distance(U: np.ndarray, V: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """d (m x n), the anchors' variance denominators |u|^2 - D mu^2 (m,), and the row means (mu_U, mu_V)."""
    dims = U.shape[1]
    mean_u, mean_v = U.mean(axis=1), V.mean(axis=1)
    centred_u = U - mean_u[:, None]
    denominator = np.einsum("ij,ij->i", centred_u, centred_u)  # = |u|^2 - D mu^2, without cancellation
    diff = V[None, :, :] - U[:, None, :]
    centred_diff = diff - diff.mean(axis=2, keepdims=True)
    numerator = np.einsum("ijk,ijk->ij", centred_diff, centred_diff)
    return numerator / denominator[:, None], denominator, (mean_u, mean_v, dims)


# A hinge argument within this of 0 is exactly 0 (inactive): on exact (dyadic) inputs whose true
# value sits on the hinge, the rounding of the variances would otherwise decide the sign.
HINGE_TIE = 1e-12


def _snap(t: np.ndarray) -> np.ndarray:
    return np.where(np.abs(t) <= HINGE_TIE, 0.0, t)


def _terms(d: np.ndarray, pairs: Pairs, profile: Profile, pos_margin: float, neg_margin: float):
    pos, neg = pairs.pos, pairs.neg
    if zero_by_pair_count(profile, pos, neg):
        pos, neg = np.zeros_like(pos), np.zeros_like(neg)
    pos_term = np.where(pos, np.maximum(_snap(d - pos_margin), 0.0), 0.0)
    neg_term = np.where(neg, np.maximum(_snap(neg_margin - d), 0.0), 0.0)
    pos_active, neg_active = pos_term > 0, neg_term > 0
    n_pos, n_neg = int(pos_active.sum()), int(neg_active.sum())
    pos_scale = 1.0 / n_pos if n_pos else 0.0
    neg_scale = 1.0 / n_neg if n_neg else 0.0
    per_anchor = pos_scale * pos_term.sum(axis=1) + neg_scale * neg_term.sum(axis=1)
    dloss_dd = pos_scale * pos_active - neg_scale * neg_active
    return per_anchor, dloss_dd, pos_active, neg_active


def compute(inputs, profile: Profile, params: dict) -> Result:
    """Value, GPW weights (means held fixed), full embedding gradients and used pairs (see module doc).

    The catalog's ``embeddings_function`` hook: ``gpwref.pipeline.run`` calls it with the validated
    ``gpwref.inputs.Inputs`` record (host float64 arrays, row rules already applied), the
    ``Profile`` and the resolved hyper-parameters, and returns its ``Result`` as is. Float64 only.
    """
    if inputs.dtype != np.float64:
        raise GpwrefError("dtype", "snr_contrastive runs in float64 only (None or 'float64')", repr(inputs.dtype.name))
    X, y, R, yr = inputs.embeddings, inputs.labels, inputs.ref, inputs.ref_labels
    ref_is_batch, ref_self, normalize, prof = inputs.ref_is_batch, inputs.ref_self, inputs.normalize, profile
    m, dims = X.shape
    if dims < 2:
        raise GpwrefError("embeddings", "the SNR distance needs at least 2 coordinates (a variance with D - 1 correction)", f"dimension {dims}")
    n = R.shape[0]
    # what it allocates: the two m x n x D arrays of snr_distance (V - U, centred) and about ten m x n
    # matrices (S, d, masks, terms, weights), all float64 or smaller
    check_memory(m, n * (2 * dims + 10), 1, "embeddings",
                 what=f"the SNR distance's two {m} x {n} x {dims} work arrays and about ten {m} x {n} matrices")

    if normalize:
        U, norms = unit_rows(X, "embeddings")
        V, ref_norms = (U, norms) if ref_is_batch else unit_rows(R, "ref")
    else:
        U, norms, V, ref_norms = X, None, R, None
    centred = U - U.mean(axis=1, keepdims=True)
    flat = np.einsum("ij,ij->i", centred, centred) == 0.0
    if np.any(flat):
        raise GpwrefError("embeddings", "every row needs coordinates that are not all equal (var(u_i) = 0 leaves the SNR distance undefined)", f"row {int(np.argmax(flat))}")

    S = U @ V.T
    pairs = build_pairs(S, y, yr, ref_is_batch, prof, ref_self)
    check_degenerate(pairs, prof, "snr_contrastive")
    d, denominator, _ = snr_distance(U, V)
    per_anchor, dloss_dd, pos_active, neg_active = _terms(d, pairs, prof, params["pos_margin"], params["neg_margin"])
    grad_sim = dloss_dd * (-2.0 / denominator[:, None])

    # Full gradient. With c = dL/dd, n = numerator, q = denominator (both centred sums of squares):
    # dd_ij/du_i = (-2 cdiff_ij) / q_i - d_ij (2 cu_i) / q_i, dd_ij/dv_j = 2 cdiff_ij / q_i,
    # where cdiff = (v_j - u_i) centred and cu_i = u_i centred (centring is the mean path).
    weight = dloss_dd / denominator[:, None]  # c_ij / q_i
    cu = U - U.mean(axis=1, keepdims=True)
    cv = V - V.mean(axis=1, keepdims=True)
    # sum_j w_ij cdiff_ij = sum_j w_ij (cv_j - cu_i)
    pulled = weight @ cv - weight.sum(axis=1)[:, None] * cu
    grad_u = -2.0 * pulled - 2.0 * (weight * d).sum(axis=1)[:, None] * cu
    grad_v = 2.0 * (weight.T @ (-cu) + weight.sum(axis=0)[:, None] * cv)
    if ref_is_batch:
        grad_u = grad_u + grad_v
        grad_v = None
    if normalize:
        grad_u = through_normalisation(grad_u, U, norms)
        if grad_v is not None:
            grad_v = through_normalisation(grad_v, V, ref_norms)
    return Result(
        loss=float(per_anchor.sum()),
        per_anchor=per_anchor,
        grad_sim=grad_sim,
        pos_used=pos_active,
        neg_used=neg_active,
        extras={"snr_distance": d},
        grad_emb=grad_u,
        grad_ref=grad_v,
        sim=S,
        loss_name="snr_contrastive",
        profile=prof.name,
        hyper=params,
    )


ENTRY = LossEntry(
    name="snr_contrastive",
    function=value_and_grad,
    embeddings_function=compute,
    hyper={"pos_margin": number(), "neg_margin": number()},
    defaults={"pml": {"pos_margin": 0.0, "neg_margin": 1.0}},
    reference="Yuan, Chen, Zhang, Wang, Liu. Signal-To-Noise Ratio: A Robust Distance Metric for Deep Metric "
    "Learning. CVPR 2019",
    similarities=("self",),
    limits="not a function of S alone (the SNR distance uses each row's coordinate mean): gpwref.compute "
    "runs it from the embeddings, from_similarity refuses it; grad_sim holds the means fixed; only PML's "
    "contrastive form (no zero-mean regulariser, no triplet form)",
    family="other",
    counterparts={"pytorch-metric-learning": "SignalToNoiseRatioContrastiveLoss"},
)
