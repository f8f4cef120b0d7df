"""Importance metrics over parameters: ``Params -> Metrics`` (higher = more important).

Each metric reduces every block of a target parameter to one score (see :class:`Block`); the
targets are the ``weight`` of each module in a :class:`~purecompress.Plan`, or any parameter
names given explicitly.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Mapping

import torch
from torch import Tensor

from purecompress._pytree import is_traced
from purecompress.pruning._records import Block, Metric, Metrics, blocks_of
from purecompress.pruning._stats import ActivationStats, TaylorStats
from purecompress.selectors import Plan

__all__ = [
    "apoz",
    "bn_scale",
    "fpgm",
    "l1_norm",
    "l2_norm",
    "level",
    "lp_norm",
    "mean_activation",
    "metric_by",
    "slim_penalty",
    "taylor_fo",
]


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
        if not t.is_floating_point():
            raise TypeError(f"{name!r} is a {t.dtype} tensor: metrics need floating-point weights "
                            f"(pass params[{name!r}].float())")
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
    sums = _raw_distance_sums(blocks, p)
    if is_traced(sums) or bool(torch.isfinite(sums).all()) or not bool(torch.isfinite(blocks).all()):
        return sums
    # Finite weights near the dtype's max overflow the Gram matrix (inf - inf = NaN): score the
    # weights divided by a power of two instead (exact, and the order of the scores is the metric).
    top = blocks.abs().amax().float()
    return _raw_distance_sums(blocks * 2.0 ** -(int(torch.frexp(top).exponent) + 8), p)


def _raw_distance_sums(blocks: Tensor, p: float) -> Tensor:
    flat = blocks.reshape(-1, blocks.shape[-1])
    if p != 2.0 or not flat.is_floating_point() or is_traced(flat):
        return torch.cdist(flat[None], flat[None], p=p)[0].sum(-1).reshape(blocks.shape[:-1])
    ones = torch.ones(len(flat), dtype=flat.dtype, device=flat.device)
    probe = flat @ torch.linspace(1.0, 2.0, flat.shape[-1], dtype=flat.dtype, device=flat.device)
    if torch.unique(probe).numel() == len(flat):  # no two blocks alike (the usual case)
        return _euclidean_sums(flat, ones).reshape(blocks.shape[:-1])
    # Identical blocks (e.g. filters already pruned to zero) are exactly 0 apart: work on the
    # distinct ones, each weighted by how often it occurs.
    distinct, inverse, counts = torch.unique(flat, dim=0, return_inverse=True, return_counts=True)
    return _euclidean_sums(distinct, counts.to(flat.dtype))[inverse].reshape(blocks.shape[:-1])



def _euclidean_sums(x: Tensor, weight: Tensor) -> Tensor:
    """``sum_j weight_j |x_i - x_j|`` for distinct rows ``x``, from one float32 Gram matrix (a BLAS
    matmul instead of NNI's n^2 row differences), summed in float64.

    Centering (distances are translation invariant) keeps the cancellation in |a|^2 + |b|^2 - 2ab
    small, and float64 accumulation the summing error: sums are good to about 5e-8 relative, closer
    to exact than NNI's own float32 loop (about 1e-7). Rows with a near neighbour, where the
    cancellation is not small, are redone in float64 from explicit differences.
    """
    xc = x - x.mean(0)
    sq = (xc * xc).sum(-1)
    d2 = torch.addmm(sq[:, None] + sq[None, :], xc, xc.T, alpha=-2.0).clamp_(min=0.0)
    # Rows with a neighbour closer than 10% of the larger norms (a superset of the pairs where
    # cancellation is not small), from one row-wise minimum.
    near = d2.fill_diagonal_(math.inf).amin(1) < 1e-2 * (sq + sq.max())
    d = d2.fill_diagonal_(0.0).sqrt_()
    unweighted = bool((weight == 1).all())
    sums = d.sum(1, dtype=torch.float64) if unweighted else (d * weight).sum(1, dtype=torch.float64)
    rows = near.nonzero().flatten()
    if rows.numel():
        x64, w64 = xc.double(), weight.double()
        for chunk in rows.split(256):
            exact = torch.cdist(x64[chunk], x64, compute_mode="donot_use_mm_for_euclid_dist")
            sums[chunk] = exact @ w64
    return sums.to(x.dtype)



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



def _channel_metrics(values: Mapping[str, Tensor], params: Mapping[str, Tensor], param: str) -> Metrics:
    out = {}
    for module, score in values.items():
        name = f"{module}.{param}" if module else param
        if name not in params:
            raise KeyError(f"statistics for {module!r} but no parameter {name!r} in params")
        shape = tuple(params[name].shape)
        if shape[0] != score.shape[0]:
            raise ValueError(f"{name!r} has {shape[0]} output channels, its statistics {score.shape[0]}")
        out[name] = Metric(score.float().reshape((-1,) + (1,) * (len(shape) - 1)), shape)
    return out



def apoz(stats: Mapping[str, ActivationStats], params: Mapping[str, Tensor], *, param: str = "weight") -> Metrics:
    """``1 - APoZ`` per output channel: the fraction of non-zero activations (NNI's APoZ rank).

    Args:
        stats: ``{module name: ActivationStats}`` from :func:`~purecompress.collect_activations`.
        params: the model's params (for each ``'<module>.weight'`` shape).
        param: which parameter of each module the channel metric is for.

    >>> from purecompress import batch_activation_stats
    >>> s = {'fc': batch_activation_stats(torch.tensor([[0., 1.], [0., 2.]]), -1)}
    >>> apoz(s, {'fc.weight': torch.zeros(2, 3)})['fc.weight'].score.flatten()
    tensor([0., 1.])
    """
    return _channel_metrics({m: 1 - s.zero_fraction() for m, s in stats.items()}, params, param)



def mean_activation(stats: Mapping[str, ActivationStats], params: Mapping[str, Tensor], *,
                    param: str = "weight") -> Metrics:
    """Mean activation per output channel (NNI's mean rank).

    >>> from purecompress import batch_activation_stats
    >>> s = {'fc': batch_activation_stats(torch.tensor([[0., 1.], [0., 3.]]), -1)}
    >>> mean_activation(s, {'fc.weight': torch.zeros(2, 3)})['fc.weight'].score.flatten()
    tensor([0., 2.])
    """
    return _channel_metrics({m: s.mean() for m, s in stats.items()}, params, param)



def taylor_fo(stats: Mapping[str, TaylorStats], *, block: Block | None = None) -> Metrics:
    """First-order Taylor importance: the sum of ``(w * g)**2`` over each block and every step.

    Not averaged over steps (NNI's rule). Default block: output channel.

    >>> from purecompress import TaylorStats
    >>> taylor_fo({'w': TaylorStats(torch.tensor([[1., 2.], [0., 1.]]), 1)})['w'].score.flatten()
    tensor([3., 1.])
    """
    scores = {name: s.score for name, s in stats.items()}
    return metric_by(scores, list(scores), lambda b: b.abs().sum(-1), block=block or Block.channel())



def bn_scale(params: Mapping[str, Tensor], targets: Plan | Iterable[str]) -> Metrics:
    """``|gamma|`` of each BatchNorm channel (Network Slimming; NNI's SlimPruner metric).

    Args:
        params: the params after training with :func:`slim_penalty` added to the loss.
        targets: a Plan over BatchNorm layers, or their weight names (``'bn1.weight'``).

    >>> bn_scale({'bn.weight': torch.tensor([-2., 0.5])}, ['bn.weight'])['bn.weight'].score
    tensor([2.0000, 0.5000])
    """
    return {name: Metric(params[name].detach().abs(), tuple(params[name].shape))
            for name in _target_names(params, targets)}



def slim_penalty(params: Mapping[str, Tensor], targets: Plan | Iterable[str], scale: float = 1e-4) -> Tensor:
    """``scale * sum |gamma|`` over the target BatchNorm weights: the loss term Slim adds.

    Differentiable in ``params``; add it to the task loss while training.

    >>> slim_penalty({'bn.weight': torch.tensor([-2., 1.])}, ['bn.weight'], scale=0.5)
    tensor(1.5000)
    """
    names = _target_names(params, targets)
    if not names:
        return torch.zeros(())
    return scale * torch.stack([params[n].abs().sum() for n in names]).sum()



def slim_penalty_grad(params: Mapping[str, Tensor], targets: Plan | Iterable[str], scale: float = 1e-4
                      ) -> dict[str, Tensor]:
    """The gradient of :func:`slim_penalty`, ``scale * sign(gamma)`` per target, for loops that add
    it to the gradients instead of the loss (NNI 1.x's SlimPruner does).

    >>> slim_penalty_grad({'bn.weight': torch.tensor([-2., 0., 1.])}, ['bn.weight'], scale=0.5)['bn.weight']
    tensor([-0.5000,  0.0000,  0.5000])
    """
    return {n: scale * torch.sign(params[n].detach()) for n in _target_names(params, targets)}
