"""The training loss as computed by gpwref, as a torch module, and its float64 cross-check.

Two paths; which one a loss takes is decided when the module is built and logged by the trainer:

* ``"gpwref.torch"``: the project's torch bridge ``gpwref.torch.loss`` (Numba CPU kernels for CPU
  tensors, Numba CUDA kernels for CUDA tensors, in the embeddings' dtype), for the losses that have
  kernels (``gpwref.kernels.backends.KERNEL_LOSSES``), whenever that module is importable;
* ``"reference"``: otherwise (no ``gpwref.torch``, or a loss without kernels), a small
  ``torch.autograd.Function`` whose forward calls ``gpwref.compute`` on a CPU float64 copy of the
  embeddings and whose backward returns ``grad_output * dL/d(embeddings)`` (``Result.grad_emb``),
  cast back to the embeddings' dtype and device.

Normalisation: the model's head already L2-normalises (as the official ``linear_norm`` head does),
so the loss receives unit rows and is called with ``normalize=False``; the gradient through the
normalisation is torch's (``F.normalize`` in the head). S = X X^T of the rows as given.

Cross-check (``crosscheck``), run on a sampled training batch every N iterations:

1. bridge vs reference: the loss value and the embedding gradient that training actually used
   against ``gpwref.compute`` in float64 on the same embeddings, and (kernel path) the kernels'
   used-pair masks and weights G against the float64 ones;
2. reference vs independent code: ``verification.harness.check_case`` on the same batch (torch
   autograd on the loss's independent torch formulation, the plain per-anchor loop, the real
   implementations of the profile -- for MS under ``official`` the transcription of the official
   per-anchor code -- the sign rule and the used-pair pattern), finite differences off.
"""

from __future__ import annotations

import importlib
import time

import numpy as np
import torch

import gpwref
from gpwref.catalog import get_entry, resolve_hyper


def _find_torch_bridge():
    """(loss function, kernel losses, description) when ``gpwref.torch`` offers ``loss(name, embeddings, labels, ...)``.

    The function must take ``(loss, embeddings, labels, *, profile, normalize, **hyper)`` and
    return a differentiable scalar tensor on the embeddings' device; it runs kernels for the
    losses in ``gpwref.kernels.backends.KERNEL_LOSSES`` (other losses take the reference path).
    """
    try:
        module = importlib.import_module("gpwref.torch")
        kernels = importlib.import_module("gpwref.kernels.backends")
    except ImportError as error:
        return None, (), f"gpwref.torch not importable ({error})"
    fn = getattr(module, "loss", None)
    if not callable(fn):
        return None, (), "gpwref.torch has no loss(name, embeddings, labels, ...) function"
    return fn, tuple(getattr(kernels, "KERNEL_LOSSES", ())), "gpwref.torch.loss"


_TORCH_BRIDGE, _KERNEL_LOSSES, _TORCH_BRIDGE_NOTE = _find_torch_bridge()
BRIDGE_PATH = "gpwref.torch" if _TORCH_BRIDGE is not None else "reference"
BRIDGE_NOTE = (
    f"gpwref.torch.loss (Numba CPU / Numba CUDA kernels, in the embeddings' dtype) for {list(_KERNEL_LOSSES)}; the reference autograd function otherwise"
    if _TORCH_BRIDGE is not None
    else f"reference autograd function (gpwref.compute, CPU float64); {_TORCH_BRIDGE_NOTE}"
)


def path_for(loss: str) -> str:
    """The path a loss takes by default: the kernel bridge when it has a kernel, else the reference."""
    return "gpwref.torch" if _TORCH_BRIDGE is not None and loss in _KERNEL_LOSSES else "reference"


class _ReferenceLoss(torch.autograd.Function):
    @staticmethod
    def forward(ctx, embeddings, labels, loss, profile, hyper, sink):
        X = embeddings.detach().to(device="cpu", dtype=torch.float64).numpy()
        result = gpwref.compute(loss, X, labels, profile=profile, normalize=False, **hyper)
        sink["result"] = result
        ctx.save_for_backward(torch.from_numpy(result.grad_emb).to(device=embeddings.device, dtype=embeddings.dtype))
        return embeddings.new_tensor(result.loss)

    @staticmethod
    def backward(ctx, grad_output):
        (grad_emb,) = ctx.saved_tensors
        return grad_output * grad_emb, None, None, None, None, None


