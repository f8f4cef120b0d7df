"""Wanda (Sun et al., 2024): prune by ``|W_ij| * ||X_j||_2``, compared within each output row.

No weight update and no Hessian: one pass of calibration data for the input norms, then a
metric that is an element-wise product, so it composes with every allocator of the core (per row
here, N:M with :func:`~purecompress.pruning._n_m.allocate_n_m`).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from torch import Tensor, nn

import purecompress as pc
from purecompress.llm._decoder import decoder_blocks
from purecompress.llm._sequential import BlockResult, LinearStats, SequentialResult, compress_sequential
from purecompress.pruning._n_m import allocate_n_m, parse_n_m

__all__ = ["allocate_per_row", "wanda", "wanda_metric"]


def wanda_metric(weight: Tensor, sq_norm: Tensor) -> pc.Metric:
    """Wanda's score ``|W| * sqrt(sq_norm)`` per element (float32).

    Args:
        weight: ``[out, in]``.
        sq_norm: ``[in]``, sum over tokens of each input feature squared (:class:`LinearStats`).

    >>> import torch
    >>> wanda_metric(torch.tensor([[1., -2.]]), torch.tensor([4., 1.])).score
    tensor([[2., 2.]])
    """
    if weight.dim() != 2 or tuple(sq_norm.shape) != (weight.shape[1],):
        raise ValueError(f"need a [out, in] weight and [in] norms, got {tuple(weight.shape)} and "
                         f"{tuple(sq_norm.shape)}")
    # abs then an in-place multiply: one temporary fewer than `abs() * norm` (a fresh 4096x4096
    # float32 costs about a pass in page faults alone)
    return pc.Metric(weight.detach().float().abs().mul_(sq_norm.float().sqrt()[None, :]), tuple(weight.shape))


def allocate_per_row(metrics: pc.Metrics, sparsity: float) -> pc.Masks:
    """Prune ``sparsity`` of every output row (``kept_count(in, sparsity)`` kept per row).

    >>> import torch
    >>> m = {'w': pc.Metric(torch.tensor([[1., 2.], [4., 3.]]), (2, 2))}
    >>> allocate_per_row(m, 0.5)['w'].keep
    tensor([[False,  True],
            [ True, False]])
    """
    return {name: pc.Mask(pc.keep_top(m.score.reshape(m.shape[0], -1), pc.kept_count(
        m.score[0].numel(), sparsity), -1).reshape(m.score.shape), m.shape) for name, m in metrics.items()}


def wanda(model: nn.Module, batches: Sequence[Any], *, sparsity: float = 0.5,
          n_m: tuple[int, int] | str | None = None, blocks: Sequence[str] | None = None,
          params: pc.Params | None = None, progress: bool | None = None) -> SequentialResult:
    """Wanda masks for every Linear of a decoder's blocks, block by block (:func:`compress_sequential`).

    Args:
        model: a decoder (:class:`TinyDecoder`, or a Llama-style model with ``model.layers``).
        batches: calibration batches.
        sparsity: per-row unstructured sparsity (ignored with ``n_m``).
        n_m: ``(n, m)`` or ``'n:m'`` for N:M sparsity.
        blocks: block module names; default :func:`decoder_blocks`.
        params: start from these params (never written).
        progress: tqdm over the blocks (default: when stderr is a terminal).

    Returns:
        :class:`SequentialResult`: ``masks``, and ``params`` with them applied.
    """
    nm = parse_n_m(n_m, key="n_m") if n_m is not None else None

    def compress(weights: Mapping[str, Tensor], stats: Mapping[str, LinearStats]) -> BlockResult:
        metrics = {name: wanda_metric(w, stats[name].sq_norm) for name, w in weights.items()}
        masks = allocate_n_m(metrics, *nm) if nm is not None else allocate_per_row(metrics, sparsity)
        return BlockResult(weights=pc.apply_masks(dict(weights), masks), masks=masks)

    return compress_sequential(model, batches, compress, blocks=decoder_blocks(model) if blocks is None else blocks,
                               params=params, need="norms", progress=progress)
