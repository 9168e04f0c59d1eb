"""The kernel losses as torch autograd functions and modules, so that they can train a network.

``loss(name, embeddings, labels, ...)`` and the modules (``MultiSimilarityLoss`` ...) run forward
and backward on gpwref's kernels: Numba CPU kernels for CPU tensors, Numba CUDA kernels for CUDA
tensors (passed through ``__cuda_array_interface__`` without a copy; the gradients come back the
same way). The forward computes the value and dL/dX in one go (the GPW weights give both); the
backward scales the stored dL/dX by the incoming gradient. float32 tensors run the float32 kernels,
float64 tensors the float64 ones; other dtypes are refused.

``GlobalBatchLoss`` computes a loss over the global batch of a torch.distributed process group
(all ranks' local batches gathered); ``docs/distributed.md`` states what it returns and moves.

Limits: the backward is not itself differentiable (no double backward); the labels, the mining and
the pair masks are constants, as everywhere in gpwref; with a CUDA tensor the loss value makes one
small device-to-host copy (the per-anchor values, summed on the host).
"""

from __future__ import annotations

import numpy as np
import torch
from torch.autograd.function import once_differentiable

from .catalog import get_entry, resolve_hyper
from .core import compute
from .errors import GpwrefError
from .kernels.backends import KERNEL_LOSSES
from .profiles import get_profile

__all__ = ["loss", "GlobalBatchLoss", "KernelLoss", "MultiSimilarityLoss", "BinomialDevianceLoss", "ContrastiveLoss", "LiftedStructureLoss"]

_DTYPES = {torch.float32: "float32", torch.float64: "float64"}


def loss(name: str, embeddings: torch.Tensor, labels, *, ref=None, ref_labels=None, ref_self=None,
         profile: str = "paper", normalize: bool = True, backend: str | None = None, **hyper) -> torch.Tensor:
    """The loss ``name`` of a batch as a differentiable scalar tensor (gradients to ``embeddings``
    and, when it requires grad, to ``ref``). ``backend=None`` picks "numba" for CPU tensors and
    "cuda" for CUDA tensors; "numpy" runs the float64/float32 reference instead (CPU only)."""
    config = _Config(name, profile, normalize, backend, hyper, embeddings)
    return _KernelLossFunction.apply(embeddings, ref, labels, ref_labels, ref_self, config)


class KernelLoss(torch.nn.Module):
    """A gpwref loss as a module: ``KernelLoss("multi_similarity", profile="pml", eps=0.1)``.

    Hyper-parameters are validated here, once; ``forward(embeddings, labels, ref=None,
    ref_labels=None, ref_self=None)`` returns the loss as a scalar tensor.
    """

    def __init__(self, name: str, *, profile: str = "paper", normalize: bool = True, backend: str | None = None, **hyper):
        super().__init__()
        entry = get_entry(name)
        prof = get_profile(profile)
        self.hyper = resolve_hyper(entry, prof.name, hyper)
        if entry.name not in KERNEL_LOSSES and backend != "numpy":
            raise GpwrefError("name", f"has no kernel; kernels exist for {list(KERNEL_LOSSES)} (or pass backend='numpy')", repr(name))
        self.name = entry.name
        self.profile = prof.name
        self.normalize = normalize
        self.backend = backend

    def forward(self, embeddings: torch.Tensor, labels, ref=None, ref_labels=None, ref_self=None) -> torch.Tensor:
        return loss(self.name, embeddings, labels, ref=ref, ref_labels=ref_labels, ref_self=ref_self,
                    profile=self.profile, normalize=self.normalize, backend=self.backend, **self.hyper)

    def extra_repr(self) -> str:
        hyper = ", ".join(f"{k}={v}" for k, v in self.hyper.items())
        return f"{self.name}, profile={self.profile}, {hyper}"


class MultiSimilarityLoss(KernelLoss):
    """The MS loss (Wang et al., CVPR 2019) on gpwref's kernels; see ``gpwref.losses.multi_similarity``."""

    def __init__(self, *, profile: str = "paper", normalize: bool = True, backend: str | None = None, **hyper):
        super().__init__("multi_similarity", profile=profile, normalize=normalize, backend=backend, **hyper)


