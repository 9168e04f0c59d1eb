"""Batches for testing pair losses, with every edge case of SPEC.md as a named knob.

``make_batch(rng, ...)`` draws one batch from a NumPy generator (no hypothesis needed: ``gpwref
verify`` uses it); ``batches(...)`` is the hypothesis strategy built on it. Knobs take ``True``
(force the edge case), ``False`` (avoid it) or ``None`` (let the draw decide):

* ``singletons``: some classes have exactly one sample (anchors with no positive);
* ``one_class``: every sample has the same label (no negative anywhere);
* ``ties``: all embeddings identical, so every pair is tied (S all equal);
* ``duplicates``: some rows are exact copies of others (same or different class);
* ``on_boundary``: a pair sits exactly on an MS mining boundary for the returned ``boundary_eps``
  (dyadic embeddings, ``normalize=False``, so S and S +- eps are exact in floating point);
* ``with_ref``: a separate reference set (memory bank) is returned; ``ref_includes_batch`` puts
  the batch's own rows inside it and fills ``ref_self``.
"""

from __future__ import annotations

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


def _validate(m, d, classes, dtype, knobs) -> None:
    for name, value in knobs.items():
        if value not in (None, True, False):
            raise GpwrefError(name, "must be True, False or None (let the draw decide)", repr(value))
    for name, value in (("m", m), ("d", d)):
        lo, hi = value if isinstance(value, tuple) else (value, value)
        if not (isinstance(lo, int) and isinstance(hi, int) and 1 <= lo <= hi):
            raise GpwrefError(name, "must be an int >= 1 or a (low, high) pair of such ints", repr(value))
    if classes is not None:
        lo, hi = classes if isinstance(classes, tuple) else (classes, classes)
        if not (isinstance(lo, int) and isinstance(hi, int) and 1 <= lo <= hi):
            raise GpwrefError("classes", "must be an int >= 1, a (low, high) pair, or None", repr(classes))
    if np.dtype(dtype) not in (np.dtype(np.float64), np.dtype(np.float32)):
        raise GpwrefError("dtype", "must be float64 or float32", repr(dtype))
    if knobs.get("one_class") and knobs.get("singletons"):
        raise GpwrefError("one_class", "cannot be combined with singletons=True (one class of m samples has no singleton unless m = 1)")
    if knobs.get("ref_includes_batch") and knobs.get("with_ref") is False:
        raise GpwrefError("ref_includes_batch", "needs with_ref (a reference set to include the batch in)")


def _pick(rng: np.random.Generator, value, p: float = 0.3) -> bool:
    return bool(rng.random() < p) if value is None else bool(value)


def _size(rng, value) -> int:
    lo, hi = value if isinstance(value, tuple) else (value, value)
    return int(rng.integers(lo, hi + 1))


