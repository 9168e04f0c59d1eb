"""gpwref as an oracle inside other projects' tests: batch strategies (and, later, assertion helpers)."""

from .strategies import Batch, batches, make_batch

__all__ = ["Batch", "batches", "make_batch"]
