"""Real clients: gpwref.testing used exactly as an outside project would use it.

pytorch-metric-learning's classes under the ``pml`` profile (MultiSimilarityLoss alone and with
MultiSimilarityMiner, ContrastiveLoss, TripletMarginLoss, LiftedStructureLoss,
GeneralizedLiftedStructureLoss, NPairsLoss, HistogramLoss) and a torch transcription of the official
MS code's rules under ``official``. Each passes on drawn batches where the semantics agree; where
they truly differ the test asserts what the report says (the rule it names, or that the candidate
raised).
"""

from __future__ import annotations

import warnings

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("pytorch_metric_learning")
from pytorch_metric_learning import losses as pml_losses  # noqa: E402
from pytorch_metric_learning import miners as pml_miners  # noqa: E402

import gpwref  # noqa: E402
from gpwref.testing import Batch, LossMismatch, assert_loss_matches, explain_mismatch  # noqa: E402

EXAMPLES = 30


def needs(loss: str) -> None:
    """Skip only when the catalog entry the client is checked against is missing."""
    if loss not in gpwref.LOSSES:
        pytest.skip(f"catalog entry '{loss}' is not in gpwref.LOSSES yet")


@pytest.fixture(autouse=True)
def _quiet_pml():
    with warnings.catch_warnings():  # PML's histogram loss indexes with a list (a torch deprecation warning)
        warnings.simplefilter("ignore", UserWarning)
        yield


def official_ms(X, y, *, alpha=2.0, beta=40.0, lam=0.5, eps=0.1, self_by_value=True, divide_by_batch=True, sign=1.0):
    """The official MS code's rules (research-ms-loss multi_similarity_loss.py, as docs/losses.md#multi_similarity states them).

    Per anchor i, on cosine similarities of the L2-normalised rows: positives = same label with
    S < 1 - 1e-5 (``self_by_value``; else every same-label row but i itself), negatives = other
    labels; min over the positives and max over the negatives raise on an empty set (ValueError, as
    Python's builtin min()/max() do); keep negatives with S + eps > min_pos and positives with
    S - eps < max_neg; skip the anchor when either kept set is empty; loss = sum of the anchors'
    terms divided by the batch size. ``divide_by_batch=False`` divides by the number of anchors kept
    (a deliberate error); ``sign=-1`` flips the sign of the negative exponent (another one).
    """
    U = torch.nn.functional.normalize(X, dim=1)
    sim = U @ U.T
    m = len(y)
    terms = []
    for i in range(m):
        same = y == y[i]
        if self_by_value:
            pos = sim[i][same & (sim[i] < 1 - 1e-5)]
        else:
            others = same.clone()
            others[i] = False
            pos = sim[i][others]
        neg = sim[i][y != y[i]]
        if len(pos) == 0 or len(neg) == 0:
            raise ValueError("min()/max() of an empty sequence")
        neg_kept = neg[neg + eps > pos.min()]
        pos_kept = pos[pos - eps < neg.max()]
        if len(neg_kept) == 0 or len(pos_kept) == 0:
            continue
        pos_term = torch.log(1 + torch.exp(-alpha * (pos_kept - lam)).sum()) / alpha
        neg_term = torch.log(1 + torch.exp(sign * beta * (neg_kept - lam)).sum()) / beta
        terms.append(pos_term + neg_term)
    if not terms:
        return (X * 0).sum()
    return sum(terms) / (m if divide_by_batch else len(terms))


def pml_ms(X, y):
    return pml_losses.MultiSimilarityLoss(alpha=2, beta=50, base=0.5)(X, y)


def pml_ms_mined(epsilon=0.1, beta=50.0):
    def loss(X, y):
        return pml_losses.MultiSimilarityLoss(alpha=2, beta=beta, base=0.5)(X, y, pml_miners.MultiSimilarityMiner(epsilon=epsilon)(X, y))

    return loss


# ---- where the semantics agree ------------------------------------------------------------------


def test_pml_multi_similarity_loss_alone():
    needs("multi_similarity")
    summary = assert_loss_matches(pml_ms, "multi_similarity", profile="pml", examples=EXAMPLES)
    assert summary.compared == EXAMPLES and summary.framework == "torch"


def test_pml_multi_similarity_loss_with_its_miner():
    needs("multi_similarity")
    assert_loss_matches(pml_ms_mined(0.1), "multi_similarity", profile="pml", hyper={"eps": 0.1}, examples=EXAMPLES)


def test_pml_miner_exactly_on_the_mining_boundary():
    # unit dyadic rows: S is exact on a grid of 1/4 and a pair sits exactly at min_pos - 0.25 or
    # max_neg + 0.25, where the miner's strict inequalities decide
    needs("multi_similarity")
    summary = assert_loss_matches(pml_ms_mined(0.25), "multi_similarity", profile="pml", hyper={"eps": 0.25},
                                  batches={"boundary_eps": 0.25, "m": (3, 10), "d": (5, 6)}, examples=EXAMPLES)
    assert summary.compared == EXAMPLES


