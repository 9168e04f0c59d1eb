"""An oracle for distributed (global-batch) losses: DDP training must equal single-process training.

    from gpwref.testing import assert_distributed_loss_matches
    assert_distributed_loss_matches(make_loss, "multi_similarity", profile="pml")

``make_loss()`` builds the candidate on each rank (after the process group is initialised); the
candidate is called as ``loss_fn(local_embeddings, local_labels)`` (plus ``ref=``, ``ref_labels=``
when the batch has proxies). The oracle starts ``W`` gloo processes on 127.0.0.1 for each world size,
splits global batches across the ranks (uneven sizes, a class spread over ranks, a rank holding one
class, a rank with a single row), wraps a probe model (a linear layer starting at the identity, so
the embeddings are the batch's rows exactly) in DDP, runs one forward/backward per split and compares
with gpwref's float64 reference on the concatenated batch:

* the value each rank returns with the global loss L;
* DDP's averaged parameter gradients with the single-process ones (dW = G^T Z, db = column sums of
  G, dref = dL/dref, G = dL/dX);
* for the diagnosis, the gradient each rank's own embeddings received (before DDP averages the
  parameters) with the hypotheses of known bugs: a world-size factor (none, or one too many), no
  gradient through the gather, a local-only gradient without reduction, another rank's rows'
  gradient (an order that differs across ranks), each rank differentiating only its own anchors'
  terms, and rows counted twice.

``check_distributed_losses`` runs several candidates in one spawn per world size (process start with
torch costs seconds) and returns the reports. ``make_loss`` must be picklable under the "spawn" start
method (a module-level function or ``functools.partial``); ``start_method="fork"`` also takes lambdas.
torch is imported only when these functions run. See ``docs/distributed.md``.
"""

from __future__ import annotations

import math
import os
import queue as queue_module
import socket
import time
import traceback
from dataclasses import dataclass, field
from typing import Callable, Mapping, Sequence

import numpy as np

from ..errors import GpwrefError

__all__ = [
    "DistributedCase",
    "DistributedMismatch",
    "DistributedReport",
    "assert_distributed_loss_matches",
    "check_distributed_losses",
]

SPLITS = ("uneven", "even")


@dataclass(frozen=True)
class DistributedCase:
    """One candidate: ``make_loss()`` builds it on every rank; ``loss``/``profile``/``hyper`` name
    gpwref's reference for it; ``label`` names it in reports; ``proxies``: draw K proxies per class
    (passed to the candidate as ``ref=``, ``ref_labels=``; a parameter of the DDP model); ``views``:
    draw two views of n items (item ids as labels), each rank holding both views of its items and
    passing its second view, computed by the same DDP model, as ``ref=`` (``ref_sharding="sharded"``)."""

    make_loss: Callable
    loss: str
    profile: str = "paper"
    hyper: Mapping = field(default_factory=dict)
    label: str = ""
    splits: str | None = None  # "uneven" or "even" for this case (None: the call's)
    proxies: int | None = None  # K proxies per class as the reference set of drawn batches (sample-to-proxy losses)
    views: bool = False  # two views of the items: each rank passes its items' second view as ref (two-view losses)

    @property
    def name(self) -> str:
        return self.label or f"{self.loss}/{self.profile}"


@dataclass(frozen=True)
class _Plan:
    """A global batch (rows in rank order) and its split: rank r holds rows offsets[r]:offsets[r+1]."""

    name: str
    embeddings: np.ndarray
    labels: np.ndarray
    sizes: tuple
    ref: np.ndarray | None = None
    ref_labels: np.ndarray | None = None
    ref_sizes: tuple | None = None  # per-rank reference rows (a second view through the model); None: ref replicated

    @property
    def offsets(self) -> list:
        return [0, *np.cumsum(self.sizes).tolist()]

    @property
    def ref_offsets(self) -> list:
        return [0, *np.cumsum(self.ref_sizes).tolist()]


