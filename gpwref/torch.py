"""The kernel losses as torch autograd functions and modules, so that they can train a network.

``loss(name, embeddings, labels, ...)`` and the modules (``MultiSimilarityLoss`` ...) run forward
and backward on gpwref's kernels: Numba CPU kernels for CPU tensors, Numba CUDA kernels for CUDA
tensors (passed through ``__cuda_array_interface__`` without a copy; the gradients come back the
same way). The forward computes the value and dL/dX in one go (the GPW weights give both); the
backward scales the stored dL/dX by the incoming gradient. float32 tensors run the float32 kernels,
float64 tensors the float64 ones; other dtypes are refused.

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

__all__ = ["loss", "KernelLoss", "MultiSimilarityLoss", "BinomialDevianceLoss", "ContrastiveLoss", "LiftedStructureLoss"]

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