class BinomialDevianceLoss(KernelLoss):
    """Binomial deviance (Yi et al. 2014, GPW form) on gpwref's kernels; see ``gpwref.losses.binomial_deviance``."""

    def __init__(self, *, profile: str = "paper", normalize: bool = True, backend: str | None = None, **hyper):
        super().__init__("binomial_deviance", profile=profile, normalize=normalize, backend=backend, **hyper)


class ContrastiveLoss(KernelLoss):
    """Contrastive loss (cosine or unit-sphere euclidean) on gpwref's kernels; see ``gpwref.losses.contrastive``."""

    def __init__(self, *, profile: str = "paper", normalize: bool = True, backend: str | None = None, **hyper):
        super().__init__("contrastive", profile=profile, normalize=normalize, backend=backend, **hyper)


class LiftedStructureLoss(KernelLoss):
    """The lifted structured loss (Song et al. 2016, ``form="song"``, or the generalised per-anchor
    form) on gpwref's kernels, batch only; see ``gpwref.losses.lifted_structure``."""

    def __init__(self, *, profile: str = "paper", normalize: bool = True, backend: str | None = None, **hyper):
        super().__init__("lifted_structure", profile=profile, normalize=normalize, backend=backend, **hyper)


class _Config:
    """What the autograd function needs besides tensors (kept out of ``apply``'s tensor arguments)."""

    def __init__(self, name, profile, normalize, backend, hyper, embeddings):
        if not isinstance(embeddings, torch.Tensor):
            raise GpwrefError("embeddings", "must be a torch tensor (use gpwref.compute for NumPy arrays)", type(embeddings).__name__)
        if embeddings.dtype not in _DTYPES:
            raise GpwrefError("embeddings", "must be a float32 or float64 tensor for the kernels", f"dtype {embeddings.dtype}")
        on_gpu = embeddings.device.type == "cuda"
        if backend is None:
            backend = "cuda" if on_gpu else "numba"
        if on_gpu and backend != "cuda":
            raise GpwrefError("backend", "a CUDA tensor needs backend='cuda' (or None)", repr(backend))
        if not on_gpu and backend == "cuda":
            raise GpwrefError("backend", "backend='cuda' needs CUDA tensors; move the embeddings with .cuda()", repr(backend))
        self.name = name
        self.profile = profile
        self.normalize = normalize
        self.backend = backend
        self.hyper = dict(hyper)
        self.dtype = _DTYPES[embeddings.dtype]
        self.device = embeddings.device


def _to_kernel(tensor, backend):
    """A tensor as the backend wants it: a NumPy view (CPU) or the tensor itself (CUDA, via CAI)."""
    if tensor is None:
        return None
    if not isinstance(tensor, torch.Tensor):
        return tensor
    tensor = tensor.detach()
    if backend == "cuda":
        return tensor.contiguous()
    return tensor.cpu().contiguous().numpy()


def _to_torch(array, like: torch.Tensor):
    if array is None:
        return None
    if isinstance(array, np.ndarray):
        return torch.from_numpy(array).to(device=like.device, dtype=like.dtype)
    return torch.as_tensor(array, device=like.device).to(dtype=like.dtype)  # device array via CAI


class _KernelLossFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx, embeddings, ref, labels, ref_labels, ref_self, config):
        backend = config.backend
        result = compute(
            config.name,
            _to_kernel(embeddings, backend),
            _to_kernel(labels, backend),
            ref=_to_kernel(ref, backend),
            ref_labels=_to_kernel(ref_labels, backend),
            ref_self=None if ref_self is None else _to_kernel(ref_self, "numba"),
            profile=config.profile,
            normalize=config.normalize,
            backend=backend,
            dtype=config.dtype,
            **config.hyper,
        )
        grad_emb = _to_torch(result.grad_emb, embeddings)
        grad_ref = _to_torch(result.grad_ref, embeddings) if ref is not None else None
        ctx.has_ref = ref is not None
        ctx.save_for_backward(grad_emb, grad_ref)
        return torch.tensor(result.loss, dtype=embeddings.dtype, device=embeddings.device)

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_output):
        grad_emb, grad_ref = ctx.saved_tensors
        d_emb = grad_output * grad_emb if ctx.needs_input_grad[0] else None
        d_ref = grad_output * grad_ref if (ctx.has_ref and ctx.needs_input_grad[1]) else None
        return d_emb, d_ref, None, None, None, None


