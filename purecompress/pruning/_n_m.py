"""N:M sparsity: keep the ``n`` largest of every ``m`` consecutive weights along the input dim.

N:M is a sparsity *type*, like unstructured or channel pruning, so it is an allocator over the
core's records: ``Metrics -> Masks``. Groups are not rectangular blocks of the block grid (each
group keeps a different subset), so the masks it returns are at element granularity: ``keep`` has
the parameter's full shape. Groups run along the input dim: for a ``[out, in]`` Linear weight,
entries ``[o, g*m : (g+1)*m]`` form group ``g`` of row ``o`` (NVIDIA's 2:4 layout); higher-rank
weights (convs) are grouped along their flattened trailing dims ``[out, in * kh * kw]``.

Ties keep the lower index and NaN scores count as least important (:func:`purecompress.keep_top`),
so every group keeps exactly ``n`` and results are deterministic.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Iterable, Mapping

import torch
from torch import Tensor

from purecompress.pruning._allocators import keep_top, kept_count
from purecompress.pruning._gradual import GradualState
from purecompress.pruning._metrics import level
from purecompress.pruning._params import apply_masks
from purecompress.pruning._records import Mask, Masks, Metrics
from purecompress.selectors import ConfigError
from purecompress.transform import Params, Transform

__all__ = [
    "allocate_n_m",
    "gradual_n_m",
    "n_m_keep",
    "n_m_sparsity",
    "parse_n_m",
]

_SPEC = re.compile(r"^\s*(\d+)\s*:\s*(\d+)\s*$")


def parse_n_m(spec: object, *, key: str = "sparse_pattern", index: int | None = None) -> tuple[int, int]:
    """Validate an N:M spec: ``'2:4'``, ``(2, 4)`` or ``[2, 4]`` -> ``(2, 4)``.

    Args:
        spec: the config value.
        key: the config key, named in the error.
        index: the config entry's index, named in the error.

    Raises:
        purecompress.ConfigError: unless ``spec`` is two ints with ``0 < n < m``.

    >>> parse_n_m('2:4'), parse_n_m((4, 8))
    ((2, 4), (4, 8))
    >>> parse_n_m('4:2', index=0)
    Traceback (most recent call last):
    ...
    purecompress.selectors.ConfigError: config_list[0]['sparse_pattern']: N:M needs 0 < N < M, got '4:2'
    """
    if isinstance(spec, str):
        match = _SPEC.match(spec)
        if match is None:
            raise ConfigError(index, key, f"must be 'N:M' (e.g. '2:4'), got {spec!r}")
        n, m = int(match.group(1)), int(match.group(2))
    elif (isinstance(spec, (tuple, list)) and len(spec) == 2
          and all(isinstance(v, int) and not isinstance(v, bool) for v in spec)):
        n, m = spec
    else:
        raise ConfigError(index, key, f"must be 'N:M' (e.g. '2:4') or a pair of ints, got {spec!r}")
    if not 0 < n < m:
        raise ConfigError(index, key, f"N:M needs 0 < N < M, got {spec!r}")
    return n, m


def n_m_sparsity(n: int, m: int) -> float:
    """The fraction N:M prunes, ``1 - n / m``.

    >>> n_m_sparsity(2, 4)
    0.5
    """
    _check(n, m)
    return 1.0 - n / m


def _check(n: int, m: int) -> None:
    if isinstance(n, bool) or isinstance(m, bool) or not isinstance(n, int) or not isinstance(m, int):
        raise TypeError(f"N:M needs ints, got {n!r}:{m!r}")
    if not 0 < n <= m:
        raise ValueError(f"N:M needs 0 < N <= M, got {n}:{m}")


def n_m_keep(score: Tensor, n: int, m: int) -> Tensor:
    """Bool mask keeping the ``n`` largest scores of every ``m`` consecutive along the input dim.

    Args:
        score: ``[out, in, ...]`` (rank >= 2); ``in * prod(...)`` must be a multiple of ``m``.
        n: entries kept per group, ``0 < n <= m``.
        m: group size.

    Returns:
        Bool tensor of ``score``'s shape with exactly ``n`` True per group.

    >>> n_m_keep(torch.tensor([[1., 4., 2., 3., 0., 0., 0., 5.]]), 2, 4)
    tensor([[False,  True, False,  True,  True, False, False,  True]])
    """
    _check(n, m)
    if score.dim() < 2:
        raise ValueError(f"N:M groups run along the input dim of a weight of rank >= 2, got shape {tuple(score.shape)}")
    width = math.prod(score.shape[1:])
    if width % m:
        raise ValueError(f"N:M with M={m} needs the input dim ({width} for shape {tuple(score.shape)}) "
                         f"to be a multiple of {m}")
    groups = score.reshape(score.shape[0], width // m, m)
    if m > _PAIRWISE_MAX_M:
        return keep_top(groups, n, -1).reshape(score.shape)
    return _keep_top_pairwise(groups, n).reshape(score.shape)


#: Up to this group size, :func:`n_m_keep` ranks by pairwise comparison (m * (m - 1) elementwise
#: passes, each over 1/m of the weight): 2:4 on a 4096x4096 weight in about twice the time of one
#: pass over it, against 12x for a ``kthvalue`` over the 4-element groups.
_PAIRWISE_MAX_M = 8


def _keep_top_pairwise(groups: Tensor, n: int) -> Tensor:
    """:func:`keep_top` over the last dim of ``groups`` (small): the rank of each entry is the number
    of entries above it plus the equal ones at lower indices, so ties keep the lower index and NaN
    counts as the smallest value, as :func:`keep_top` does."""
    score = torch.nan_to_num(groups.to(torch.promote_types(groups.dtype, torch.float32)), nan=-math.inf)
    cols = score.unbind(-1)
    ranks = []
    for i, col in enumerate(cols):
        rank = torch.zeros(col.shape, dtype=torch.int8, device=col.device)
        for j, other in enumerate(cols):
            if j != i:
                rank = rank + ((other >= col) if j < i else (other > col))
        ranks.append(rank)
    return torch.stack(ranks, -1) < n


def allocate_n_m(metrics: Metrics, n: int | Mapping[str, int], m: int, *,
                 prior: Masks | None = None) -> Masks:
    """Keep the ``n`` highest-scoring of every ``m`` consecutive weights along the input dim.

    Args:
        metrics: name -> :class:`~purecompress.Metric` at element granularity (score of the
            parameter's shape), e.g. from :func:`purecompress.level` or a Wanda metric.
        n: kept per group, one for all or name -> kept (a gradual schedule lowers it to the final N).
        m: group size (the parameter's input dim must be a multiple of it).
        prior: masks already applied (continuous masking): their pruned entries score lowest and
            stay pruned, so a group the prior pruned harder keeps fewer than ``n``.

    Returns:
        name -> :class:`~purecompress.Mask` whose ``keep`` has the parameter's full shape.

    >>> import purecompress as pc
    >>> w = {'w': pc.Metric(torch.tensor([[1., 4., 2., 3.], [4., 3., 2., 1.]]), (2, 4))}
    >>> allocate_n_m(w, 2, 4)['w'].keep
    tensor([[False,  True, False,  True],
            [ True,  True, False, False]])
    """
    masks = {}
    for name, metric in metrics.items():
        if tuple(metric.score.shape) != tuple(metric.shape):
            raise ValueError(f"N:M needs an element-granularity metric; {name!r} has scores of shape "
                             f"{tuple(metric.score.shape)} for a parameter of shape {metric.shape}")
        # NaN stays: the selection ranks it lowest itself (one full-size copy fewer); a prior's
        # pruned entries go to -inf, which ties with NaN exactly as NaN -> -inf would
        score = metric.score.to(torch.promote_types(metric.score.dtype, torch.float32))
        previous = prior.get(name) if prior else None
        if previous is not None:
            score = score.masked_fill(~previous.broadcastable().expand(metric.shape), -math.inf)
        keep = n_m_keep(score, n[name] if isinstance(n, Mapping) else n, m)
        mask = Mask(keep, metric.shape)
        masks[name] = mask if previous is None else mask & previous
    return masks


Schedule = Callable[[int], float]
MetricFn = Callable[[Mapping[str, Tensor], Iterable[str]], Metrics]


def gradual_n_m(schedule: Schedule, targets: Iterable[str], *, n: int, m: int,
                metric: MetricFn = level) -> Transform:
    """Reach N:M gradually: at ``step`` each group keeps ``max(n, kept_count(m, schedule(step)))``.

    The schedule gives a sparsity (e.g. :func:`purecompress.agp_schedule` with ``final=1 - n/m``);
    values past ``1 - n/m`` keep ``n``. Masks are recomputed whenever the kept count per group
    drops, with the current masks as prior, so a pruned weight never comes back and the last
    masks are exact N:M.

    Args:
        schedule: ``step -> sparsity``.
        targets: parameter names (weights of rank >= 2).
        n: final kept per group.
        m: group size.
        metric: ``(params, targets) -> Metrics`` at element granularity (default ``|w|``).

    Returns:
        A :class:`~purecompress.Transform` with :class:`~purecompress.GradualState` (``sparsity``
        is the N:M sparsity reached, ``1 - kept / m``).

    >>> prune = gradual_n_m(lambda t: 0.25 * t, ['w'], n=1, m=4)
    >>> params = {'w': torch.arange(1., 9.).reshape(2, 4)}
    >>> state = prune.init(params)
    >>> for _ in range(4):
    ...     out, state = prune.update(params, state)
    >>> out['w'], state.sparsity
    (tensor([[0., 0., 0., 4.],
            [0., 0., 0., 8.]]), 0.75)
    """
    _check(n, m)
    names = list(targets)

    def init(params: Params, *, step: int = 0) -> GradualState:
        del params
        return GradualState(masks={}, step=step, sparsity=0.0)

    def update(params: Params, state: GradualState, *, step: int | None = None,
               metrics: Metrics | None = None) -> tuple[Params, GradualState]:
        step = state.step if step is None else step
        kept = max(n, int(kept_count(m, min(max(schedule(step), 0.0), 1.0))))  # a float schedule: a Python int
        masks, sparsity = state.masks, float(state.sparsity)
        if kept < m and 1.0 - kept / m > sparsity:
            scores = metric(params, names) if metrics is None else metrics
            masks = allocate_n_m({name: scores[name] for name in names}, kept, m, prior=masks)
            sparsity = 1.0 - kept / m
        return apply_masks(params, masks), GradualState(masks=masks, step=step + 1, sparsity=sparsity)

    return Transform(init, update)