class GpwrefLoss(torch.nn.Module):
    """``loss(embeddings, labels)`` -> scalar; hyper-parameters are checked when the module is built."""

    def __init__(self, loss: str = "multi_similarity", profile: str = "official", path: str | None = None, **hyper):
        super().__init__()
        entry = get_entry(loss)
        self.loss = entry.name
        self.profile = profile
        self.hyper = resolve_hyper(entry, profile, hyper)  # raises GpwrefError on a bad name or value
        self.path = path or path_for(self.loss)
        if self.path not in ("gpwref.torch", "reference"):
            raise gpwref.GpwrefError("path", "must be 'gpwref.torch' or 'reference'", repr(path))
        if self.path == "gpwref.torch" and path_for(self.loss) != "gpwref.torch":
            raise gpwref.GpwrefError("path", f"gpwref.torch cannot run '{self.loss}' here: {_TORCH_BRIDGE_NOTE}; kernels for {list(_KERNEL_LOSSES)}")
        self.last_result = None  # the reference path's gpwref Result of the last call
        self.seconds = 0.0  # wall time spent in forward calls

    def forward(self, embeddings: torch.Tensor, labels) -> torch.Tensor:
        start = time.perf_counter()
        y = labels.detach().cpu().numpy() if isinstance(labels, torch.Tensor) else np.asarray(labels)
        if self.path == "gpwref.torch":
            y_t = torch.as_tensor(y, device=embeddings.device)
            value = _TORCH_BRIDGE(self.loss, embeddings, y_t, profile=self.profile, normalize=False, **self.hyper)
        else:
            sink: dict = {}
            value = _ReferenceLoss.apply(embeddings, y, self.loss, self.profile, self.hyper, sink)
            self.last_result = sink["result"]
        self.seconds += time.perf_counter() - start
        return value

    def describe(self) -> str:
        hyper = ", ".join(f"{k}={v}" for k, v in self.hyper.items())
        where = "gpwref.torch.loss (kernels)" if self.path == "gpwref.torch" else "the reference autograd function (gpwref.compute, float64)"
        return f"{self.loss} (profile {self.profile}; {hyper}) via {where}"


def _host(array) -> np.ndarray:
    if isinstance(array, torch.Tensor):
        return array.detach().cpu().numpy()
    if hasattr(array, "copy_to_host"):
        return array.copy_to_host()
    return np.asarray(array)


def crosscheck(loss_module: GpwrefLoss, embeddings: torch.Tensor, labels, bridge_value: float, bridge_grad: np.ndarray | None, *, independent: bool = True) -> dict:
    """Compare what training used with gpwref in float64, and gpwref with independent code.

    ``embeddings``: the batch's (unit) embeddings exactly as the loss saw them (device and dtype);
    ``bridge_grad``: dL/d embeddings as training computed it (None if not captured). Errors are
    normwise relative (``verification.common.rel_err``). On the kernel path the kernels are run
    once more through ``gpwref.compute(backend=...)`` to compare their pairs and weights too.
    """
    from ..common import rel_err

    X = embeddings.detach().to(device="cpu", dtype=torch.float64).numpy()
    y = labels.detach().cpu().numpy() if isinstance(labels, torch.Tensor) else np.asarray(labels)
    start = time.perf_counter()
    ref = gpwref.compute(loss_module.loss, X, y, profile=loss_module.profile, normalize=False, **loss_module.hyper)
    report = {
        "path": loss_module.path,
        "loss_bridge": float(bridge_value),
        "loss_float64": float(ref.loss),
        "value_rel_err": rel_err(bridge_value, ref.loss, 1e-12),
        "grad_rel_err": None if bridge_grad is None else rel_err(bridge_grad, ref.grad_emb, 1e-12),
        "pos_pairs_used": int(ref.pos_used.sum()),
        "neg_pairs_used": int(ref.neg_used.sum()),
    }
    used = loss_module.last_result
    if loss_module.path == "gpwref.torch":
        on_gpu = embeddings.device.type == "cuda"
        backend = "cuda" if on_gpu else "numba"
        dtype = "float32" if embeddings.dtype == torch.float32 else None
        data = embeddings.detach() if on_gpu else embeddings.detach().cpu().numpy()
        lab = torch.as_tensor(y, device=embeddings.device) if on_gpu else y
        used = gpwref.compute(loss_module.loss, data, lab, profile=loss_module.profile, normalize=False, backend=backend, dtype=dtype, **loss_module.hyper)
    if used is not None:
        pos_used, neg_used, grad_sim = _host(used.pos_used), _host(used.neg_used), _host(used.grad_sim)
        report["pairs_differing"] = int(np.sum(pos_used != ref.pos_used) + np.sum(neg_used != ref.neg_used))
        report["weights_rel_err"] = rel_err(grad_sim.astype(np.float64), ref.grad_sim, 1e-12)
    if independent:
        report.update(_independent(loss_module, X, y))
    report["seconds"] = time.perf_counter() - start
    return report


def _independent(loss_module: GpwrefLoss, X: np.ndarray, y: np.ndarray) -> dict:
    """``verification.harness.check_case`` on this batch (no finite differences: too slow at m = 80)."""
    from gpwref.testing import Batch
    from ..harness import TOLERANCES, check_case

    overrides = {k: v for k, v in loss_module.hyper.items()}
    # The official MS rules recognise self pairs by value and need unit rows: renormalising unit
    # rows changes S by round-off only, so the check runs with normalize=True where that matters.
    batch = Batch(embeddings=X, labels=y, normalize=True, cases=("training batch",))
    try:
        case = check_case(loss_module.loss, loss_module.profile, overrides, batch, fd=False)
    except Exception as error:  # noqa: BLE001 - a missing refs module or similar is reported, not fatal
        return {"independent": f"not run: {type(error).__name__}: {error}"}
    return {
        "independent_errors": {k: float(v) for k, v in case.errors.items()},
        "independent_failures": case.failures(),
        "independent_skipped": dict(case.skipped),
        "independent_tolerances": {k: TOLERANCES[k.split(":")[0]] for k in case.errors},
    }
