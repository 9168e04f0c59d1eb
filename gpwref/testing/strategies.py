"""Batches for testing pair losses, with every edge case of docs/oracle-contract.md#edge-cases as a named knob.

``make_batch(rng, ...)`` draws one batch from a NumPy generator (no hypothesis needed: ``gpwref
verify`` and ``assert_loss_matches`` without hypothesis use it); ``batches(...)`` is the hypothesis
strategy built on it. Every knob is validated when the strategy is built, not when it is drawn.
Edge-case knobs take ``True`` (force the edge case), ``False`` (avoid it) or ``None`` (let the draw
decide):

* ``singletons``: some classes have exactly one sample (anchors with no positive);
* ``one_class``: every sample has the same label (no negative anywhere); ``False`` splits a batch
  drawn as one class by chance into two, at every m: the smallest m drawn is then raised to 2 (4
  with ``singletons=False``, two classes of two);
* ``ties``: all embeddings identical, so every pair is tied (S all equal);
* ``duplicates``: some rows are exact copies of others (same or different class);
* ``on_boundary``: a pair sits exactly on an MS mining boundary for the returned ``boundary_eps``
  (dyadic embeddings, so S and S +- eps are exact in floating point);
* ``with_ref``: a separate reference set (memory bank) is returned; ``ref_includes_batch`` puts
  the batch's own rows inside it and fills ``ref_self``.

Sizes: ``m`` (batch rows), ``d`` (dimension) and ``classes`` take an int or an inclusive
``(low, high)`` range. ``m`` defaults to ``DEFAULT_M`` = (2, 12): m = 1 is an edge case of its own
(``m=1`` in ``Batch.cases``), drawn only when asked (``m=1`` or a range from 1, e.g. ``m=(1, 12)``);
the low end of ``m`` is the smallest batch drawn.

Two knobs fix the label structure (both leave the other knobs as they are):

* ``pk=(P, K)``: a class-sorted P x K batch, P classes of K samples each, labels
  ``[0]*K + [1]*K + ... + [P-1]*K`` (what Smooth-AP and recall@k code assume of a batch sampler);
  P and K each an int or a (low, high) range; m and classes follow from them (do not pass those).
* ``proxies=K``: the reference set is a proxy set: K proxies (an int >= 1) for every class of the
  batch, ``ref_labels = [0]*K + [1]*K + ... + [C-1]*K``, and the batch's labels are renumbered
  0..C-1 (singleton classes too); ``Batch.cases`` has "proxies" and "with_ref". For sample-to-proxy
  losses (Proxy-Anchor, Proxy-NCA, softmax-style class weights), which the oracle draws this way.

Two more knobs shape the numbers rather than the structure:

* ``normalize``: ``None`` (default, as before): ``Batch.normalize`` is True except for boundary
  batches, whose raw dyadic rows are used as given. ``True``: every batch is meant for a loss that
  L2-normalises its input; boundary batches then use rows of norm exactly 1 (four entries of
  +-1/2, or one of +-1), so normalising is exact and S lies on the grid of multiples of 1/4.
  ``False``: every batch is used as given (``Batch.normalize`` False).
* ``boundary_eps``: a float; the batch then has a pair exactly on the MS mining boundary *for this
  eps* (a negative at min_pos - eps or a positive at max_neg + eps), so that a candidate built with
  that eps meets the boundary. It must lie on the batch's exact grid: a multiple of 1/4 with
  ``normalize=True`` (and d >= 5), of 1/16 otherwise, at most 1.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from ..errors import GpwrefError


@dataclass(frozen=True)
class Batch:
    embeddings: np.ndarray
    labels: np.ndarray
    ref: np.ndarray | None = None
    ref_labels: np.ndarray | None = None
    ref_self: np.ndarray | None = None
    normalize: bool = True
    boundary_eps: float | None = None  # an eps putting one pair exactly on the MS mining boundary
    cases: tuple[str, ...] = ()  # the edge cases present, by knob name

    @property
    def m(self) -> int:
        return self.embeddings.shape[0]

    def compute_kwargs(self) -> dict:
        """Keyword arguments for ``gpwref.compute`` describing this batch."""
        kwargs = {"normalize": self.normalize}
        if self.ref is not None:
            kwargs.update(ref=self.ref, ref_labels=self.ref_labels, ref_self=self.ref_self)
        return kwargs


_KNOBS = ("singletons", "one_class", "ties", "duplicates", "on_boundary", "with_ref", "ref_includes_batch")
_DTYPES = (np.dtype(np.float64), np.dtype(np.float32), np.dtype(np.float16))
_BOUNDARY_TRIES = 2000


def _range(name: str, value, *, allow_none: bool = False) -> tuple[int, int] | None:
    if value is None and allow_none:
        return None
    lo, hi = value if isinstance(value, tuple) and len(value) == 2 else (value, value)
    if not (isinstance(lo, int) and isinstance(hi, int) and not isinstance(lo, bool) and not isinstance(hi, bool) and 1 <= lo <= hi):
        extra = ", or None" if allow_none else ""
        raise GpwrefError(name, f"must be an int >= 1 or a (low, high) pair of such ints with low <= high{extra}", repr(value))
    return lo, hi


DEFAULT_M = (2, 12)  # m = 1 only when asked


def _validate(m, d, classes, dtype, knobs, normalize=None, boundary_eps=None, pk=None, proxies=None):
    """Checks every knob; returns the m range to draw from (the smallest m raised where a knob
    needs it) and pk as ((P low, P high), (K low, K high)) or None."""
    for name, value in knobs.items():
        if value not in (None, True, False) or isinstance(value, (int, float)) and not isinstance(value, bool):
            raise GpwrefError(name, "must be True, False or None (let the draw decide)", repr(value))
    if pk is not None:
        if m is not None or classes is not None:
            raise GpwrefError("pk", "fixes the batch size and the classes (m = P K): leave m and classes unset",
                              f"m={m!r}, classes={classes!r}")
        if not (isinstance(pk, tuple) and len(pk) == 2):
            raise GpwrefError("pk", "must be a (P, K) pair: P classes of K samples, each an int >= 1 or a (low, high) range", repr(pk))
        pk = _pk_ranges(pk, knobs, boundary_eps)
        m = (pk[0][0] * pk[1][0], pk[0][1] * pk[1][1])
    m = DEFAULT_M if m is None else m
    if proxies is not None:
        if isinstance(proxies, bool) or not isinstance(proxies, (int, np.integer)) or proxies < 1:
            raise GpwrefError("proxies", "must be None (no proxy set) or the number of proxies per class, an int >= 1", repr(proxies))
        if knobs.get("with_ref") is False or knobs.get("ref_includes_batch"):
            raise GpwrefError("proxies", "makes the reference set a proxy set: it cannot go with with_ref=False or ref_includes_batch=True")
    m_range, d_range = _range("m", m), _range("d", d)
    if knobs.get("one_class") is False and pk is None:  # two classes need two rows (two of each without singletons)
        least = 4 if knobs.get("singletons") is False else 2
        if m_range[1] < least:
            raise GpwrefError("m", f"must allow at least {least} rows with one_class=False"
                              + (" and singletons=False (two classes of two)" if least == 4 else " (two classes)"), repr(m))
        m_range = (max(least, m_range[0]), m_range[1])
    class_range = _range("classes", classes, allow_none=True)
    try:
        ok_dtype = np.dtype(dtype) in _DTYPES
    except TypeError:
        ok_dtype = False
    if not ok_dtype:
        raise GpwrefError("dtype", "must be float64, float32 or float16 (NumPy dtypes)", repr(dtype))
    if normalize not in (None, True, False):
        raise GpwrefError("normalize", "must be True, False or None (None: boundary batches are used as given, others normalised)", repr(normalize))
    if knobs.get("one_class") and knobs.get("singletons"):
        raise GpwrefError("one_class", "cannot be combined with singletons=True (one class of m samples has no singleton unless m = 1)")
    if knobs.get("ref_includes_batch") and knobs.get("with_ref") is False:
        raise GpwrefError("ref_includes_batch", "needs with_ref (a reference set to include the batch in)")
    if knobs.get("one_class") and class_range is not None and class_range[0] > 1:
        raise GpwrefError("one_class", f"cannot be combined with classes={classes!r} (one class means classes = 1)")
    if knobs.get("on_boundary") and knobs.get("duplicates") is False and normalize and d_range[0] < 4:
        raise GpwrefError("d", "must be >= 4 for on_boundary=True with duplicates=False and normalize=True "
                          "(below d = 4 the only unit dyadic rows are the 2d axis vectors, which repeat)", repr(d))
    if boundary_eps is not None:
        _validate_boundary_eps(boundary_eps, m_range, d_range, class_range, knobs, normalize)
    return m_range, pk


def _pk_ranges(pk, knobs, boundary_eps):
    P, K = _range("pk", pk[0]), _range("pk", pk[1])
    for knob, forced, ok, why in (
            ("one_class", True, P[0] == 1, "P = 1 (one class)"), ("one_class", False, P[1] >= 2, "P >= 2"),
            ("singletons", True, K[0] == 1, "K = 1 (every class a singleton)"), ("singletons", False, K[1] >= 2, "K >= 2")):
        if knobs.get(knob) is forced and not ok:
            raise GpwrefError("pk", f"{knob}={forced} needs {why}", repr(pk))
    if knobs.get("one_class") is False:
        P = (max(2, P[0]), P[1])
    if knobs.get("singletons") is False:
        K = (max(2, K[0]), K[1])
    if boundary_eps is not None and (P[1] < 2 or K[1] < 2):
        raise GpwrefError("pk", "boundary_eps needs an anchor with a positive and a negative: P >= 2 and K >= 2", repr(pk))
    if boundary_eps is not None:
        P, K = (max(2, P[0]), P[1]), (max(2, K[0]), K[1])
    return P, K


def _validate_boundary_eps(eps, m_range, d_range, class_range, knobs, normalize) -> None:
    if isinstance(eps, bool) or not isinstance(eps, (int, float)) or not math.isfinite(eps) or not 0 < eps <= 1:
        raise GpwrefError("boundary_eps", "must be a finite number in (0, 1]", repr(eps))
    grid = 0.25 if normalize else 1.0 / 16.0
    if (eps / grid) != round(eps / grid):
        where = "normalize=True (unit dyadic rows: S is a multiple of 1/4)" if normalize else "raw dyadic rows (S is a multiple of 1/16)"
        raise GpwrefError("boundary_eps", f"must be a multiple of {grid} with {where}, so that S +- eps is exact", repr(eps))
    if normalize and d_range[0] < 5:
        raise GpwrefError("d", "must be >= 5 with boundary_eps and normalize=True (unit rows of four +-1/2 entries: "
                          "in d = 4 they overlap fully and S is a multiple of 1/2 only)", repr(d_range))
    if m_range[1] < 3:
        raise GpwrefError("m", "must allow at least 3 rows with boundary_eps (an anchor, a positive and a negative)", repr(m_range))
    for name, forbidden in (("on_boundary", False), ("one_class", True), ("ties", True)):
        if knobs.get(name) is forbidden:
            raise GpwrefError(name, f"cannot be {forbidden} together with boundary_eps (the batch must have a pair on the boundary)")
    if class_range is not None and class_range[1] < 2:
        raise GpwrefError("classes", "must allow at least 2 classes with boundary_eps", repr(class_range))


def _pick(rng: np.random.Generator, value, p: float = 0.3) -> bool:
    return bool(rng.random() < p) if value is None else bool(value)


def _size(rng, value) -> int:
    lo, hi = value if isinstance(value, tuple) else (value, value)
    return int(rng.integers(lo, hi + 1))


def make_batch(
    rng: np.random.Generator,
    *,
    m=None,
    d=(2, 6),
    classes=None,
    singletons=None,
    one_class=None,
    ties=None,
    duplicates=None,
    on_boundary=None,
    with_ref=None,
    ref_includes_batch=None,
    dtype=np.float64,
    normalize=None,
    boundary_eps=None,
    pk=None,
    proxies=None,
) -> Batch:
    """One batch drawn from ``rng`` (knobs: see the module docstring)."""
    knobs = dict(singletons=singletons, one_class=one_class, ties=ties, duplicates=duplicates,
                 on_boundary=on_boundary, with_ref=with_ref, ref_includes_batch=ref_includes_batch)
    m, pk = _validate(m, d, classes, dtype, knobs, normalize, boundary_eps, pk, proxies)
    shape = dict(pk=pk, proxies=proxies)
    if boundary_eps is None:
        return _draw(rng, m, d, classes, knobs, dtype, normalize, None, **shape)
    knobs["on_boundary"] = True
    if pk is None:
        m = (max(3, m[0]), m[1])
    for _ in range(_BOUNDARY_TRIES):
        batch = _draw(rng, m, d, classes, knobs, dtype, normalize, float(boundary_eps), **shape)
        if batch.boundary_eps is not None:
            return batch
    raise GpwrefError(  # pragma: no cover - measured: at most 254 draws (mean 34) over 500 seeds at m = 3, d = 2
        "boundary_eps", f"no batch with a pair exactly at eps={boundary_eps} was found in {_BOUNDARY_TRIES} draws; use a smaller eps or larger m")


def _draw(rng, m, d, classes, knobs, dtype, normalize, target_eps, pk=None, proxies=None) -> Batch:
    if pk is not None:
        return _draw_pk(rng, pk, d, knobs, dtype, normalize, target_eps, proxies)
    m_, d_ = _size(rng, m), _size(rng, d)
    cases = []
    one_class = _pick(rng, knobs["one_class"], 0.1)
    if one_class and knobs["one_class"] is None and knobs["singletons"]:
        one_class = False  # singletons=True is asked for: a random one-class draw would drop it
    if one_class:
        labels = np.zeros(m_, dtype=np.int64)
        cases.append("one_class")
    else:
        if classes is not None:
            n_classes = _size(rng, classes)
        elif target_eps is not None:  # a boundary needs an anchor with a positive and a negative
            n_classes = int(rng.integers(2, max(2, m_ // 2) + 1))
        else:
            n_classes = int(rng.integers(1, max(1, m_ // 2) + 1))
        labels = np.sort(rng.integers(0, n_classes, size=m_)).astype(np.int64)
        if _pick(rng, knobs["singletons"], 0.3):
            k = int(rng.integers(1, max(1, m_ // 3) + 1))
            labels[rng.choice(m_, size=k, replace=False)] = 1000 + np.arange(k)
            cases.append("singletons")
        elif knobs["singletons"] is False:
            labels = _without_singletons(labels)
        if knobs["one_class"] is False and len(np.unique(labels)) == 1 and m_ >= (4 if knobs["singletons"] is False else 2):
            labels[m_ // 2:] += 1  # drawn as one class by chance: split it in two (no draw consumed)
    return _rows(rng, m_, d_, labels, cases, knobs, dtype, normalize, target_eps, proxies)


def _draw_pk(rng, pk, d, knobs, dtype, normalize, target_eps, proxies) -> Batch:
    """A class-sorted P x K batch: P classes of K samples, labels 0..P-1 in blocks."""
    P, K, d_ = _size(rng, pk[0]), _size(rng, pk[1]), _size(rng, d)
    labels = np.repeat(np.arange(P, dtype=np.int64), K)
    cases = ["pk"] + (["one_class"] if P == 1 else []) + (["singletons"] if K == 1 else [])
    return _rows(rng, P * K, d_, labels, cases, knobs, dtype, normalize, target_eps, proxies)


def _rows(rng, m_, d_, labels, cases, knobs, dtype, normalize, target_eps, proxies) -> Batch:
    """The embeddings (and reference set) of a batch whose labels are drawn."""
    boundary = _pick(rng, knobs["on_boundary"], 0.15)
    if boundary and normalize is True and d_ < 4 and knobs["duplicates"] is False:
        boundary = False  # only 2d unit dyadic rows exist below d = 4: they would repeat
    unit_dyadic = boundary and normalize is True
    if unit_dyadic:
        X = _unit_dyadic_rows(rng, m_, d_)
        batch_normalize = True
    elif boundary:
        X = rng.integers(-4, 5, size=(m_, d_)).astype(np.float64) / 4.0  # dyadic: exact products
        batch_normalize = bool(normalize)  # None (legacy) and False: used as given
    else:
        X = rng.normal(size=(m_, d_))
        X += 0.5 * rng.normal(size=(labels.max() + 1 if labels.max() < 1000 else 1001, d_))[np.minimum(labels, 1000)]
        batch_normalize = normalize is not False
    if boundary and knobs["duplicates"] is False:
        X = _distinct_rows(rng, X, unit_dyadic)
    if _pick(rng, knobs["duplicates"], 0.2) and m_ >= 2:
        k = int(rng.integers(1, m_ // 2 + 1))
        src = rng.integers(0, m_, size=k)
        dst = rng.choice(m_, size=k, replace=False)
        X[dst] = X[src]
        if len(np.unique(X, axis=0)) == m_:  # every row was copied onto itself: copy a neighbour instead
            X[dst[0]] = X[(dst[0] + 1) % m_]
        cases.append("duplicates")
    if _pick(rng, knobs["ties"], 0.1):
        X[:] = X[0]
        cases.append("ties")
    if batch_normalize and np.any(np.linalg.norm(X, axis=1) == 0):
        X[np.linalg.norm(X, axis=1) == 0, 0] = 1.0

    ref = ref_labels = ref_self = None
    if proxies is not None:
        labels = np.unique(labels, return_inverse=True)[1].astype(np.int64)  # classes 0..C-1
        n_classes = int(labels.max()) + 1
        ref_labels = np.repeat(np.arange(n_classes, dtype=np.int64), proxies)
        if unit_dyadic:
            ref = _unit_dyadic_rows(rng, len(ref_labels), d_)
        elif boundary:
            ref = rng.integers(-4, 5, size=(len(ref_labels), d_)) / 4.0
        else:  # near its class's mean row, so that the class's samples are closest to it
            means = np.stack([X[labels == c].mean(axis=0) for c in range(n_classes)])
            ref = means[ref_labels] + 0.5 * rng.normal(size=(len(ref_labels), d_))
        if batch_normalize and np.any(np.linalg.norm(ref, axis=1) == 0):
            ref[np.linalg.norm(ref, axis=1) == 0, 0] = 1.0
        cases += ["proxies", "with_ref"]
    elif _pick(rng, knobs["with_ref"], 0.25):
        n_extra = int(rng.integers(1, 2 * m_ + 1))
        extra_labels = rng.integers(0, labels.max() + 2, size=n_extra).astype(np.int64)
        if unit_dyadic:
            extra = _unit_dyadic_rows(rng, n_extra, d_)
        else:
            extra = (rng.integers(-4, 5, size=(n_extra, d_)) / 4.0) if boundary else rng.normal(size=(n_extra, d_))
        if batch_normalize and np.any(np.linalg.norm(extra, axis=1) == 0):
            extra[np.linalg.norm(extra, axis=1) == 0, 0] = 1.0
        if _pick(rng, knobs["ref_includes_batch"], 0.5):
            ref = np.concatenate([extra, X])
            ref_labels = np.concatenate([extra_labels, labels])
            ref_self = np.arange(m_, dtype=np.int64) + n_extra
            cases.append("ref_includes_batch")
        else:
            ref, ref_labels = extra, extra_labels
        cases.append("with_ref")

    boundary_eps = None
    if boundary:
        found = _boundary_eps(X, labels, ref, ref_labels, ref_self, target_eps)
        boundary_eps = found if target_eps is None else (target_eps if found else None)
    if boundary_eps is not None:
        cases.append("on_boundary")
    if "duplicates" not in cases and "ties" not in cases and len(np.unique(X, axis=0)) < m_:
        cases.append("duplicates")  # dyadic rows can repeat by chance
    if m_ == 1:
        cases.append("m=1")
    X = X.astype(dtype)
    if ref is not None:
        ref = ref.astype(dtype)
    return Batch(X, labels, ref, ref_labels, ref_self, batch_normalize, boundary_eps, tuple(cases))


def _unit_dyadic_rows(rng: np.random.Generator, count: int, d: int) -> np.ndarray:
    """Rows of norm exactly 1 with dyadic entries: four entries +-1/2 (d >= 4), else one entry +-1.

    Normalising such a row divides by sqrt(1) = 1 exactly, and every product of two rows is a
    multiple of 1/4 computed without rounding.
    """
    rows = np.zeros((count, d))
    for r in range(count):
        signs = rng.choice([-1.0, 1.0], size=4)
        if d >= 4 and rng.random() < 0.8:
            rows[r, rng.choice(d, size=4, replace=False)] = 0.5 * signs
        else:
            rows[r, int(rng.integers(d))] = signs[0]
    return rows


def _distinct_rows(rng: np.random.Generator, X: np.ndarray, unit_dyadic: bool) -> np.ndarray:
    """Redraw dyadic rows that repeat an earlier row (``duplicates=False``)."""
    X = X.copy()
    for r in range(1, X.shape[0]):
        for _ in range(100):
            if not np.any(np.all(X[:r] == X[r], axis=1)):
                break
            X[r] = _unit_dyadic_rows(rng, 1, X.shape[1])[0] if unit_dyadic else rng.integers(-4, 5, size=X.shape[1]) / 4.0
    return X


def _without_singletons(labels: np.ndarray) -> np.ndarray:
    values, counts = np.unique(labels, return_counts=True)
    lonely = values[counts == 1]
    if len(lonely) and len(labels) >= 2:
        keep = values[counts > 1]
        target = keep[0] if len(keep) else values[0]
        labels = np.where(np.isin(labels, lonely), target, labels)
    return np.sort(labels)


def _boundary_eps(X, labels, ref, ref_labels, ref_self, target: float | None = None):
    """An eps > 0 for which some anchor has a negative exactly at min_pos - eps (or a positive at max_neg + eps).

    With ``target`` given: True when a pair sits exactly on the boundary for that eps, else False.
    """
    R, yr = (X, labels) if ref is None else (ref, ref_labels)
    S = X @ R.T
    for i in range(X.shape[0]):
        same = yr == labels[i]
        if ref is None:
            same = same.copy()
            same[i] = False
            not_self = np.ones(len(yr), bool)
            not_self[i] = False
        else:
            not_self = np.ones(len(yr), bool)
            if ref_self is not None and ref_self[i] >= 0:
                not_self[ref_self[i]] = False
        pos = same & not_self
        neg = yr != labels[i]
        if not pos.any() or not neg.any():
            continue
        min_pos, max_neg = S[i, pos].min(), S[i, neg].max()
        if target is not None:
            # exact in both evaluation orders: every number involved is a dyadic on the grid
            if np.any(S[i, neg] + target == min_pos) or np.any(S[i, pos] - target == max_neg):
                return True
            continue
        below = S[i, neg][S[i, neg] < min_pos]
        if below.size:
            return float(min_pos - below.max())
        above = S[i, pos][S[i, pos] > max_neg]
        if above.size:
            return float(above.min() - max_neg)
    return False if target is not None else None


def batches(
    *,
    m=None,
    d=(2, 6),
    classes=None,
    singletons=None,
    one_class=None,
    ties=None,
    duplicates=None,
    on_boundary=None,
    with_ref=None,
    ref_includes_batch=None,
    dtype=np.float64,
    normalize=None,
    boundary_eps=None,
    pk=None,
    proxies=None,
):
    """Hypothesis strategy of ``Batch`` records; knobs as in ``make_batch`` (validated eagerly).

    Hypothesis draws a seed and ``make_batch`` the rest, so the drawn batches are the same as
    ``make_batch(np.random.default_rng(seed), ...)`` for that seed (a failure can be replayed without
    hypothesis).
    """
    from hypothesis import strategies as st

    kwargs = dict(m=m, d=d, classes=classes, singletons=singletons, one_class=one_class, ties=ties,
                  duplicates=duplicates, on_boundary=on_boundary, with_ref=with_ref,
                  ref_includes_batch=ref_includes_batch, dtype=dtype, normalize=normalize,
                  boundary_eps=boundary_eps, pk=pk, proxies=proxies)
    _validate(m, d, classes, dtype, {k: kwargs[k] for k in _KNOBS}, normalize, boundary_eps, pk, proxies)
    return st.integers(0, 2**32 - 1).map(lambda seed: make_batch(np.random.default_rng(seed), **kwargs))
