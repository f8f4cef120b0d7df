"""Data-driven metrics (activations, gradients, BN scales) and the loss terms they ask for.

Each metric turns statistics from :mod:`purecompress.collect` (or parameters) into
:class:`~purecompress.Metric` records keyed by parameter name (``'conv1.weight'``), higher = more
important, ready for any allocator. Loss terms are pure functions a training loop adds to its loss.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

import torch
from torch import Tensor

from purecompress.metrics import _target_names, metric_by
from purecompress.records import Block, Metric, Metrics
from purecompress.selection import Plan
from purecompress.stats import ActivationStats, TaylorStats

__all__ = ["apoz", "bn_scale", "mean_activation", "slim_penalty", "taylor_fo"]


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

    >>> from purecompress.stats import batch_activation_stats
    >>> s = {'fc': batch_activation_stats(torch.tensor([[0., 1.], [0., 2.]]), -1)}
    >>> apoz(s, {'fc.weight': torch.zeros(2, 3)})['fc.weight'].score.flatten()
    tensor([0., 1.])
    """
    return _channel_metrics({m: 1 - s.zero_fraction() for m, s in stats.items()}, params, param)


def mean_activation(stats: Mapping[str, ActivationStats], params: Mapping[str, Tensor], *,
                    param: str = "weight") -> Metrics:
    """Mean activation per output channel (NNI's mean rank).

    >>> from purecompress.stats import batch_activation_stats
    >>> s = {'fc': batch_activation_stats(torch.tensor([[0., 1.], [0., 3.]]), -1)}
    >>> mean_activation(s, {'fc.weight': torch.zeros(2, 3)})['fc.weight'].score.flatten()
    tensor([0., 2.])
    """
    return _channel_metrics({m: s.mean() for m, s in stats.items()}, params, param)


def taylor_fo(stats: Mapping[str, TaylorStats], *, block: Block | None = None) -> Metrics:
    """First-order Taylor importance: the sum of ``(w * g)**2`` over each block and every step.

    Not averaged over steps (NNI's rule). Default block: output channel.

    >>> from purecompress.stats import TaylorStats
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