@dataclass
class DistributedReport:
    """The outcome of one candidate on one split at one world size."""

    case: str
    world_size: int
    split: str
    sizes: tuple
    value_ok: bool
    grad_ok: bool
    values: list  # per rank (None where the rank raised)
    reference_value: float | None
    grad_rel_err: float | None  # DDP-averaged parameter gradients vs single-process, normwise
    grad_factor: float | None  # least-squares scalar: DDP gradients ~= grad_factor * single-process ones
    causes: list  # the diagnosis, one sentence each
    errors: list  # what the candidate raised, per rank

    @property
    def ok(self) -> bool:
        return self.value_ok and self.grad_ok

    def describe(self) -> str:
        head = f"{self.case}, world size {self.world_size}, split '{self.split}' (local sizes {list(self.sizes)})"
        if self.ok:
            return head + ": matches single-process training"
        parts = [head + ":"]
        if self.grad_rel_err is not None:
            parts.append(f"  DDP-averaged gradients vs single process: rel err {self.grad_rel_err:.3g}, factor {self.grad_factor:.6g}")
        if self.reference_value is not None:
            shown = ", ".join("raised" if v is None else f"{v:.10g}" for v in self.values)
            parts.append(f"  values per rank [{shown}] vs single-process {self.reference_value:.10g}")
        parts.extend(f"  - {cause}" for cause in self.causes)
        parts.extend(f"  ! {error}" for error in self.errors)
        return "\n".join(parts)


class DistributedMismatch(AssertionError):
    """A distributed loss that differs from single-process training; ``reports`` holds every check."""

    def __init__(self, message: str, reports: list):
        super().__init__(message)
        self.reports = reports


# ---------------------------------------------------------------------------------------------
# public entry points


def assert_distributed_loss_matches(make_loss: Callable, loss: str, *, profile: str = "paper", hyper: Mapping | None = None,
                                    world_sizes: Sequence[int] = (2, 3), batches=None, n_batches: int = 1, seed: int = 0,
                                    splits: str = "uneven", proxies: int | None = None, check: Sequence[str] = ("value", "grad"),
                                    rtol: float = 1e-6, atol: float = 1e-12, start_method: str = "spawn", timeout: float = 120.0) -> list:
    """Raise ``DistributedMismatch`` (its message names the cause) unless DDP training with the
    candidate equals single-process training with gpwref's ``loss`` on every split; return the reports.

    ``check``: "value" (each rank returns the global loss) and/or "grad" (DDP-averaged parameter
    gradients). ``splits``: "uneven" (local sizes differ; what a candidate must handle when the last
    batch of an epoch is short) or "even" (equal sizes, for candidates whose gather needs them).
    ``batches``: global ``Batch`` records to split in their given order (default: drawn ones);
    ``proxies``: draw K proxies per class as a reference set (sample-to-proxy losses).
    """
    case = DistributedCase(make_loss, loss, profile, dict(hyper or {}))
    reports = []
    for world in world_sizes:
        reports.extend(check_distributed_losses([case], world, batches=batches, n_batches=n_batches, seed=seed, splits=splits,
                                                proxies=proxies, rtol=rtol, atol=atol, start_method=start_method, timeout=timeout))
    failed = [r for r in reports if ("value" in check and not r.value_ok) or ("grad" in check and not r.grad_ok)]
    if failed:
        raise DistributedMismatch(f"{len(failed)} of {len(reports)} distributed checks differ from single-process training:\n"
                                  + "\n".join(r.describe() for r in failed), reports)
    return reports


def check_distributed_losses(cases: Sequence[DistributedCase], world_size: int, *, batches=None, n_batches: int = 1, seed: int = 0,
                             splits: str = "uneven", proxies: int | None = None, rtol: float = 1e-6, atol: float = 1e-12,
                             start_method: str = "spawn", timeout: float = 120.0, per_case_batches: Mapping | None = None) -> list:
    """Every case on every split in ONE spawn of ``world_size`` gloo processes; a report per (case, split).

    ``per_case_batches``: case name -> list of ``Batch`` for cases that need batches of their own shape.
    """
    import gpwref

    if not isinstance(world_size, int) or world_size < 2:
        raise GpwrefError("world_size", "must be an integer >= 2", repr(world_size))
    if splits not in SPLITS:
        raise GpwrefError("splits", f"must be one of {list(SPLITS)}", repr(splits))
    cases = list(cases)
    for case in cases:
        gpwref.get_entry(case.loss)
    plans = []
    for index, case in enumerate(cases):
        given = (per_case_batches or {}).get(case.name, batches)
        rng = np.random.default_rng([seed, world_size, index])
        mode = case.splits or splits
        if mode not in SPLITS:
            raise GpwrefError("splits", f"must be one of {list(SPLITS)}", repr(mode))
        if case.views and given is None:
            plans.append(_view_plans(world_size, mode, rng, n_batches))
            continue
        plans.append(_plans_from(given, world_size, mode, rng) if given is not None
                     else _drawn_plans(world_size, mode, rng, n_batches, case.proxies or proxies))
    raw = _spawn(world_size, cases, plans, start_method, timeout)
    reports = []
    for index, case in enumerate(cases):
        for p, plan in enumerate(plans[index]):
            outcomes = [raw.get((rank, index, p)) for rank in range(world_size)]
            reports.append(_judge(case, plan, world_size, outcomes, raw.get(("fatal",)), rtol, atol))
    return reports