# ---------------------------------------------------------------------------------------------
# the global batch of a torch.distributed process group (docs/distributed.md)

_DTYPE_CODES = {torch.float32: 0, torch.float64: 1}
_BACKENDS = (None, "numpy", "numba", "cuda")
_REDUCTIONS = ("mean", "sum")
_REF_SHARDING = ("replicated", "sharded")


def _distributed_group(group):
    """(world size, rank) of ``group`` in an initialised process group; (1, 0) without one."""
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()):
        return 1, 0
    return dist.get_world_size(group), dist.get_rank(group)


class GlobalBatchLoss(torch.nn.Module):
    """A catalog loss over the global batch of all ranks: ``loss_fn(local_embeddings, local_labels)``.

    Called on every rank of an initialised ``torch.distributed`` process group (gloo on CPU, NCCL on
    GPUs), it gathers every rank's rows (sizes first, then padded rows and labels, unpadded in rank
    order), computes the loss of the concatenated batch on every rank, and returns that value on
    every rank. The backward gives the local rows ``W * dL/dX_local`` (W: world size) and no
    gradient to other ranks' rows: after DDP averages the parameter gradients over the ranks, they
    equal single-process training on the concatenated batch. ``grad_reduction="sum"`` is for a
    reducer that sums instead (factor 1). Without an initialised process group it is the plain loss.

    ``backend``: None (the Numba/CUDA kernels for the losses that have them, else the float64 NumPy
    reference on the host), "numpy", "numba" (CPU tensors) or "cuda" (CUDA tensors).
    ``ref_sharding="replicated"`` (default): ``ref`` / ``ref_labels`` (proxies or a shared reference
    set) must be the same on every rank (checked); their gradient is the full dL/dref on every rank,
    which DDP's average leaves unchanged. ``"sharded"``: each rank passes its own reference rows (a
    second view of its items), gathered like the batch; their gradient is ``W * dL/dref_local``.
    ``ref_self`` (each local anchor's row in the local ``ref``, -1 for none) is gathered with the rows.
    """

    def __init__(self, loss: str, *, profile: str = "paper", backend: str | None = None, normalize: bool = True,
                 group=None, grad_reduction: str = "mean", ref_sharding: str = "replicated", **hyper):
        super().__init__()
        entry = get_entry(loss)
        prof = get_profile(profile)
        self.hyper = resolve_hyper(entry, prof.name, hyper)
        if backend not in _BACKENDS:
            raise GpwrefError("backend", f"must be one of {list(_BACKENDS)}", repr(backend))
        if backend in ("numba", "cuda") and entry.name not in KERNEL_LOSSES:
            raise GpwrefError("backend", f"'{backend}' has kernels for {list(KERNEL_LOSSES)} only; '{entry.name}' runs on backend='numpy' (or None)", repr(backend))
        if grad_reduction not in _REDUCTIONS:
            raise GpwrefError("grad_reduction", f"must be one of {list(_REDUCTIONS)} (how the ranks' parameter gradients are combined)", repr(grad_reduction))
        if ref_sharding not in _REF_SHARDING:
            raise GpwrefError("ref_sharding", f"must be one of {list(_REF_SHARDING)} (ref the same on every rank, or each rank's own rows)", repr(ref_sharding))
        if not isinstance(normalize, bool):
            raise GpwrefError("normalize", "must be True or False", repr(normalize))
        self.name = entry.name
        self.profile = prof.name
        self.backend = backend
        self.normalize = normalize
        self.group = group
        self.grad_reduction = grad_reduction
        self.ref_sharding = ref_sharding

    def forward(self, embeddings: torch.Tensor, labels, ref=None, ref_labels=None, ref_self=None) -> torch.Tensor:
        if not isinstance(embeddings, torch.Tensor):
            raise GpwrefError("embeddings", "must be a torch tensor", type(embeddings).__name__)
        if embeddings.dtype not in _DTYPE_CODES:
            raise GpwrefError("embeddings", "must be a float32 or float64 tensor", f"dtype {embeddings.dtype}")
        if embeddings.ndim != 2:
            raise GpwrefError("embeddings", "must be a 2-D tensor (rows are samples)", f"shape {tuple(embeddings.shape)}")
        if (ref is None) != (ref_labels is None):
            raise GpwrefError("ref_labels", "ref and ref_labels must be given together (or neither)")
        backend = self.backend
        if backend is None:
            backend = ("cuda" if embeddings.device.type == "cuda" else "numba") if self.name in KERNEL_LOSSES else "numpy"
        if backend == "cuda" and embeddings.device.type != "cuda":
            raise GpwrefError("backend", "backend='cuda' needs CUDA tensors", repr(backend))
        if backend == "numba" and embeddings.device.type == "cuda":
            raise GpwrefError("backend", "a CUDA tensor needs backend='cuda', 'numpy' or None", repr(backend))
        labels_t = torch.as_tensor(labels.detach() if isinstance(labels, torch.Tensor) else np.asarray(labels), device=embeddings.device)
        if labels_t.dtype.is_floating_point or labels_t.dtype.is_complex or labels_t.dtype == torch.bool:
            raise GpwrefError("labels", "must be integers", f"dtype {labels_t.dtype}")
        self_t = None if ref_self is None else torch.as_tensor(ref_self.detach() if isinstance(ref_self, torch.Tensor) else np.asarray(ref_self), device=embeddings.device)
        return _GlobalBatchFunction.apply(embeddings, ref, labels_t.to(torch.int64), ref_labels, self_t, self, backend)

    def extra_repr(self) -> str:
        hyper = ", ".join(f"{k}={v}" for k, v in self.hyper.items())
        return f"{self.name}, profile={self.profile}, backend={self.backend}, grad_reduction={self.grad_reduction}, ref_sharding={self.ref_sharding}, {hyper}"


