"""bpr: hand-derived batches, modelled conventions and bad input (drawn batches: tests/test_catalog.py)."""

from __future__ import annotations

import math

import pytest

import gpwref

from ._helpers import S_RANK, Y_RANK, sigmoid


def test_bpr_is_a_sum_of_minus_log_sigmoid():
    # BPR-Opt: L = -ln sigmoid(S01 - S02) - ln sigmoid(S10 - S12) (sum, no 1/2); weights sigmoid(gap).
    r = gpwref.from_similarity("bpr", S_RANK, Y_RANK)
    assert r.loss == pytest.approx(-math.log(sigmoid(0.4)) - math.log(sigmoid(0.2)), rel=1e-14)
    assert r.grad_sim[0, 1] == pytest.approx(-sigmoid(-0.4), rel=1e-14)
    assert r.grad_sim[1, 2] == pytest.approx(sigmoid(-0.2), rel=1e-14)
    mean = gpwref.from_similarity("bpr", S_RANK, Y_RANK, reduction="mean")
    assert mean.loss == pytest.approx(r.loss / 2, rel=1e-14)
