r"""SphereFace (A-Softmax), Liu, Wen, Yu, Li, Raj, Song, CVPR 2017, as GPW weights on sample-proxy pairs.

A-Softmax is L-Softmax (``gpwref/losses/large_margin_softmax.py``) with the class weights normalised:
the target logit |x_i| psi(theta_iy) with psi(theta) = (-1)^k cos(m theta) - 2k, k = floor(m theta / pi),
the others |x_i| cos theta_ij. On unit embeddings that is the same function of S, with the same
value, GPW weights (G = -scale psi' q r/(1 + r)/m' on positives, scale w r/(1 + r)/m' on negatives,
psi' = (-1)^k m sin(m theta)/sin(theta) >= 0), edges and sign rule; the derivation is in that
module's docstring, and this module reuses its code.

Assumptions: pytorch-metric-learning ``SphereFaceLoss`` (``losses/sphereface_loss.py``) multiplies
the logits by |x_i| and ``scale``; that is not a function of S, so this entry is the loss at unit
embeddings (the refs feed PML the L2-normalised embeddings). The paper's training anneals the target
logit as (lambda cos theta + psi)/(1 + lambda); that schedule is not part of the loss (PML does not
apply it either).

Defaults: pytorch-metric-learning margin 4, scale 1 (the paper's m = 4).
"""

from __future__ import annotations

from ..entry import LossEntry, integer, number
from .large_margin_softmax import value_and_grad


ENTRY = LossEntry(
    name="sphereface",
    function=value_and_grad,
    hyper={"margin": integer(at_least=1), "scale": number(above=0)},
    defaults={"pml": {"margin": 4, "scale": 1.0}},
    variants=({}, {"margin": 2, "scale": 16.0}),
    reference="Liu, Wen, Yu, Li, Raj, Song. SphereFace: Deep Hypersphere Embedding for Face Recognition. CVPR 2017",
    similarities=("self", "negative-relative"),
    supports_ref=True,
    limits="sample-to-proxy: ref IS the class weights (ref_labels = their classes) and is required; the loss at unit "
    "embeddings (PML multiplies the logits by |x_i|, not a function of S: not modelled); no lambda annealing",
    family="proxy",
    counterparts={"pytorch-metric-learning": "SphereFaceLoss"},
)