def _all_gather(tensor: torch.Tensor, world: int, group) -> list:
    import torch.distributed as dist

    tensor = tensor.contiguous()  # all_gather needs dense buffers of one layout on every rank
    out = [torch.empty_like(tensor, memory_format=torch.contiguous_format) for _ in range(world)]
    dist.all_gather(out, tensor, group=group)
    return out


def _gather_rows(tensor: torch.Tensor, sizes: list, world: int, group) -> torch.Tensor:
    """Every rank's rows in rank order: padded to the largest local size, gathered, unpadded."""
    longest = max(sizes)
    padded = tensor.new_zeros((longest,) + tuple(tensor.shape[1:]))
    padded[: tensor.shape[0]] = tensor
    parts = _all_gather(padded, world, group)
    return torch.cat([part[:size] for part, size in zip(parts, sizes)])


def _fingerprint(ref: torch.Tensor, ref_labels) -> torch.Tensor:
    """Four numbers that differ between ranks when their reference sets do (sums, position-weighted sums)."""
    R = ref.detach().to(torch.float64).reshape(-1)
    y = torch.as_tensor(ref_labels.detach() if isinstance(ref_labels, torch.Tensor) else np.asarray(ref_labels), device=ref.device).to(torch.float64).reshape(-1)
    wr = torch.cos(torch.arange(R.numel(), device=ref.device, dtype=torch.float64))
    wy = torch.cos(torch.arange(y.numel(), device=ref.device, dtype=torch.float64))
    return torch.stack([R.sum(), (R * wr).sum(), y.sum(), (y * wy).sum()])


