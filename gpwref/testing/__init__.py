"""gpwref as an oracle inside other projects' tests.

    from gpwref.testing import assert_loss_matches
    assert_loss_matches(my_loss, "multi_similarity", profile="pml")

* ``assert_loss_matches(candidate, loss, *, profile, hyper, batches, check, rtol, atol, ...)``:
  draws batches, compares value and gradients with the reference, raises ``LossMismatch`` (an
  AssertionError) whose message is a report;
* ``explain_mismatch(candidate, loss, batch, ...)``: that report as data (``MismatchReport``);
* ``batches(...)`` (hypothesis strategy) and ``make_batch(rng, ...)`` (NumPy generator): batches
  with every edge case of docs/oracle-contract.md#edge-cases as a named knob; ``Batch`` is the record they return;
* ``TOLERANCES`` / ``tolerance_for(dtype, ...)``: the default tolerances per dtype, with reasons;
* ``profile_table(loss)``: the rules and defaults on which the profiles of a loss differ.

torch, JAX and hypothesis are optional: each is imported only when used.
"""

from .distributed import DistributedCase, DistributedMismatch, DistributedReport, assert_distributed_loss_matches, check_distributed_losses
from .explain import Alternative, AnchorFacts, Check, MismatchReport, PairFacts, ProxyFacts
from .oracle import LossMismatch, OracleSummary, assert_loss_matches, explain_mismatch
from .profile_table import profile_table
from .strategies import Batch, batches, make_batch
from .tolerances import TOLERANCES, Tolerance, tolerance_for

__all__ = [
    "Alternative",
    "AnchorFacts",
    "Batch",
    "Check",
    "LossMismatch",
    "MismatchReport",
    "OracleSummary",
    "PairFacts",
    "ProxyFacts",
    "TOLERANCES",
    "Tolerance",
    "assert_loss_matches",
    "batches",
    "explain_mismatch",
    "make_batch",
    "profile_table",
    "tolerance_for",
]
