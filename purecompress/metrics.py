"""Importance metrics over parameters: ``Params -> Metrics`` (higher = more important).

Each metric reduces every block of a target parameter to one score (see :class:`Block`); the
targets are the ``weight`` of each module in a :class:`~purecompress.Plan`, or any parameter
names given explicitly.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping

import torch
from torch import Tensor

from purecompress._pytree import is_traced
from purecompress.records import Block, Metric, Metrics, blocks_of
from purecompress.selection import Plan

__all__ = ["fpgm", "l1_norm", "l2_norm", "level", "lp_norm", "metric_by"]

Targets = Plan | Iterable[str]


def _target_names(params: Mapping[str, Tensor], targets: Targets) -> list[str]:
    names = list(targets.targets()) if isinstance(targets, Plan) else list(targets)
    missing = [n for n in names if n not in params]
    if missing:
        raise KeyError(f"targets not in params: {missing}")
    return names


def metric_by(
    params: Mapping[str, Tensor], targets: Targets, reduce: Callable[[Tensor], Tensor], *, block: Block
) -> Metrics:
    """Score each block of each target with ``reduce`` (``[*grid, block_numel] -> grid``).

    The building block of every norm-style metric; a new metric is one ``reduce`` function.
    """
    out = {}
    for name in _target_names(params, targets):
        t = params[name].detach()
        grid = block.grid(tuple(t.shape))
        out[name] = Metric(reduce(blocks_of(t, grid)).reshape(grid), tuple(t.shape))
    return out


def level(params: Mapping[str, Tensor], targets: Targets) -> Metrics:
    """``|w|`` per element (NNI's LevelPruner metric).

    >>> import torch
    >>> level({'w': torch.tensor([[-3., 1.]])}, ['w'])['w'].score
    tensor([[3., 1.]])
    """
    return {
        name: Metric(params[name].detach().abs(), tuple(params[name].shape))
        for name in _target_names(params, targets)
    }


def lp_norm(params: Mapping[str, Tensor], targets: Targets, *, p: float = 2.0,
            block: Block | None = None) -> Metrics:
    """The ``p``-norm of each block (default block: output channel, ``Block.channel()``)."""
    return metric_by(params, targets, lambda b: torch.linalg.vector_norm(b, ord=p, dim=-1),
                     block=block or Block.channel())


def l1_norm(params: Mapping[str, Tensor], targets: Targets, *, block: Block | None = None) -> Metrics:
    """L1 norm per block; default per output channel (NNI's L1NormPruner).

    >>> import torch
    >>> w = torch.arange(5.).view(5, 1, 1, 1).expand(5, 1, 5, 5)
    >>> l1_norm({'w': w}, ['w'])['w'].score.flatten()
    tensor([  0.,  25.,  50.,  75., 100.])
    """
    return lp_norm(params, targets, p=1.0, block=block)


def l2_norm(params: Mapping[str, Tensor], targets: Targets, *, block: Block | None = None) -> Metrics:
    """L2 norm per block; default per output channel (NNI's L2NormPruner)."""
    return lp_norm(params, targets, p=2.0, block=block)


def _distance_sums(blocks: Tensor, p: float) -> Tensor:
    flat = blocks.reshape(-1, blocks.shape[-1])
    if p != 2.0 or not flat.is_floating_point() or is_traced(flat):
        return torch.cdist(flat[None], flat[None], p=p)[0].sum(-1).reshape(blocks.shape[:-1])
    # Euclidean distances from one Gram matrix: a BLAS matmul instead of n^2 row differences.
    # Centering first (distances are translation invariant) keeps the cancellation in
    # |a|^2 + |b|^2 - 2ab small; pairs that are close relative to their norms (duplicated
    # filters, the very thing FPGM looks for) are recomputed exactly from their difference.
    x = flat - flat.mean(0)
    sq = (x * x).sum(-1)
    norms = sq[:, None] + sq[None, :]
    d2 = (norms - 2.0 * (x @ x.T)).clamp(min=0.0)
    near = (d2 < 1e-2 * norms) & ~torch.eye(len(x), dtype=torch.bool, device=x.device)
    i, j = near.nonzero(as_tuple=True)
    d2[i, j] = (x[i] - x[j]).square().sum(-1)
    d2.fill_diagonal_(0.0)
    return d2.sqrt().sum(-1).reshape(blocks.shape[:-1])



def fpgm(params: Mapping[str, Tensor], targets: Targets, *, p: float = 2.0,
         block: Block | None = None) -> Metrics:
    """Geometric-median metric (He et al., FPGM): each block's summed distance to all others.

    Vectorised with one pairwise-distance call per target (NNI loops over filters in Python).
    Blocks near the geometric median score low and are pruned first.

    >>> import torch
    >>> fpgm({'w': torch.tensor([[1., 2.], [4., 6.]])}, ['w'])['w'].score.flatten()
    tensor([5., 5.])
    """
    return metric_by(params, targets, lambda b: _distance_sums(b, p), block=block or Block.channel())