def make_batch(
    rng: np.random.Generator,
    *,
    m=(1, 12),
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
) -> Batch:
    knobs = dict(singletons=singletons, one_class=one_class, ties=ties, duplicates=duplicates,
                 on_boundary=on_boundary, with_ref=with_ref, ref_includes_batch=ref_includes_batch)
    _validate(m, d, classes, dtype, knobs)
    m_, d_ = _size(rng, m), _size(rng, d)
    cases = []
    if _pick(rng, one_class, 0.1):
        labels = np.zeros(m_, dtype=np.int64)
        cases.append("one_class")
    else:
        n_classes = _size(rng, classes) if classes is not None else int(rng.integers(1, max(1, m_ // 2) + 1))
        labels = np.sort(rng.integers(0, n_classes, size=m_)).astype(np.int64)
        if _pick(rng, singletons, 0.3):
            k = int(rng.integers(1, max(1, m_ // 3) + 1))
            labels[rng.choice(m_, size=k, replace=False)] = 1000 + np.arange(k)
            cases.append("singletons")
        elif singletons is False:
            labels = _without_singletons(labels)
    boundary = _pick(rng, on_boundary, 0.15)
    if boundary:
        X = rng.integers(-4, 5, size=(m_, d_)).astype(np.float64) / 4.0  # dyadic: exact products
        normalize = False
    else:
        X = rng.normal(size=(m_, d_))
        X += 0.5 * rng.normal(size=(labels.max() + 1 if labels.max() < 1000 else 1001, d_))[np.minimum(labels, 1000)]
        normalize = True
    if _pick(rng, duplicates, 0.2) and m_ >= 2:
        k = int(rng.integers(1, m_ // 2 + 1))
        src = rng.integers(0, m_, size=k)
        dst = rng.choice(m_, size=k, replace=False)
        X[dst] = X[src]
        cases.append("duplicates")
    if _pick(rng, ties, 0.1):
        X[:] = X[0]
        cases.append("ties")
    if normalize and np.any(np.linalg.norm(X, axis=1) == 0):
        X[np.linalg.norm(X, axis=1) == 0, 0] = 1.0

    ref = ref_labels = ref_self = None
    if _pick(rng, with_ref, 0.25):
        n_extra = int(rng.integers(1, 2 * m_ + 1))
        extra_labels = rng.integers(0, labels.max() + 2, size=n_extra).astype(np.int64)
        extra = (rng.integers(-4, 5, size=(n_extra, d_)) / 4.0) if boundary else rng.normal(size=(n_extra, d_))
        if normalize and np.any(np.linalg.norm(extra, axis=1) == 0):
            extra[np.linalg.norm(extra, axis=1) == 0, 0] = 1.0
        if _pick(rng, ref_includes_batch, 0.5):
            ref = np.concatenate([extra, X])
            ref_labels = np.concatenate([extra_labels, labels])
            ref_self = np.arange(m_, dtype=np.int64) + n_extra
            cases.append("ref_includes_batch")
        else:
            ref, ref_labels = extra, extra_labels
        cases.append("with_ref")

    boundary_eps = _boundary_eps(X, labels, ref, ref_labels, ref_self) if boundary else None
    if boundary_eps is not None:
        cases.append("on_boundary")
    if m_ == 1:
        cases.append("m=1")
    X = X.astype(dtype)
    if ref is not None:
        ref = ref.astype(dtype)
    return Batch(X, labels, ref, ref_labels, ref_self, normalize, boundary_eps, tuple(cases))


def _without_singletons(labels: np.ndarray) -> np.ndarray:
    values, counts = np.unique(labels, return_counts=True)
    lonely = values[counts == 1]
    if len(lonely) and len(labels) >= 2:
        keep = values[counts > 1]
        target = keep[0] if len(keep) else values[0]
        labels = np.where(np.isin(labels, lonely), target, labels)
    return np.sort(labels)


def _boundary_eps(X, labels, ref, ref_labels, ref_self) -> float | None:
    """An eps > 0 for which some anchor has a negative exactly at min_pos - eps (or a positive at max_neg + eps)."""
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
        below = S[i, neg][S[i, neg] < min_pos]
        if below.size:
            return float(min_pos - below.max())
        above = S[i, pos][S[i, pos] > max_neg]
        if above.size:
            return float(above.min() - max_neg)
    return None


def batches(
    *,
    m=(1, 12),
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
):
    """Hypothesis strategy of ``Batch`` records; knobs as in ``make_batch`` (validated eagerly)."""
    from hypothesis import strategies as st

    kwargs = dict(m=m, d=d, classes=classes, singletons=singletons, one_class=one_class, ties=ties,
                  duplicates=duplicates, on_boundary=on_boundary, with_ref=with_ref,
                  ref_includes_batch=ref_includes_batch, dtype=dtype)
    _validate(m, d, classes, dtype, {k: kwargs[k] for k in _KNOBS})
    return st.integers(0, 2**32 - 1).map(lambda seed: make_batch(np.random.default_rng(seed), **kwargs))
