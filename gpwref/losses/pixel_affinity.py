r"""Pairwise affinity loss on neighbouring pixels (BoxSnake's local pairwise term, BoxInst form).

Based on BoxSnake (Yang, Song, Ge, Li, ICCV 2023; code Yangr116/BoxSnake,
``modeling/box_supervisor/box_supervisor.py`` ``loss_local_pairwise_box_inst`` and
``modeling/box_supervisor/utils.py`` ``unfold_wo_center``), whose pairwise term comes from BoxInst
(Tian et al., CVPR 2021): for neighbouring pixels i, j whose colours are similar, the predicted
masks should agree, with P(same) = m_i m_j + (1 - m_i)(1 - m_j)::

    L = - sum_{(i, j) in E} log P(y_i = y_j) / max(|E|, 1)

Framing on a similarity matrix. A pixel's row is its predicted class-probability vector p_i (for a
binary mask, p_i = (m_i, 1 - m_i)); with ``normalize=False``, S_ij = p_i . p_j is exactly
P(y_i = y_j) for independent predictions, so the loss is a function of S::

    a_ij = S_ij                 (affinity="probability": rows are probability vectors)
    a_ij = (1 + S_ij) / 2       (affinity="cosine": unit feature rows, normalize=True; an assumption
                                 of gpwref's for embeddings, not in BoxSnake)
    L = - (1/Z) sum_{(i, j) in E} log a_ij,       Z = max(|E|, 1)
    G_ij = - (da/dS) / (Z a_ij)  on E (pull, <= 0),   0 elsewhere

E, the used pairs, are ordered pairs (i, j) such that (a) j is a neighbour of i: the rows are the
pixels of an image in row-major order, ``width`` pixels per row (None: one row of m pixels; the last
row may be partial), and j lies at offset dilation x (u, v), u, v in [-(k-1)/2, (k-1)/2], (u, v) !=
(0, 0), k = ``kernel_size``, inside the image (the code's zero-padded unfold with an image mask gives
out-of-image neighbours weight 0); (b) i and j are positives, i.e. carry the same label. Assumed:
labels are colour-region ids standing for the code's "colour similarity >= threshold" test (that
test is on pixel pairs and not transitive, so a labelling is an approximation of it); every pixel
lies inside the box (the code also multiplies by the box mask). Neighbours across regions
(negatives) have no term: the loss only pulls, and fits the GPW frame with weights that depend on
the pair's own similarity (self-similarity) and the count |E|.

Not modelled: BoxSnake's default ``loss_local_pairwise`` ("v1") is sum w_ij |m_i - m_j| / max(sum
w_ij, 1) with soft colour weights w_ij = exp(-||c_i - c_j|| / sigma) (the "distance-aware" colour
weights); |m_i - m_j| is not a function of p_i . p_j, so v1 is not a loss of S. The code clamps m to
[1e-5, 1 - 1e-5] before the log; gpwref does not clamp, and refuses (GpwrefError) a used pair with
a_ij <= 0 (infinite loss). Affinities above 1 (rows that are not probability vectors, or cosines
rounded above 1) are evaluated as they are: -log a is smooth there.
"""

from __future__ import annotations

import numpy as np

from ..entry import LossEntry, integer, one_of, optional
from ..errors import GpwrefError
from ..pairs import PairResult, Pairs
from ..profiles import Profile


def neighbours(m: int, width: int | None, kernel_size: int, dilation: int) -> np.ndarray:
    """Boolean m x m matrix: [i, j] when pixel j is in pixel i's (dilated) window, j != i."""
    W = m if width is None else width
    rows, cols = np.divmod(np.arange(m), W)
    half = (kernel_size - 1) // 2
    near = np.zeros((m, m), dtype=bool)
    for du in range(-half, half + 1):
        for dv in range(-half, half + 1):
            if du == 0 and dv == 0:
                continue
            r, c = rows + dilation * du, cols + dilation * dv
            inside = (r >= 0) & (c >= 0) & (c < W)
            index = r * W + c
            inside &= index < m
            near[np.nonzero(inside)[0], index[inside]] = True
    return near


def value_and_grad(S: np.ndarray, pairs: Pairs, profile: Profile, *, width: int | None, kernel_size: int, dilation: int,
                   affinity: str) -> PairResult:
    m = S.shape[0]
    used = pairs.pos & neighbours(m, width, kernel_size, dilation)
    if affinity == "probability":
        value, slope = S, 1.0
    else:
        value, slope = (1.0 + S) / 2.0, 0.5
    bad = used & ~(value > 0.0)
    if bad.any():
        i, j = (int(x) for x in np.argwhere(bad)[0])
        raise GpwrefError(
            "embeddings",
            f"pixel_affinity ({affinity}): every used neighbour pair needs an affinity > 0 (-log of it must be finite) "
            + ("(rows must be class-probability vectors with normalize=False)" if affinity == "probability" else "(unit rows, normalize=True)"),
            f"pair ({i}, {j}) has affinity {value[i, j]!r}",
        )
    Z = float(max(int(used.sum()), 1))
    safe = np.where(used, value, 1.0)
    # -log a = -log1p(a - 1), with a - 1 = S - 1 or (S - 1)/2 formed exactly: no cancellation near a = 1
    below_one = S - 1.0 if affinity == "probability" else (S - 1.0) / 2.0
    per_anchor = -np.where(used, np.log1p(np.where(used, below_one, 0.0)), 0.0).sum(axis=1) / Z
    grad_sim = np.where(used, -slope / safe, 0.0) / Z
    return PairResult(
        loss=float(per_anchor.sum()),
        per_anchor=per_anchor,
        grad_sim=grad_sim,
        pos_used=used,
        neg_used=np.zeros_like(used),
    )


ENTRY = LossEntry(
    name="pixel_affinity",
    function=value_and_grad,
    hyper={
        "width": optional(integer(at_least=1), "one row of pixels"),
        "kernel_size": integer(at_least=3, odd=True),
        "dilation": integer(at_least=1),
        "affinity": one_of("cosine", "probability"),
    },
    defaults={"paper": {"width": None, "kernel_size": 3, "dilation": 1, "affinity": "cosine"}},
    reference="Yang, Song, Ge, Li. BoxSnake: Polygonal Instance Segmentation with Box Supervision. ICCV 2023 (BoxInst-form local pairwise term)",
    similarities=("self",),
    supports_ref=False,
    variants=({}, {"width": 3}, {"width": 2, "kernel_size": 3, "dilation": 2}, {"affinity": "probability", "width": 3}),
    limits="rows are the pixels of one image (row-major, `width` per row); labels are colour-region ids; pulls only; BoxSnake's default |m_i - m_j| term is not a function of S",
    family="other",
    counterparts={"BoxSnake (official)": "loss_local_pairwise_box_inst"},
)
