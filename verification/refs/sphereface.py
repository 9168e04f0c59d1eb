"""Second opinions on SphereFace: large-margin softmax's torch formulation and loop (the same function
of S at unit rows, ``verification/refs/large_margin_softmax.py``) and pytorch-metric-learning 2.9
``SphereFaceLoss`` (``losses/sphereface_loss.py``) fed the L2-normalised embeddings."""

from __future__ import annotations

from .contract import LossRefs
from .large_margin_softmax import draw_batch, loop, pml_at_unit_rows, torch_loss


REFS = LossRefs(
    torch_loss=torch_loss,
    loop=loop,
    real={"pml": {"pytorch-metric-learning": pml_at_unit_rows("SphereFaceLoss")}},
    draw_batch=draw_batch,
)
