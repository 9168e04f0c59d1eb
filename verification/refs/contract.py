"""What a loss's refs module gives the harness: one ``REFS = LossRefs(...)`` per ``verification/refs/<loss>.py``.

``verification.harness.check_case`` reads nothing else from the module. Signatures of the callables:

* ``torch_loss(S, pos, neg, profile, [labels=, ref_labels=,] **hyper) -> torch scalar``;
* ``loop(S, pos, neg, profile, [labels=, ref_labels=,] **hyper) -> (value, G)`` on NumPy arrays;
* a real implementation ``impl(X, labels, R, ref_labels, ref_self, normalize, **hyper) -> torch
  scalar``, raising ``verification.common.NotApplicable`` when it cannot express the batch and
  ``ValueError`` where it refuses it;
* ``frozen_value(S_eval, S_frozen, pos, neg, profile, [labels=,] **hyper) -> (value, regime)``: the
  value at ``S_eval`` with every detached factor computed from ``S_frozen`` (a loss with nothing
  detached ignores ``S_frozen``); ``regime`` is a hashable summary of the piecewise branches taken,
  and an entry whose regime changes within the FD step is skipped as a kink;
* ``fd_skip(S, i, j, pos, neg, profile, [labels=,] **hyper) -> bool``;
* ``scales(params, ours, pos, neg) -> {"value": v, "G": g, "extras": {name: size}}``;
* ``fd_roundoff(params, ours, pos, neg, floors) -> float``;
* ``torch_extras(S, pos, neg, profile, [labels=,] **hyper) -> {name: value}``;
* ``draw_batch(rng, knobs, variant) -> Batch | None``;
* ``driver(report, profile, hyper, params, batch, fd) -> None``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Mapping


@dataclass(frozen=True)
class LossRefs:
    """A loss's second opinions and the knobs of its checks; every field has a default."""

    torch_loss: Callable | None = None
    """Independent torch formulation in S, differentiated by autograd in float64 (``autograd`` checks)."""
    loop: Callable | None = None
    """Plain per-anchor loop returning (value, G) (``loop`` checks)."""
    real: Mapping[str, Mapping[str, Callable]] = field(default_factory=dict)
    """Per profile, name -> real implementation (``real`` checks; ``raises`` when gpwref refuses a batch)."""
    value_scale: float = 0.0
    """The value's natural scale, the floor of the value checks, for a bounded value that may be ~0."""
    draw_batch: Callable | None = None
    """Draws the runner's batch for a schedule slot when the loss needs batches of its own shape."""
    needs_labels: bool = False
    """Pass ``labels=`` (the anchors' labels) to torch_loss, loop, frozen_value, fd_skip and torch_extras."""
    needs_ref_labels: bool = False
    """Pass ``ref_labels=`` (the reference columns' labels) to torch_loss and loop."""
    frozen_value: Callable | None = None
    """Value with detached factors frozen, and its regime: FD is taken on it instead of gpwref's value."""
    fd_skip: Callable | None = None
    """Entries of S whose FD step would reach a singularity (only with frozen_value)."""
    scales: Callable | None = None
    """Sizes of the terms the value, G and extras cancel from: the floors of their comparisons."""
    fd_roundoff: Callable | None = None
    """FD's own absolute round-off at the harness's step, subtracted per entry (only with frozen_value)."""
    torch_extras: Callable | None = None
    """Autograd values of gradients gpwref reports in ``extras``, compared as ``autograd:<name>``."""
    autograd_at_own_S: bool = True
    """Autograd's value and G at gpwref's own S (True) or at torch's S computed from X (False)."""
    sign_exempt: str = ""
    """Why G may take either sign (reported under ``skipped["sign"]``) for a loss outside the GPW sign rule."""
    driver: Callable | None = None
    """A loss that is not a function of the drawn batch's S runs its own checks into the harness's report."""
    verified_against: tuple[str, ...] = ()
    """The checks a driver or frozen-value loss runs, as the docs table lists them (empty: derived)."""
