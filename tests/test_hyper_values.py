"""Hyper-parameter values: NumPy scalars, 0-d arrays and torch 0-d tensors are numbers like Python's.

A number given in any of these forms must give exactly the result of the same Python number (the loss
receives a plain Python int/float); bool, NaN, inf, out-of-range values, 1-element arrays and floats
for an integer rule are refused with GpwrefError naming the argument and the rule.
"""

from __future__ import annotations

import math
import re

import numpy as np
import pytest

import gpwref

torch = pytest.importorskip("torch")

X = np.random.default_rng(7).normal(size=(8, 4))
Y = np.array([0, 0, 1, 1, 1, 2, 2, 0])


def same_result(loss: str, given: dict, plain: dict, **options):
    """compute() with ``given`` and with the plain Python ``plain`` agree exactly, hyper values included."""
    got = gpwref.compute(loss, X, Y, **options, **given)
    expected = gpwref.compute(loss, X, Y, **options, **plain)
    assert got.loss == expected.loss
    np.testing.assert_array_equal(got.grad_sim, expected.grad_sim)
    np.testing.assert_array_equal(got.grad_emb, expected.grad_emb)
    for key, value in plain.items():
        assert got.hyper[key] == value and type(got.hyper[key]) is type(value), key
    return got


@pytest.mark.parametrize(
    "alpha,plain",
    [
        (np.float32(2), 2.0),
        (np.float64(2.0), 2.0),
        (np.float16(0.5), 0.5),
        (np.int64(3), 3),
        (np.uint8(3), 3),
        (np.array(2.0), 2.0),
        (np.array(2.0, dtype=np.float32), 2.0),
        (np.array(3, dtype=np.int32), 3),
        (torch.tensor(2.0), 2.0),
        (torch.tensor(2.0, dtype=torch.float64), 2.0),
        (torch.tensor(3), 3),
    ],
    ids=repr,
)
def test_number_forms_give_the_python_number(alpha, plain):
    same_result("multi_similarity", {"alpha": alpha}, {"alpha": plain})


def test_optional_number_takes_numpy_and_none():
    same_result("multi_similarity", {"eps": np.float32(0.25)}, {"eps": 0.25})
    same_result("multi_similarity", {"eps": None}, {"eps": None})


@pytest.mark.parametrize("n_bins", [np.int64(4), np.int32(4), np.array(4), torch.tensor(4)], ids=repr)
def test_integer_forms_give_the_python_integer(n_bins):
    same_result("histogram", {"n_bins": n_bins}, {"n_bins": 4})


def test_integer_tuple_takes_numpy_integers_and_a_list():
    result = same_result("recall_at_k", {"k_values": (np.int64(1), np.int32(2), 4)}, {"k_values": (1, 2, 4)})
    assert all(type(k) is int for k in result.hyper["k_values"])
    same_result("recall_at_k", {"k_values": [1, 2, 4]}, {"k_values": (1, 2, 4)})


def test_per_form_mapping_and_per_class_mapping_take_numpy_numbers():
    same_result(
        "lifted_structure",
        {"pos_margin": {"song": np.float32(0.5), "generalized": np.float64(1.0)}, "neg_margin": np.float32(1.5)},
        {"pos_margin": {"song": 0.5, "generalized": 1.0}, "neg_margin": 1.5},
    )
    same_result(
        "margin",
        {"beta": {np.int64(0): np.float32(1.25), np.int64(1): np.float64(1.0), 2: torch.tensor(0.75)}},
        {"beta": {0: 1.25, 1: 1.0, 2: 0.75}},
    )


def test_numpy_bool_is_a_boolean():
    same_result("smooth_ap", {"include_query": np.bool_(True)}, {"include_query": True})


def refused(argument: str, loss: str, rule: str):
    return pytest.raises(gpwref.GpwrefError, match=rf"^{argument}: '{loss}' needs {re.escape(rule)}")


@pytest.mark.parametrize(
    "alpha",
    [
        True, np.bool_(True), np.array(True), torch.tensor(True),  # bool is never a number
        np.float32("nan"), np.float64("inf"), np.array(-np.inf), torch.tensor(float("nan")), float("nan"),
        np.float32(-2), np.int64(0), torch.tensor(-1.0), 0,  # out of range (> 0)
        np.array([2.0]), torch.tensor([2.0]), [2.0], (2.0,),  # not scalars
        np.complex128(2), np.array(2 + 0j), "2", np.str_("2"), np.datetime64(2, "s"), None,
        10**400,  # finite as an int, not as a float
    ],
    ids=lambda value: repr(value)[:40],
)
def test_bad_numbers_refused_with_the_rule(alpha):
    with refused("alpha", "multi_similarity", "a finite number > 0"):
        gpwref.compute("multi_similarity", X, Y, alpha=alpha)


@pytest.mark.parametrize(
    "n_bins",
    [4.0, np.float64(4.0), np.float32(4), np.array(4.0), torch.tensor(4.0), True, np.bool_(True), np.int64(0), -3],
    ids=repr,
)
def test_integer_rule_refuses_floats_bools_and_out_of_range(n_bins):
    with refused("n_bins", "histogram", "an integer >= 1"):
        gpwref.compute("histogram", X, Y, n_bins=n_bins)


@pytest.mark.parametrize("k_values", [(1, 2.0), (np.float64(1),), (), [], (True,), (0, 1), np.array([1, 2]), 1], ids=repr)
def test_integer_tuple_rule_refuses(k_values):
    with refused("k_values", "recall_at_k", "a non-empty tuple (or list) of integers >= 1"):
        gpwref.compute("recall_at_k", X, Y, k_values=k_values)


@pytest.mark.parametrize("include_query", [1, 0, 1.0, np.int64(1), "True", None], ids=repr)
def test_boolean_rule_refuses_numbers(include_query):
    with refused("include_query", "smooth_ap", "True or False"):
        gpwref.compute("smooth_ap", X, Y, include_query=include_query)


@pytest.mark.parametrize("margin", [np.float64(math.pi), math.pi, -0.1, np.float32("nan")], ids=repr)
def test_half_open_interval_rule(margin):
    with refused("margin", "arcface", "an angle in radians in [0, pi)"):
        gpwref.compute("arcface", X, Y, ref=X[:3], ref_labels=Y[:3], margin=margin)


def test_per_form_and_per_class_mappings_refuse_bad_values():
    with refused("pos_margin", "lifted_structure", "a finite number, or a mapping {'song': .., 'generalized': ..}"):
        gpwref.compute("lifted_structure", X, Y, pos_margin={"song": np.float64("nan"), "generalized": 1.0})
    with refused("beta", "margin", "a finite number, or a non-empty {class id (int): finite number} mapping"):
        gpwref.compute("margin", X, Y, beta={0: 1.2, 1.0: 1.2, 2: 1.2})
    with refused("beta", "margin", "a finite number, or a non-empty {class id (int): finite number} mapping"):
        gpwref.compute("margin", X, Y, beta={0: 1.2, True: 1.2, 2: 1.2})
