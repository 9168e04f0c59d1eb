"""Real and hand-written distributed losses for the oracle's tests (module level: picklable for spawn).

* pytorch-metric-learning's ``DistributedLossWrapper`` around its MS and contrastive losses;
* ``NoGradGather``: ``torch.distributed.all_gather`` then ``torch.cat``: no gradient at all;
* ``KeepLocalGather``: the same with the rank's own slot replaced by its grad-carrying rows (the
  usual fix), and no world-size factor;
* ``OpenClipGather``: ``torch.distributed.nn.functional.all_gather`` (its backward sums the ranks'
  gradients), the loss of the whole gathered batch on every rank, optionally times W (the extra
  factor of open_clip #616);
* ``CountedTwice``: [own rows, every rank's gathered rows] -- its own rows twice -- times W (the
  wrapper before the rank's own slot was dropped from the gather);
* ``RankFirstOrder``: gathers [own rows, other ranks' rows] (pytorch-metric-learning's order) but
  takes its rows' gradient from the rank-order position: an order that differs across ranks.
Every hand-written one pads to the largest local size, so uneven splits work.
"""

from __future__ import annotations

import torch
import torch.distributed as dist

import gpwref
import gpwref.torch as gtorch


def pml_wrapper(loss: str, efficient: bool):
    from pytorch_metric_learning import losses
    from pytorch_metric_learning.utils.distributed import DistributedLossWrapper

    inner = {"multi_similarity": losses.MultiSimilarityLoss, "contrastive": losses.ContrastiveLoss}[loss]()
    return DistributedLossWrapper(inner, efficient=efficient)


def _sizes(x):
    world = dist.get_world_size()
    size = torch.tensor([x.shape[0]], dtype=torch.int64)
    sizes = [torch.zeros_like(size) for _ in range(world)]
    dist.all_gather(sizes, size)
    return [int(s) for s in sizes]


def _pad(x, longest):
    out = x.new_zeros((longest,) + tuple(x.shape[1:]))
    out[: x.shape[0]] = x
    return out


def _plain_gather(x, sizes):
    parts = [torch.empty_like(_pad(x, max(sizes))) for _ in sizes]
    dist.all_gather(parts, _pad(x, max(sizes)).contiguous())
    return [part[:s] for part, s in zip(parts, sizes)]


class NoGradGather(torch.nn.Module):
    def __init__(self, loss: str, profile: str = "paper"):
        super().__init__()
        self.loss, self.profile = loss, profile

    def gathered(self, x, sizes):
        return _plain_gather(x.detach(), sizes)

    def forward(self, x, labels):
        sizes = _sizes(x)
        X = torch.cat(self.gathered(x, sizes))
        y = torch.cat(_plain_gather(labels, sizes))
        return gtorch.loss(self.loss, X, y, profile=self.profile, backend="numpy")


class KeepLocalGather(NoGradGather):
    def gathered(self, x, sizes):
        parts = _plain_gather(x.detach(), sizes)
        parts[dist.get_rank()] = x
        return parts


class OpenClipGather(NoGradGather):
    def __init__(self, loss: str, profile: str = "paper", times_world: bool = False):
        super().__init__(loss, profile)
        self.times_world = times_world

    def gathered(self, x, sizes):
        from torch.distributed.nn.functional import all_gather

        parts = all_gather(_pad(x, max(sizes)))
        return [part[:s] for part, s in zip(parts, sizes)]

    def forward(self, x, labels):
        value = super().forward(x, labels)
        return value * dist.get_world_size() if self.times_world else value


class _RankFirst(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, labels, loss, profile):
        sizes, rank = _sizes(x), dist.get_rank()
        parts, ys = _plain_gather(x.detach(), sizes), _plain_gather(labels, sizes)
        order = [rank] + [r for r in range(len(sizes)) if r != rank]
        X = torch.cat([parts[r] for r in order]).numpy()
        y = torch.cat([ys[r] for r in order]).numpy()
        result = gpwref.compute(loss, X, y, profile=profile)
        start = sum(sizes[:rank])  # BUG: the rank's rows sit at 0 in its own order, not at its rank offset
        ctx.save_for_backward(torch.from_numpy(result.grad_emb[start: start + x.shape[0]] * len(sizes)))
        return x.new_tensor(result.loss)

    @staticmethod
    def backward(ctx, grad_output):
        (grad,) = ctx.saved_tensors
        return grad_output * grad, None, None, None


class RankFirstOrder(NoGradGather):
    def forward(self, x, labels):
        return _RankFirst.apply(x, labels, self.loss, self.profile)


class PerRankRef(torch.nn.Module):
    """GlobalBatchLoss of a two-view loss (m3g, ...) given each rank's own second view as ``ref``
    with the default ref_sharding="replicated": refused."""

    def __init__(self, loss: str = "m3g"):
        super().__init__()
        self.inner = gtorch.GlobalBatchLoss(loss)

    def forward(self, x, labels):
        second_view = x.detach() + 0.01 * (1 + dist.get_rank())
        return self.inner(x, labels, ref=second_view, ref_labels=labels)


class CountedTwice(NoGradGather):
    def gathered(self, x, sizes):
        return [x, *_plain_gather(x.detach(), sizes)]

    def forward(self, x, labels):
        sizes = _sizes(x)
        X = torch.cat(self.gathered(x, sizes))
        y = torch.cat([labels, *_plain_gather(labels, sizes)])
        return gtorch.loss(self.loss, X, y, profile=self.profile, backend="numpy") * dist.get_world_size()
