"""SparseGPT (Frantar & Alistarh, 2023): prune a layer column by column, updating the columns not yet
visited with the Optimal Brain Surgeon correction from the inverse Hessian.

Per column ``j`` with factor row ``u = U[j, j:]`` (:func:`inverse_hessian_factor`): the pruned
value ``q = w * keep`` leaves an error ``e = (w - q) / u[0]`` and the remaining columns move by
``-e u``. Columns are processed in blocks: inside a block updates are eager, the columns after it
get the block's errors in one matrix product (the same numbers, fewer passes). The mask is chosen
adaptively per block from the *updated* weights by the OBS saliency ``w^2 / u[0]^2``: per row,
``kept_count(block width, sparsity)`` per block (unstructured) or the ``n`` best of each ``m``
consecutive columns (N:M, chosen when the group is reached).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import Tensor, nn

import purecompress as pc
from purecompress.llm._decoder import decoder_blocks
from purecompress.llm._hessian import inverse_hessian_factor
from purecompress.llm._sequential import BlockResult, LinearStats, SequentialResult, compress_sequential
from purecompress.pruning._n_m import n_m_keep, parse_n_m

__all__ = ["sparsegpt", "sparsegpt_prune"]


def sparsegpt_prune(weight: Tensor, hessian: Tensor, *, sparsity: float = 0.5,
                    n_m: tuple[int, int] | str | None = None, block_size: int = 128,
                    damp: float = 0.01) -> tuple[Tensor, pc.Mask]:
    """Prune one ``[out, in]`` weight with SparseGPT.

    Args:
        weight: ``[out, in]``, any float dtype (computed in float32; never written).
        hessian: ``[in, in]``, ``X^T X`` of the layer's inputs (any positive scale).
        sparsity: unstructured: the fraction of each row's entries pruned in every column block
            (ignored with ``n_m``).
        n_m: ``(n, m)`` or ``'n:m'``: keep ``n`` of every ``m`` consecutive input columns.
        block_size: columns per block (rounded down to a multiple of ``m``, at least ``m``).
        damp: Hessian dampening relative to its mean diagonal.

    Returns:
        ``(new weight in weight's dtype, Mask)``; the weight is zero exactly where the mask prunes.

    >>> w, mask = sparsegpt_prune(torch.tensor([[1., -2., 3., 0.5]]), torch.eye(4), n_m='2:4')
    >>> w, mask.keep
    (tensor([[ 0., -2.,  3.,  0.]]), tensor([[False,  True,  True, False]]))
    """
    if weight.dim() != 2 or tuple(hessian.shape) != (weight.shape[1],) * 2:
        raise ValueError(f"need a [out, in] weight and a [in, in] Hessian, got {tuple(weight.shape)} and "
                         f"{tuple(hessian.shape)}")
    nm = parse_n_m(n_m, key="n_m") if n_m is not None else None
    if nm is None and not 0.0 <= sparsity < 1.0:
        raise ValueError(f"sparsity must be in [0, 1), got {sparsity}")
    cols = weight.shape[1]
    if nm is not None:
        if cols % nm[1]:
            raise ValueError(f"N:M with M={nm[1]} needs the input dim ({cols}) to be a multiple of it")
        block_size = nm[1] * max(1, block_size // nm[1])
    u = inverse_hessian_factor(hessian, damp=damp)
    w = weight.detach().float().clone()
    keep = torch.ones_like(w, dtype=torch.bool)
    for i1 in range(0, cols, block_size):
        i2 = min(i1 + block_size, cols)
        w1, u1 = w[:, i1:i2].clone(), u[i1:i2, i1:i2]
        d = u1.diagonal()
        err = torch.zeros_like(w1)
        if nm is None:
            keep[:, i1:i2] = pc.keep_top(w1.pow(2) / d.pow(2), pc.kept_count(i2 - i1, sparsity), -1)
        for j in range(i2 - i1):
            if nm is not None and j % nm[1] == 0:
                group = slice(j, j + nm[1])
                keep[:, i1 + j: i1 + j + nm[1]] = n_m_keep(w1[:, group].pow(2) / d[group].pow(2), *nm)
            col = w1[:, j]
            q = col * keep[:, i1 + j]
            e = (col - q) / d[j]
            w1[:, j:] -= e[:, None] * u1[j, j:][None, :]
            w1[:, j] = q
            err[:, j] = e
        w[:, i1:i2] = w1
        w[:, i2:] -= err @ u[i1:i2, i2:]
    return w.to(weight.dtype), pc.Mask(keep, tuple(weight.shape))


def sparsegpt(model: nn.Module, batches: Sequence[Any], *, sparsity: float = 0.5,
              n_m: tuple[int, int] | str | None = None, blocks: Sequence[str] | None = None,
              params: pc.Params | None = None, block_size: int = 128, damp: float = 0.01,
              progress: bool | None = None) -> SequentialResult:
    """SparseGPT on every Linear of a decoder's blocks, block by block (:func:`compress_sequential`).

    Args:
        model: a decoder (:class:`TinyDecoder`, or a Llama-style model with ``model.layers``).
        batches: calibration batches (token ids ``[batch, seq]``, or tuples of the model's args).
        sparsity: unstructured sparsity (ignored with ``n_m``).
        n_m: ``(n, m)`` or ``'n:m'`` for N:M sparsity.
        blocks: block module names; default :func:`decoder_blocks`.
        params: start from these params instead of the model's (never written).
        block_size: columns per SparseGPT block.
        damp: Hessian dampening.
        progress: tqdm over the blocks (default: when stderr is a terminal).

    Returns:
        :class:`SequentialResult` with the updated weights in ``params`` and the ``masks``.
    """
    def compress(weights: Mapping[str, Tensor], stats: Mapping[str, LinearStats]) -> BlockResult:
        out, masks = {}, {}
        for name, w in weights.items():
            out[name], masks[name] = sparsegpt_prune(w, stats[name].hessian, sparsity=sparsity, n_m=n_m,
                                                     block_size=block_size, damp=damp)
        return BlockResult(weights=out, masks=masks)

    return compress_sequential(model, batches, compress, blocks=decoder_blocks(model) if blocks is None else blocks,
                               params=params, need="hessian", progress=progress)
