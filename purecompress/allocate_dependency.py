"""Dependency-aware allocation: layers whose output channels meet share one channel mask.

NNI 2.10's ``DependencyAwareAllocator`` rule, on plain data:

- each channel-dependency set (from :func:`purecompress.graph.channel_dependency`, or written by
  hand) sums the metrics of its selected members and uses their *minimum* sparsity;
- the channels are split into ``lcm(groups)`` contiguous blocks (groups from
  :func:`purecompress.graph.group_dependency`) and every block keeps the same count,
  ``n - int(n * sparsity)`` of its ``n`` channels;
- every member of the set gets that same mask;
- selected layers in no set are allocated per layer.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence

import torch
from torch import Tensor

from purecompress.allocate import (
    Sparsity,
    _finish,
    _scores,
    _sparsity_for,
    allocate_per_layer,
    keep_top,
    kept_count,
)
from purecompress.records import Mask, Masks, Metrics

__all__ = ["allocate_dependency_aware", "dependency_kept_count", "group_keep"]


def group_keep(score: Tensor, sparsity: float, groups: int = 1) -> Tensor:
    """Keep the same number of the best channels in each of ``groups`` contiguous blocks.

    Args:
        score: ``[C]`` channel scores.
        sparsity: fraction pruned in each block.
        groups: number of blocks; channels past ``groups * (C // groups)`` are kept (NNI).

    >>> group_keep(torch.tensor([1., 4., 3., 2.]), 0.5, 2).tolist()
    [False, True, True, False]
    """
    c = score.shape[0]
    step = c // groups
    keep = torch.ones(c, dtype=torch.bool)
    per_group = step - int(step * sparsity)
    if step == 0:
        return keep
    blocks = score[: step * groups].reshape(groups, step)
    keep[: step * groups] = keep_top(blocks, per_group, dim=-1).reshape(-1) if per_group > 0 else False
    return keep


def _key(metrics: Metrics, member: str) -> str | None:
    for name in (member, f"{member}.weight"):
        if name in metrics:
            return name
    return None


def allocate_dependency_aware(
    metrics: Metrics,
    sparsity: Sparsity,
    *,
    channel_sets: Iterable[Sequence[str]],
    groups: Mapping[str, int] | None = None,
    prior: Masks | None = None,
) -> Masks:
    """Channel masks that agree inside each dependency set (NNI's dependency-aware mode).

    Args:
        metrics: channel metrics (grid ``[C, 1, ...]``) keyed by parameter name.
        sparsity: one fraction, or parameter name -> fraction.
        channel_sets: sets of module names (or parameter names) that must share channels;
            names not in ``metrics`` are ignored.
        groups: module name -> the count its channels must stay divisible by (default 1).
        prior: masks already applied (continuous masking).

    Returns:
        Masks at channel granularity for every metric.

    >>> from purecompress.records import Metric
    >>> m = {'a.weight': Metric(torch.tensor([[3.], [0.], [1.], [2.]]), (4, 2)),
    ...      'b.weight': Metric(torch.tensor([[0.], [1.], [0.], [3.]]), (4, 2))}
    >>> masks = allocate_dependency_aware(m, 0.5, channel_sets=[('a', 'b')])
    >>> masks['a.weight'].keep.flatten().tolist(), masks['b.weight'].keep.flatten().tolist()
    ([True, False, False, True], [True, False, False, True])
    """
    groups = dict(groups or {})
    scores = _scores(metrics, prior)
    masks: Masks = {}
    for members in channel_sets:
        keyed = [(m, _key(metrics, m)) for m in members]
        keyed = [(m, k) for m, k in keyed if k is not None and k not in masks]
        if not keyed:
            continue
        for _, k in keyed:
            grid = tuple(metrics[k].score.shape)
            if any(g != 1 for g in grid[1:]):
                raise ValueError(f"dependency-aware allocation needs channel metrics; {k!r} has grid {grid}")
        channels = {metrics[k].score.shape[0] for _, k in keyed}
        if len(channels) != 1:
            raise ValueError(f"dependency set {[k for _, k in keyed]} has different channel counts {sorted(channels)}")
        fused = torch.stack([scores[k].reshape(-1) for _, k in keyed]).sum(0)
        s = min(_sparsity_for(sparsity, k) for _, k in keyed)
        lcm = math.lcm(*(int(groups.get(m, groups.get(k, 1))) for m, k in keyed))
        keep = group_keep(fused, s, lcm)
        for _, k in keyed:
            masks[k] = Mask(keep.reshape(metrics[k].score.shape), metrics[k].shape)
    rest = {k: metrics[k] for k in metrics if k not in masks}
    if rest:
        rest_sparsity = sparsity if not isinstance(sparsity, Mapping) else {k: sparsity[k] for k in rest}
        masks.update(allocate_per_layer(rest, rest_sparsity, prior=prior))
    masks = {k: masks[k] for k in metrics}
    return _finish(masks, prior) if prior else masks


def dependency_kept_count(channels: int, sparsity: float, groups: int = 1) -> int:
    """Channels a set keeps: ``groups * kept_count(C // groups, s)`` (plus an unsplit tail)."""
    step = channels // groups
    if step == 0:
        return channels
    return groups * kept_count(step, sparsity) + channels - step * groups