def test_official_rules_under_the_official_profile():
    needs("multi_similarity")
    summary = assert_loss_matches(official_ms, "multi_similarity", profile="official", examples=EXAMPLES)
    # batches with an anchor lacking a positive or a negative: the official code raises, gpwref too
    assert summary.both_refused > 0 and summary.compared > 0
    assert_loss_matches(official_ms, "multi_similarity", profile="official", examples=EXAMPLES,
                        batches={"duplicates": True, "singletons": False, "one_class": False, "classes": (2, 3), "m": (4, 10)})


@pytest.mark.parametrize("name,loss,make,hyper", [
    ("ContrastiveLoss", "contrastive", lambda: pml_losses.ContrastiveLoss(), {}),
    ("TripletMarginLoss", "triplet", lambda: pml_losses.TripletMarginLoss(), {}),
    ("LiftedStructureLoss", "lifted_structure", lambda: pml_losses.LiftedStructureLoss(), {"form": "song"}),
    ("GeneralizedLiftedStructureLoss", "lifted_structure", lambda: pml_losses.GeneralizedLiftedStructureLoss(), {"form": "generalized"}),
    ("NPairsLoss", "npair", lambda: pml_losses.NPairsLoss(), {}),
])
def test_pml_pair_losses(name, loss, make, hyper):
    needs(loss)
    loss_object = make()
    summary = assert_loss_matches(lambda X, y: loss_object(X, y), loss, profile="pml", hyper=hyper, examples=EXAMPLES)
    assert summary.compared == EXAMPLES


@pytest.mark.parametrize("n_bins", [100, 4])
def test_pml_histogram_loss_without_similarity_one(n_bins):
    needs("histogram")
    loss_object = pml_losses.HistogramLoss(n_bins=n_bins)
    assert_loss_matches(lambda X, y: loss_object(X, y), "histogram", profile="pml", hyper={"n_bins": n_bins},
                        batches={"duplicates": False, "ties": False}, examples=EXAMPLES)


# ---- where they truly differ ----------------------------------------------------------------------

# Two classes of three rows in 4-d; rows 0 and 1 are the same vector (a duplicated image). Cosines
# of anchor 0: S01 = 1 (the duplicate), S02 = 0.5; negatives S03 = 1/sqrt(1.04) = 0.9806, S04 = 0,
# S05 = -0.5. With eps = 0.1 a positive is kept when S - 0.1 < max_neg = 0.9806: the duplicate is
# (0.9 < 0.98) -- under PML, where it is a positive; the official code never sees it.
DUPLICATE_X = np.array([
    [1.0, 0.0, 0.0, 0.0],
    [1.0, 0.0, 0.0, 0.0],
    [0.5, 0.5, 0.5, 0.5],
    [1.0, 0.2, 0.0, 0.0],
    [0.0, 1.0, 0.0, 0.0],
    [-0.5, 0.5, -0.5, -0.5],
])
DUPLICATE_Y = np.array([0, 0, 0, 1, 1, 1])


def test_pml_against_official_names_the_value_self_rule_on_duplicates():
    # PML drops only the index diagonal: for anchor 0 the duplicate row 1 is a positive with S = 1.
    # The official code drops every same-label S >= 1 - 1e-5: for it (0, 1) is a self pair.
    needs("multi_similarity")
    batch = Batch(DUPLICATE_X, DUPLICATE_Y)
    report = explain_mismatch(pml_ms_mined(0.1, beta=40.0), "multi_similarity", batch, profile="official")
    assert not report.agree
    pair = report.worst_pair
    assert pair is not None and {pair.anchor, pair.item} == {0, 1}
    assert pair.relation.startswith("self pair by value")
    assert any("self_rule='index'" in rule for rule in pair.rules)
    assert "self_rule" in str(report)


def test_official_against_pml_fails_and_the_report_names_official():
    needs("multi_similarity")
    with pytest.raises(LossMismatch) as caught:
        assert_loss_matches(official_ms, "multi_similarity", profile="pml", hyper={"eps": 0.1, "beta": 40.0},
                            batches={"duplicates": True, "singletons": False, "one_class": False, "classes": (2, 3), "m": (4, 10)},
                            examples=EXAMPLES)
    report = caught.value.report
    assert report.best is not None and report.best.changes == {"profile": "official"}
    assert "profile 'official'" in str(caught.value)


def test_pml_histogram_raises_at_similarity_one():
    # PML puts s = 1 into node n_bins + 1 and its scatter fails (docs/losses.md#histogram); gpwref defines
    # the loss there (all the pair's weight on the last node).
    needs("histogram")
    batch = Batch(DUPLICATE_X, DUPLICATE_Y)
    report = explain_mismatch(lambda X, y: pml_losses.HistogramLoss()(X, y), "histogram", batch, profile="pml")
    assert not report.agree
    assert "out of bounds" in report.candidate_error
    assert any("candidate raised where the reference defines the loss" in note for note in report.notes)
