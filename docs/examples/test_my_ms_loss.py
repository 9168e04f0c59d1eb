"""An outside project's test file: its own MS loss checked against gpwref (run: pytest docs/examples/test_my_ms_loss.py)."""

import functools

import pytest
import torch
from hypothesis import given, settings

from gpwref.testing import LossMismatch, assert_loss_matches, batches


def ms_loss(embeddings, labels, alpha=2.0, beta=50.0, base=0.5, epsilon=0.1):
    """The project's Multi-Similarity loss, mining and weighting as the MS paper writes them."""
    x = torch.nn.functional.normalize(embeddings, dim=1)
    sim = x @ x.T
    same = labels[:, None] == labels[None, :]
    pos = same & ~torch.eye(len(labels), dtype=torch.bool)
    neg = ~same
    s = sim.detach()  # mining selects pairs; it carries no gradient
    inf = torch.tensor(float("inf"), dtype=sim.dtype)
    min_pos = torch.where(pos, s, inf).amin(dim=1, keepdim=True)
    max_neg = torch.where(neg, s, -inf).amax(dim=1, keepdim=True)
    pos = pos & (s < max_neg + epsilon)
    neg = neg & (s > min_pos - epsilon)
    zero = torch.zeros(len(labels), 1, dtype=sim.dtype)  # log(1 + sum exp z) = logsumexp([z, 0])
    pos_term = torch.logsumexp(torch.cat([torch.where(pos, -alpha * (sim - base), -inf), zero], 1), 1) / alpha
    neg_term = torch.logsumexp(torch.cat([torch.where(neg, beta * (sim - base), -inf), zero], 1), 1) / beta
    return (pos_term + neg_term).mean()


def test_matches_the_paper():
    assert_loss_matches(ms_loss, "multi_similarity", profile="paper")


def test_edge_cases():
    assert_loss_matches(ms_loss, "multi_similarity", profile="paper", batches={"duplicates": True, "singletons": True})
    assert_loss_matches(ms_loss, "multi_similarity", profile="paper", batches={"ties": True, "m": (1, 6)})


@given(batch=batches(m=(2, 16), d=(2, 8), with_ref=False, normalize=True))
@settings(max_examples=20, deadline=None)
def test_inside_my_own_hypothesis_test(batch):
    assert_loss_matches(ms_loss, "multi_similarity", profile="paper", batches=batch)


def test_in_float32():
    assert_loss_matches(ms_loss, "multi_similarity", profile="paper", dtype="float32")


def test_a_wrong_beta_is_reported():
    with pytest.raises(LossMismatch) as caught:
        assert_loss_matches(functools.partial(ms_loss, beta=40.0), "multi_similarity", profile="paper")
    report = caught.value.report
    assert report.best.changes == {"beta": 40.0}  # "beta=40.0 (as under 'official')"
    print(report)