class _GlobalBatchFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx, embeddings, ref, labels, ref_labels, ref_self, module, backend):
        world, rank = _distributed_group(module.group)
        m, d = embeddings.shape
        X, y, own = embeddings.detach(), labels, ref_self
        R, yr = ref, ref_labels
        sharded = module.ref_sharding == "sharded" and ref is not None
        offset, ref_offset = 0, 0
        if world > 1:
            # per rank: rows, dimension, label count, ref rows (-1: none), ref_self given, dtype code, ref dimension
            header = torch.tensor([m, d, labels.numel() if labels.ndim == 1 else -1, -1 if ref is None else int(ref.shape[0]),
                                   int(ref_self is not None), _DTYPE_CODES[embeddings.dtype],
                                   -1 if ref is None or ref.ndim != 2 else int(ref.shape[1])], dtype=torch.int64, device=embeddings.device)
            headers = torch.stack(_all_gather(header, world, module.group)).cpu().tolist()
            _check_headers(headers, sharded)  # the same on every rank: all raise together, none waits
            sizes = [h[0] for h in headers]
            offset = sum(sizes[:rank])
            if sharded:
                ref_sizes = [h[3] for h in headers]
                ref_offset = sum(ref_sizes[:rank])
                yr_local = torch.as_tensor(ref_labels.detach() if isinstance(ref_labels, torch.Tensor) else np.asarray(ref_labels), device=embeddings.device)
                if yr_local.ndim != 1 or yr_local.numel() != ref.shape[0] or yr_local.dtype.is_floating_point:
                    raise GpwrefError("ref_labels", "must be 1-D integers, one per local reference row", f"shape {tuple(yr_local.shape)}, dtype {yr_local.dtype}")
                R = _gather_rows(ref.detach(), ref_sizes, world, module.group)
                yr = _gather_rows(yr_local.to(torch.int64), ref_sizes, world, module.group)
                if ref_self is not None:  # local reference rows -> rows of the gathered reference set
                    ref_self = torch.where(ref_self >= 0, ref_self + ref_offset, ref_self)
            elif ref is not None:
                prints = torch.stack(_all_gather(_fingerprint(ref, ref_labels), world, module.group))
                if not bool((prints == prints[0]).all()):
                    raise GpwrefError("ref", "must be the same on every rank (proxies or a shared reference set replicated by DDP); "
                                      "per-rank reference sets (a second view, a per-rank memory bank) are not gathered unless "
                                      "ref_sharding='sharded'", "ranks differ")
            X = _gather_rows(X, sizes, world, module.group)
            y = _gather_rows(labels, sizes, world, module.group)
            if ref_self is not None:
                own = _gather_rows(ref_self.to(torch.int64), sizes, world, module.group)
        work = "float32" if (backend != "numpy" and embeddings.dtype == torch.float32) else None
        result = compute(
            module.name, _to_kernel(X, backend), _to_kernel(y, backend),
            ref=_to_kernel(R, backend), ref_labels=_to_kernel(yr, backend),
            ref_self=None if own is None else _to_kernel(own, "numba"),
            profile=module.profile, normalize=module.normalize, backend=backend, dtype=work, **module.hyper,
        )
        factor = world if module.grad_reduction == "mean" else 1
        grad_emb = _to_torch(result.grad_emb, embeddings)[offset: offset + m] * factor
        grad_ref = None
        if sharded:
            grad_ref = _to_torch(result.grad_ref, ref)[ref_offset: ref_offset + ref.shape[0]] * factor
        elif ref is not None:
            grad_ref = _to_torch(result.grad_ref, ref) * (1.0 if module.grad_reduction == "mean" else 1.0 / world)
        ctx.has_ref = ref is not None
        ctx.save_for_backward(grad_emb, grad_ref)
        return torch.tensor(float(result.loss), dtype=embeddings.dtype, device=embeddings.device)

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_output):
        grad_emb, grad_ref = ctx.saved_tensors
        d_emb = grad_output * grad_emb if ctx.needs_input_grad[0] else None
        d_ref = grad_output * grad_ref if (ctx.has_ref and ctx.needs_input_grad[1]) else None
        return d_emb, d_ref, None, None, None, None, None


def _check_headers(headers: list, sharded: bool) -> None:
    """Refuse local batches that cannot form one global batch (every rank sees the same headers)."""
    for r, (m, d, n_labels, n_ref, has_self, code, ref_dim) in enumerate(headers):
        if n_labels != m:
            raise GpwrefError("labels", "must be 1-D with one label per local row on every rank", f"rank {r}: {n_labels} labels for {m} rows")
    if sharded and any(h[3] < 0 for h in headers):
        raise GpwrefError("ref", "with ref_sharding='sharded' every rank must pass its reference rows (0 rows allowed)", f"per rank: {[h[3] for h in headers]}")
    same_ref = () if sharded else ((3, "ref", "the same reference set (or none); per-rank reference sets (a second view, a per-rank "
                                               "memory bank) are not gathered unless ref_sharding='sharded'"),)
    for key, argument, rule in ((1, "embeddings", "the same dimension"), (5, "embeddings", "the same dtype"),
                                *same_ref, (4, "ref_self", "ref_self given (or not)"),
                                (6, "ref", "a 2-D reference set of one dimension (or none)")):
        values = [h[key] for h in headers]
        if len(set(values)) > 1:
            raise GpwrefError(argument, f"every rank must pass {rule}", f"per rank: {values}")
    if sum(h[0] for h in headers) == 0:
        raise GpwrefError("embeddings", "the global batch must have at least one row", "every rank passed 0 rows")
