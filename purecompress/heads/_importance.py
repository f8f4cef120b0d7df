"""Head and neuron importance from the core metrics, and the allocator that keeps a fraction of them.

Any core metric scores a unit: its element scores over every parameter the unit owns (Q/K/V rows
and O columns of a head, or up/gate rows and the down column of a neuron) are pooled into one
number. With :func:`~purecompress.level` the pooled sum is the L1 norm of the head's weights
(``p=2``: its L2 norm); with :func:`~purecompress.taylor_fo` at element granularity it is the
first-order Taylor importance; with :func:`~purecompress.movement_scores` it is the head-level
movement score. NNI 2.10's movement pruning (``sparse_granularity='auto'``) learns one score per
block of the attention weights; :func:`head_movement_blocks` gives the blocks that are whole heads
(and whole neurons of the MLPs) for :func:`~purecompress.movement`'s ``block=``, and a head's
score is the sum of its blocks' scores.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Literal

import torch

from purecompress.heads._blocks import HeadBlock
from purecompress.pruning import Block, Metric, Metrics, allocate_global, allocate_per_layer, expand_blocks

__all__ = [
    "allocate_heads",
    "head_movement_blocks",
    "head_scores",
]


def head_scores(blocks: tuple[HeadBlock, ...], metrics: Mapping[str, Metric], *, p: float = 1.0) -> Metrics:
    """One score per unit of each block: ``(sum of |s|**p)**(1/p)`` of the element scores ``s``
    of the unit's entries in every cut (``p=1``: the plain sum, signed scores such as movement's
    included).

    Args:
        blocks: from :func:`~purecompress.head_blocks`.
        metrics: metrics of the cut parameters (:func:`~purecompress.head_block_params`; a cut
            without one adds nothing, as a bias without a movement score), any granularity: a
            block score counts once per entry, divided by its block's size.
        p: the norm's order (``p=2`` with :func:`~purecompress.level`: the L2 norm of the head).

    Returns:
        block name -> :class:`~purecompress.Metric` of shape ``(units,)``.

    >>> import torch, purecompress as pc
    >>> from torch import nn
    >>> mlp = nn.Module(); mlp.fc1, mlp.fc2 = nn.Linear(2, 3, bias=False), nn.Linear(3, 2, bias=False)
    >>> with torch.no_grad():
    ...     _ = mlp.fc1.weight.copy_(torch.tensor([[1., 1.], [0., 0.], [2., 0.]])); _ = mlp.fc2.weight.fill_(1.)
    >>> blocks = pc.head_blocks(nn.ModuleDict({'mlp': mlp}))
    >>> params = pc.params_of(mlp, buffers=False)
    >>> params = {f'mlp.{k}': v for k, v in params.items()}
    >>> pc.head_scores(blocks, pc.level(params, pc.head_block_params(blocks)))['mlp'].score
    tensor([4., 2., 4.])
    """
    if p <= 0:
        raise ValueError(f"p must be > 0, got {p}")
    out: Metrics = {}
    for block in blocks:
        total = torch.zeros(block.units, dtype=torch.float64)
        if not any(cut.param in metrics for cut in block.cuts):
            raise KeyError(f"no metric for any parameter the block {block.name!r} cuts; score the names of "
                           "pc.head_block_params(blocks)")
        for cut in block.cuts:
            if cut.param not in metrics:  # e.g. a bias, which movement does not score
                continue
            metric = metrics[cut.param]
            element = expand_blocks(metric.score, metric.shape).expand(metric.shape) / metric.block_numel
            rows = cut.unit_view(element.double(), block.units)
            total += rows.sum(1) if p == 1 else rows.abs().pow(p).sum(1)
        out[block.name] = Metric((total if p == 1 else total.pow(1 / p)).float(), (block.units,))
    return out


def head_movement_blocks(blocks: tuple[HeadBlock, ...]) -> dict[str, Block]:
    """Weight name -> the :class:`~purecompress.Block` of one unit: ``head_dim`` (a GQA group's)
    rows of Q/K/V, columns of O, one row of an up projection, one column of a down projection.

    For :func:`~purecompress.movement` (``block=``): one learned score per head and weight, NNI
    2.10's head-level movement pruning, which :func:`head_scores` sums per head.

    >>> from torch import nn
    >>> import purecompress as pc
    >>> mlp = nn.Module(); mlp.fc1, mlp.fc2 = nn.Linear(4, 8), nn.Linear(8, 4)
    >>> pc.head_movement_blocks(pc.head_blocks(nn.ModuleDict({'mlp': mlp})))
    {'mlp.fc1.weight': Block(kernel=(1, -1), padding='front'), 'mlp.fc2.weight': Block(kernel=(-1, 1), padding='front')}
    """
    out = {}
    for block in blocks:
        for cut in block.cuts:
            if cut.param.endswith("weight") and cut.role != "head":  # per-head parameters are not weights of a head
                kernel = [-1, -1]
                kernel[cut.dim] = cut.unit
                out[cut.param] = Block(tuple(kernel))
    return out


def allocate_heads(
    blocks: tuple[HeadBlock, ...],
    scores: Metrics,
    sparsity: float | Mapping[str, float],
    *,
    distribution: Literal["per_layer", "global"] = "per_layer",
    max_sparsity: float = 0.99,
) -> dict[str, torch.Tensor]:
    """Which units to keep: the highest-scored ``1 - sparsity`` of them, per block or pooled.

    Args:
        blocks: from :func:`~purecompress.head_blocks`.
        scores: from :func:`head_scores` (a block without a score is kept whole).
        sparsity: fraction of units to remove, one for all blocks or per block name (the kept
            count is ``units - int(sparsity * units)``, NNI's rule).
        distribution: ``'per_layer'`` (each block its fraction) or ``'global'`` (the blocks of
            each kind, attention or MLP, pooled: one sparsity, ``sparsity`` must be one float;
            each block keeps at least ``units - int(max_sparsity * units)``, so never none).
        max_sparsity: the per-block cap of ``'global'``.

    Returns:
        block name -> ``[units]`` bool (True = kept), for :func:`~purecompress.head_masks`.

    Raises:
        ValueError: a sparsity outside ``[0, 1)`` (below 1 every block keeps at least one unit).
    """
    def check(name: str, s: float) -> float:
        if not 0.0 <= s < 1.0:  # below 1, NNI's kept count keeps at least one unit
            raise ValueError(f"sparsity for {name!r} must be in [0, 1) (a block keeps at least one unit), got {s}")
        return s

    if distribution == "per_layer":
        per = {n: check(n, float(sparsity[n] if isinstance(sparsity, Mapping) else sparsity)) for n in scores}
        masks = allocate_per_layer(scores, per)
    elif distribution == "global":
        if isinstance(sparsity, Mapping):
            raise ValueError("distribution='global' pools the blocks of a kind under one sparsity: pass a float")
        for name in scores:
            check(name, float(sparsity))
        kind = {b.name: b.kind for b in blocks}
        unknown = [n for n in scores if n not in kind]
        if unknown:
            raise KeyError(f"scores for blocks that are not among the head blocks: {unknown}")
        kinds: dict[str, Metrics] = {}
        for name, metric in scores.items():  # heads and neurons are pooled separately
            kinds.setdefault(kind[name], {})[name] = metric
        masks = {}
        for group in kinds.values():
            masks.update(allocate_global(group, float(sparsity), max_sparsity=max_sparsity))
    else:
        raise ValueError(f"unknown distribution {distribution!r}; use 'per_layer' or 'global'")
    return {name: masks[name].keep.reshape(-1) for name in scores}