# ---------------------------------------------------------------------------------------------
# splits


def _composition(rng, m: int, world: int, *, last_single: bool = False) -> list:
    """m rows in ``world`` positive parts, not all equal (when m allows); the last part 1 if asked."""
    if last_single:
        return [*_composition(rng, m - 1, world - 1), 1] if world > 2 else [m - 1, 1]
    for _ in range(100):
        cuts = np.sort(rng.choice(np.arange(1, m), size=world - 1, replace=False))
        sizes = np.diff([0, *cuts.tolist(), m]).tolist()
        if len(set(sizes)) > 1 or m % world:
            return sizes
    return sizes


def _classes(rng, counts) -> np.ndarray:
    return np.repeat(np.arange(len(counts)), counts)


def _with_proxies(rng, labels, per_class, d):
    if not per_class:
        return None, None
    n_classes = int(labels.max()) + 1
    return rng.standard_normal((n_classes * per_class, d)), np.repeat(np.arange(n_classes), per_class)


def _drawn_plans(world: int, splits: str, rng, n_batches: int, proxies) -> list:
    """Per drawn batch: classes spread over ranks, a rank holding one class, a rank with a single row."""
    plans = []
    d = 4
    for _ in range(n_batches):
        if splits == "uneven":
            y = rng.permutation(_classes(rng, rng.integers(2, 4, size=world + 1)))
            spread = ("classes spread over ranks, uneven sizes", y, _composition(rng, len(y), world))
            single = ("a rank with a single row", rng.permutation(y), _composition(rng, len(y), world, last_single=True))
            own = rng.integers(2, 4)
            rest = rng.permutation(_classes(rng, [1, *rng.integers(2, 4, size=world)]))  # class 0 also on other ranks
            y1 = np.concatenate([np.zeros(own, dtype=np.int64), rest])
            one = ("rank 0 holds one class", y1, [own, *_composition(rng, len(rest), world - 1)] if world > 2 else [own, len(rest)])
        else:
            k = 4
            y = rng.permutation(_classes(rng, [2] * (world * k // 2)))
            spread = ("classes spread over ranks, even sizes", y, [k] * world)
            y1 = np.concatenate([np.zeros(k, dtype=np.int64), rng.permutation(_classes(rng, [2] * ((world - 1) * k // 2)) + 1)])
            one = ("rank 0 holds one class, even sizes", y1, [k] * world)
            ys = np.array([i // 2 for i in range(world)])
            single = ("every rank holds a single row", ys, [1] * world)
        for name, labels, sizes in (spread, one, single):
            labels = np.asarray(labels, dtype=np.int64)
            X = rng.standard_normal((len(labels), d))
            ref, ref_labels = _with_proxies(rng, labels, proxies, d)
            plans.append(_Plan(name, X, labels, tuple(int(s) for s in sizes), ref, ref_labels))
    return plans


def _view_plans(world: int, splits: str, rng, n_batches: int) -> list:
    """Two views of n items (view 2 = view 1 + noise; labels = item ids), each rank holding both
    views of its items: items spread with uneven sizes, and a rank with a single item."""
    plans = []
    d = 4
    for _ in range(n_batches):
        n = world * 3 if splits == "even" else int(rng.integers(2 * world, 4 * world))
        splits_ = ([("items spread, even sizes", [n // world] * world)] if splits == "even" else
                   [("items spread, uneven sizes", _composition(rng, n, world)),
                    ("a rank with a single item", _composition(rng, n, world, last_single=True))])
        for name, sizes in splits_:
            ids = rng.permutation(n).astype(np.int64)
            X = rng.standard_normal((n, d))
            V = X + 0.3 * rng.standard_normal((n, d))
            plans.append(_Plan(name, X, ids, tuple(int(s) for s in sizes), V, ids.copy(), tuple(int(s) for s in sizes)))
    return plans


def _plans_from(batches, world: int, splits: str, rng) -> list:
    """Given global batches, split in their order: uneven sizes and a single-row rank, or even sizes."""
    plans = []
    for b, batch in enumerate(batches):
        X, y = np.asarray(batch.embeddings, dtype=np.float64), np.asarray(batch.labels, dtype=np.int64)
        ref = None if batch.ref is None else np.asarray(batch.ref, dtype=np.float64)
        if getattr(batch, "ref_self", None) is not None:
            raise GpwrefError("batches", "ref_self rows are not split across ranks; pass batches without ref_self", f"batch {b}")
        m = len(y)
        if splits == "even":
            if m % world:
                raise GpwrefError("batches", f"with splits='even' every batch needs a multiple of {world} rows", f"batch {b}: {m} rows")
            plans.append(_Plan(f"batch {b}, even sizes", X, y, (m // world,) * world, ref, batch.ref_labels))
            continue
        if m < world + 1:
            raise GpwrefError("batches", f"with splits='uneven' every batch needs at least {world + 1} rows", f"batch {b}: {m} rows")
        plans.append(_Plan(f"batch {b}, uneven sizes", X, y, tuple(_composition(rng, m, world)), ref, batch.ref_labels))
        plans.append(_Plan(f"batch {b}, a rank with a single row", X, y, tuple(_composition(rng, m, world, last_single=True)), ref, batch.ref_labels))
    return plans


# ---------------------------------------------------------------------------------------------
# the processes


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _spawn(world: int, cases, plans, start_method: str, timeout: float) -> dict:
    """Run the ranks; {(rank, case, plan): outcome}, plus ("fatal",) when a rank died or timed out."""
    import multiprocessing

    ctx = multiprocessing.get_context(start_method)
    results = ctx.Queue()
    port = _free_port()
    procs = [ctx.Process(target=_rank_main, args=(rank, world, port, cases, plans, results, timeout), daemon=True) for rank in range(world)]
    try:
        for proc in procs:
            proc.start()
    except Exception as error:  # noqa: BLE001 - most often a lambda under "spawn"
        for proc in procs:
            if proc.is_alive():
                proc.terminate()
        raise GpwrefError("make_loss", f"must be picklable to start the ranks with start_method='{start_method}' (a module-level "
                          "function or functools.partial; start_method='fork' also takes lambdas)", f"{type(error).__name__}: {error}") from error
    raw, done = {}, set()
    deadline = time.monotonic() + timeout
    fatal = None
    while len(done) < world:
        try:
            message = results.get(timeout=0.2)
        except queue_module.Empty:
            dead = [(r, p.exitcode) for r, p in enumerate(procs) if p.exitcode not in (None, 0) and r not in done]
            if dead:
                time.sleep(1.0)  # let the other ranks report what they can
                _drain(results, raw, done)
                fatal = "; ".join(f"rank {r} died (exit code {code}{', a signal' if code < 0 else ''})" for r, code in dead)
                break
            if time.monotonic() > deadline:
                fatal = f"timed out after {timeout:.0f}s (a rank waits in a collective the others never entered)"
                break
            continue
        _store(message, raw, done)
    for proc in procs:
        if proc.is_alive():
            proc.terminate()
        proc.join(5)
    if fatal:
        raw[("fatal",)] = fatal
    return raw


def _store(message, raw, done) -> None:
    if message[0] == "done":
        done.add(message[1])
    else:
        rank, case, plan, outcome = message
        raw[(rank, case, plan)] = outcome


def _drain(results, raw, done) -> None:
    while True:
        try:
            _store(results.get_nowait(), raw, done)
        except queue_module.Empty:
            return


def _rank_main(rank, world, port, cases, plans, results, timeout) -> None:
    """One rank: every case on every plan, each a fresh probe model in DDP, one forward and backward."""
    from datetime import timedelta

    os.environ.setdefault("GLOO_SOCKET_IFNAME", "lo")  # loopback only: nothing leaves the machine
    os.environ["MASTER_ADDR"] = "127.0.0.1"
    os.environ["MASTER_PORT"] = str(port)
    import torch
    import torch.distributed as dist

    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world,
                            timeout=timedelta(seconds=timeout))
    try:
        for c, case in enumerate(cases):
            try:
                loss_fn = case.make_loss()
            except Exception as error:  # noqa: BLE001 - reported per check
                for p in range(len(plans[c])):
                    results.put((rank, c, p, {"error": f"make_loss() raised {type(error).__name__}: {error}", "stage": "make_loss"}))
                continue
            for p, plan in enumerate(plans[c]):
                results.put((rank, c, p, _run_check(rank, loss_fn, plan)))
    finally:
        results.put(("done", rank))
        dist.destroy_process_group()


def _probe_model(d: int, ref):
    import torch

    class Probe(torch.nn.Module):
        """X = Z W^T + b with W = I, b = 0 at the start: the embeddings are the batch rows exactly."""

        def __init__(self):
            super().__init__()
            self.linear = torch.nn.Linear(d, d, dtype=torch.float64)
            with torch.no_grad():
                self.linear.weight.copy_(torch.eye(d, dtype=torch.float64))
                self.linear.bias.zero_()
            self.proxies = None if ref is None else torch.nn.Parameter(torch.from_numpy(np.array(ref, dtype=np.float64)))

        def forward(self, z):
            return self.linear(z)

    return Probe()


def _run_check(rank, loss_fn, plan: _Plan) -> dict:
    import torch
    from torch.nn.parallel import DistributedDataParallel

    lo, hi = plan.offsets[rank], plan.offsets[rank + 1]
    sharded = plan.ref_sizes is not None
    model = DistributedDataParallel(_probe_model(plan.embeddings.shape[1], None if sharded else plan.ref))
    z = torch.from_numpy(np.ascontiguousarray(plan.embeddings[lo:hi]))
    if sharded:  # the rank's second view goes through the same model, in the same forward
        rlo, rhi = plan.ref_offsets[rank], plan.ref_offsets[rank + 1]
        z = torch.cat([z, torch.from_numpy(np.ascontiguousarray(plan.ref[rlo:rhi]))])
    labels = torch.from_numpy(plan.labels[lo:hi])
    out = {"value": None, "emb_grad": None, "params": None, "error": None, "stage": None}
    try:
        both = model(z)
        X = both[: hi - lo]
        X.retain_grad()
        if sharded:
            extra = {"ref": both[hi - lo:], "ref_labels": torch.from_numpy(plan.ref_labels[rlo:rhi])}
        elif plan.ref is not None:
            extra = {"ref": model.module.proxies, "ref_labels": torch.from_numpy(np.asarray(plan.ref_labels))}
        else:
            extra = {}
        value = loss_fn(X, labels, **extra)
        out["value"] = float(torch.as_tensor(value).detach().reshape(()).item())
    except Exception as error:  # noqa: BLE001 - the candidate's own failure is the report
        out.update(error=f"{type(error).__name__}: {error}", stage="forward", trace=traceback.format_exc(limit=3))
        return out
    try:
        value.backward()
    except Exception as error:  # noqa: BLE001
        out.update(error=f"{type(error).__name__}: {error}", stage="backward")
        return out
    out["emb_grad"] = None if X.grad is None else X.grad.detach().numpy().copy()
    params = {}
    for name, param in model.module.named_parameters():
        params[name] = None if param.grad is None else param.grad.detach().numpy().copy()
    out["params"] = params
    return out


# ---------------------------------------------------------------------------------------------
# the reference and the diagnosis


def _rel(a, b, floor) -> float:
    return float(np.linalg.norm(np.ravel(a) - np.ravel(b)) / max(np.linalg.norm(np.ravel(b)), floor))


def _fit(h, g):
    """(c, residual): the scalar c minimising |h - c g| and that residual relative to |h| (or |g|)."""
    h, g = np.ravel(h), np.ravel(g)
    gg = float(g @ g)
    if gg == 0.0:
        return (0.0, 0.0 if not np.any(h) else 1.0)
    c = float(h @ g) / gg
    return c, float(np.linalg.norm(h - c * g) / max(np.linalg.norm(h), np.linalg.norm(c * g), 1e-300))


def _factor_name(c: float, world: int) -> str | None:
    for value, name in ((world, "W"), (1.0, "1"), (world * world, "W^2"), (1.0 / world, "1/W"), (0.0, "0")):
        if math.isclose(c, value, rel_tol=1e-6, abs_tol=1e-12):
            return name
    return None


def _local_ref(plan: _Plan, rank: int):
    """The reference set rank ``rank`` holds: all of it when replicated, its slice when sharded."""
    if plan.ref_sizes is None:
        return plan.ref, plan.ref_labels
    lo, hi = plan.ref_offsets[rank], plan.ref_offsets[rank + 1]
    return plan.ref[lo:hi], plan.ref_labels[lo:hi]


def _reference(case: DistributedCase, X, y, ref, ref_labels, **kwargs):
    import gpwref

    extra = {} if ref is None else {"ref": ref, "ref_labels": ref_labels}
    extra.update(kwargs)
    return gpwref.compute(case.loss, X, y, profile=case.profile, **extra, **dict(case.hyper))


def _judge(case, plan: _Plan, world: int, outcomes, fatal, rtol, atol) -> DistributedReport:
    X, y = plan.embeddings, plan.labels
    errors, causes = [], []
    try:
        ref = _reference(case, X, y, plan.ref, plan.ref_labels)
    except GpwrefError as error:
        ref = None
        causes.append(f"gpwref's reference refuses this global batch ({error}); the split is not judged")
    values = [None if o is None else o.get("value") for o in outcomes]
    for rank, outcome in enumerate(outcomes):
        if outcome is None:
            errors.append(f"rank {rank} reported nothing" + (f": {fatal}" if fatal else ""))
        elif outcome.get("error"):
            errors.append(f"rank {rank} {outcome['stage']}: {outcome['error']}")
    if ref is None:
        return DistributedReport(case.name, world, plan.name, plan.sizes, False, False, values, None, None, None, causes, errors)
    L = float(ref.loss)
    value_ok = all(v is not None and math.isclose(v, L, rel_tol=rtol, abs_tol=atol) for v in values)
    expected = {"linear.weight": ref.grad_emb.T @ X, "linear.bias": ref.grad_emb.sum(axis=0)}
    if plan.ref_sizes is not None:  # the second view came through the model too
        expected = {"linear.weight": expected["linear.weight"] + ref.grad_ref.T @ plan.ref,
                    "linear.bias": expected["linear.bias"] + ref.grad_ref.sum(axis=0)}
    elif plan.ref is not None:
        expected["proxies"] = ref.grad_ref
    got = _averaged(outcomes, expected)
    grad_ok, grad_err, grad_factor = False, None, None
    if got is not None:
        want = np.concatenate([np.ravel(expected[k]) for k in expected])
        have = np.concatenate([np.ravel(got[k]) for k in expected])
        floor = max(np.linalg.norm(want), 1.0) * 1e-300 + atol
        grad_err = _rel(have, want, floor)
        grad_factor = _fit(have, want)[0]
        grad_ok = grad_err <= rtol or np.linalg.norm(have - want) <= atol
    if not value_ok and all(v is not None for v in values):
        causes.extend(_value_causes(case, plan, world, values, L))
    if not grad_ok:
        causes.extend(_grad_causes(case, plan, world, outcomes, ref, grad_factor))
    return DistributedReport(case.name, world, plan.name, plan.sizes, value_ok, grad_ok, values, L, grad_err, grad_factor, causes, errors)


def _averaged(outcomes, expected):
    """The DDP-averaged parameter gradients (rank 0's, after checking every rank holds the same)."""
    if any(o is None or o.get("params") is None for o in outcomes):
        return None
    got = {}
    for key, want in expected.items():
        per_rank = [o["params"].get(key) for o in outcomes]
        got[key] = np.zeros_like(want) if per_rank[0] is None else per_rank[0]
    return got


def _value_causes(case, plan, world, values, L) -> list:
    causes = []
    if len({round(v, 12) for v in values}) > 1:
        causes.append("the ranks return different values: each rank's value is not the global loss "
                      "(a per-rank loss, or an order of the gathered rows that differs across ranks)")
    for c, name in ((world, "W"), (1.0 / world, "1/W")):
        if all(math.isclose(v, c * L, rel_tol=1e-6, abs_tol=1e-12) for v in values):
            causes.append(f"value factor {name}: every rank returns {name} x the global loss (W = {world}); "
                          + ("a loss multiplied by the world size to undo DDP's average" if name == "W" else "a loss divided by the world size"))
    local = []
    for rank in range(world):
        lo, hi = plan.offsets[rank], plan.offsets[rank + 1]
        try:
            local.append(float(_reference(case, plan.embeddings[lo:hi], plan.labels[lo:hi], *_local_ref(plan, rank)).loss))
        except GpwrefError:
            local.append(None)
    for c, name in ((1.0, ""), (world, "W x ")):
        if all(l is not None and math.isclose(v, c * l, rel_tol=1e-6, abs_tol=1e-12) for v, l in zip(values, local)):
            causes.append(f"each rank returns {name}the loss of its LOCAL batch only: nothing was gathered")
    doubled = []
    for rank in range(world):
        lo, hi = plan.offsets[rank], plan.offsets[rank + 1]
        try:
            doubled.append(float(_reference(case, np.concatenate([plan.embeddings[lo:hi], plan.embeddings]),
                                            np.concatenate([plan.labels[lo:hi], plan.labels]), plan.ref, plan.ref_labels).loss))
        except GpwrefError:
            doubled.append(None)
    for c, name in ((1.0, ""), (world, "W x ")):
        if all(l is not None and math.isclose(v, c * l, rel_tol=1e-6, abs_tol=1e-12) for v, l in zip(values, doubled)):
            causes.append(f"pairs counted twice: each rank returns {name}the loss of its local rows prepended to the gathered "
                          "batch, which holds them already (its own rows twice, their pairs with each other counted twice)")
    return causes


def _hypotheses(case, plan, world, rank, ref_result):
    """Named gradients rank ``rank``'s rows would receive under each known bug (None when n/a)."""
    X, y = plan.embeddings, plan.labels
    lo, hi = plan.offsets[rank], plan.offsets[rank + 1]
    rows = slice(lo, hi)
    out = []
    try:
        out.append(("local-batch", _reference(case, X[rows], y[rows], *_local_ref(plan, rank)).grad_emb))
    except GpwrefError:
        pass
    if plan.ref_sizes is not None:
        return out
    if plan.ref is None and case_supports_ref(case):
        try:  # the rank's anchors against the gathered batch as a reference set; its rows get both sides
            r = _reference(case, X[rows], y[rows], X, y, ref_self=np.arange(lo, hi))
            out.append(("own-anchors", r.grad_emb + r.grad_ref[rows]))
        except GpwrefError:
            pass
    try:  # the local rows prepended to the gathered batch, which holds them already
        Xd, yd = np.concatenate([X[rows], X]), np.concatenate([y[rows], y])
        r = _reference(case, Xd, yd, plan.ref, plan.ref_labels)
        m = hi - lo
        out.append(("counted-twice", r.grad_emb[:m]))  # the gathered copy detached
        out.append(("counted-twice", r.grad_emb[:m] + r.grad_emb[m + lo: m + hi]))  # both copies carry gradient
    except GpwrefError:
        pass
    return out


def case_supports_ref(case) -> bool:
    import gpwref

    return gpwref.get_entry(case.loss).supports_ref


def _grad_causes(case, plan, world, outcomes, ref, grad_factor) -> list:
    if any(o is None or o.get("stage") == "forward" for o in outcomes):
        return []
    if all(o.get("stage") == "backward" and "does not require grad" in (o.get("error") or "") for o in outcomes):
        return ["no gradient through the gather: the returned loss does not depend differentiably on the local embeddings "
                "(every gathered row, the rank's own included, is detached)"]
    if any(o.get("stage") == "backward" for o in outcomes):
        return ["the backward raised on some ranks (see the errors)"]
    g = ref.grad_emb
    causes, factors = [], []
    for rank, outcome in enumerate(outcomes):
        lo, hi = plan.offsets[rank], plan.offsets[rank + 1]
        h = outcome.get("emb_grad")
        if h is None or not np.any(h):
            if np.any(g[lo:hi]):
                factors.append("0")
            continue
        c, resid = _fit(h, g[lo:hi])
        if resid <= 1e-6:
            factors.append(_factor_name(c, world) or f"{c:.6g}")
            continue
        factors.append(None)
        causes.append(_explain_rank(case, plan, world, rank, h, g))
    names = set(factors)
    if names == {"0"}:
        causes.insert(0, "no gradient through the gather: the local embeddings receive a zero gradient")
    elif names == {"1"}:
        causes.insert(0, f"local-only gradient without reduction: each rank's rows receive only its own copy of dL/dX (1 x G_local, "
                         f"not W x), so DDP's average gives 1/W = 1/{world} of the single-process gradient. Either the gather "
                         "passes no gradient to the other ranks' copies (the local rows kept, the others detached) and the "
                         "world-size factor W is missing, or the gather's backward returns the local slice without summing over ranks")
    elif names == {"W^2"}:
        causes.insert(0, f"world-size factor applied twice: each rank's rows receive W^2 x dL/dX (W = {world}): a gather whose "
                         "backward already sums over ranks, times an extra W; DDP's average leaves W x the single-process gradient")
    elif names == {"W"}:
        if grad_factor is not None and not math.isclose(grad_factor, 1.0, rel_tol=1e-6):
            causes.insert(0, f"the embedding gradients are right (W x dL/dX_local) but the parameters' are off by {grad_factor:.6g}: "
                             "the loss is not what reaches the parameters (a reducer that sums instead of averaging?)")
    elif None not in names and len(names) > 1:
        causes.insert(0, f"the ranks' rows receive different multiples of dL/dX: {factors} (a per-rank normalisation, e.g. by the local batch size)")
    elif len(names) == 1 and None not in names:
        causes.insert(0, f"each rank's rows receive {factors[0]} x dL/dX_local (W = {world}): a constant factor {factors[0]}/W after DDP's average")
    return causes


def _explain_rank(case, plan, world, rank, h, g) -> str:
    lo, hi = plan.offsets[rank], plan.offsets[rank + 1]
    m = hi - lo
    # rows of the global gradient at other positions: the rank believes its rows sit elsewhere
    for c in (world, 1.0, world * world):
        dist = np.linalg.norm(h[:, None, :] - c * g[None, :, :], axis=2)  # m_local x m_global
        source = dist.argmin(axis=1)
        scale = max(np.linalg.norm(h), 1e-300)
        if np.all(dist[np.arange(m), source] <= 1e-6 * scale) and np.any(source != np.arange(lo, hi)):
            return (f"order mismatch across ranks: rank {rank}'s rows (global {lo}:{hi}) received the gradient (x {_factor_name(c, world)}) "
                    f"of global rows {source.tolist()}: the gathered order this rank assumes differs from the rank order")
    for name, hyp in _hypotheses(case, plan, world, rank, None):
        c, resid = _fit(h, hyp)
        if resid <= 1e-6 and abs(c) > 0:
            factor = _factor_name(c, world) or f"{c:.6g}"
            if name == "own-anchors":
                return (f"rank {rank} differentiates only its own anchors' terms (x {factor}): its rows get their gradient as anchors and "
                        "as the references of its own anchors, but not as the positives/negatives of other ranks' anchors "
                        "(the reference-side gradient is not reduced across ranks)")
            if name == "counted-twice":
                return (f"pairs counted twice on rank {rank} (x {factor}): its local rows sit in the batch its loss sees twice "
                        "(local rows prepended to a gathered batch that already holds them)")
            return f"rank {rank}'s gradient is that of its LOCAL batch's loss (x {factor}): nothing was gathered"
    c, resid = _fit(h, g[lo:hi])
    return (f"rank {rank}'s embedding gradient matches no known pattern: best multiple of dL/dX_local {c:.6g} leaves a relative "
            f"residual {resid:.3g}")
