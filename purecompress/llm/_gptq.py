"""GPTQ (Frantar et al., 2023): quantize a layer's weights column by column, compensating each
rounding error on the columns not yet quantized (the OBS update of :mod:`._sparsegpt`, with
rounding in place of pruning).

Scales: per row (``group_size=None``, from the row's min/max before any update), or per group of
``group_size`` columns, computed when the group is reached from the *updated* weights. With
``act_order`` columns are visited in decreasing order of the Hessian diagonal (most salient
first); groups then stay the contiguous column groups of the original order, with their
parameters taken from the original weights ("static groups"), so the result is stored exactly as
round-to-nearest's (:func:`weight_qparams`).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import Tensor, nn

import purecompress as pc
import purecompress.quant as pq
from purecompress.llm._decoder import decoder_blocks
from purecompress.llm._hessian import inverse_hessian_factor
from purecompress.llm._rtn import weight_qparams
from purecompress.llm._sequential import BlockResult, LinearStats, SequentialResult, compress_sequential

__all__ = ["gptq", "gptq_quantize"]


def gptq_quantize(weight: Tensor, hessian: Tensor, *, bits: int = 4, group_size: int | None = None,
                  symmetric: bool = False, act_order: bool = False, block_size: int = 128,
                  damp: float = 0.01) -> tuple[Tensor, pq.QuantParams]:
    """Quantize one ``[out, in]`` weight with GPTQ.

    Args:
        weight: ``[out, in]``, any float dtype (computed in float32; never written).
        hessian: ``[in, in]``, ``X^T X`` of the layer's inputs (any positive scale).
        bits: 2..8.
        group_size: columns per group (divides ``in``); None for one scale per row.
        symmetric: signed symmetric grid instead of the affine unsigned one.
        act_order: visit columns by decreasing Hessian diagonal.
        block_size: columns per lazy-update block (a multiple of ``group_size`` when grouped).
        damp: Hessian dampening relative to its mean diagonal.

    Returns:
        ``(dequantized weight in weight's dtype, qparams)``: ``qparams`` as
        :func:`weight_qparams` (per-channel over ``weight.reshape(-1, group_size or in)``), and
        the float32 result lies on their grid.

    >>> w, qp = gptq_quantize(torch.tensor([[0., 1.1, 2.2, 2.9]]), torch.eye(4), bits=2)
    >>> w
    tensor([[0.0000, 0.9667, 1.9333, 2.9000]])
    """
    if weight.dim() != 2 or tuple(hessian.shape) != (weight.shape[1],) * 2:
        raise ValueError(f"need a [out, in] weight and a [in, in] Hessian, got {tuple(weight.shape)} and "
                         f"{tuple(hessian.shape)}")
    out_dim, cols = weight.shape
    g = cols if group_size is None else group_size
    w = weight.detach().float().clone()
    static = act_order or group_size is None
    qp = weight_qparams(w, bits=bits, group_size=group_size, symmetric=symmetric)
    scale, zero = qp.scale.reshape(out_dim, cols // g).clone(), qp.zero_point.reshape(out_dim, cols // g).clone()
    h = hessian.float()
    order = torch.argsort(h.diagonal(), descending=True, stable=True) if act_order else torch.arange(cols)
    w, h = w[:, order], h[order][:, order]
    group_of = order // g  # group of each visited column (original column groups)
    if not static:
        block_size = g * max(1, block_size // g)
    u = inverse_hessian_factor(h, damp=damp)
    for i1 in range(0, cols, block_size):
        i2 = min(i1 + block_size, cols)
        w1, u1 = w[:, i1:i2].clone(), u[i1:i2, i1:i2]
        err = torch.zeros_like(w1)
        for j in range(i2 - i1):
            k = int(group_of[i1 + j])
            if not static and (i1 + j) % g == 0:
                fresh = weight_qparams(w1[:, j:j + g], bits=bits, group_size=None, symmetric=symmetric)
                scale[:, k], zero[:, k] = fresh.scale, fresh.zero_point
            col = w1[:, j]
            s, z = scale[:, k], zero[:, k]
            q = s * (torch.clamp(torch.round(col / s + z), qp.qmin, qp.qmax) - z)
            e = (col - q) / u1[j, j]
            w1[:, j:] -= e[:, None] * u1[j, j:][None, :]
            w1[:, j] = q
            err[:, j] = e
        w[:, i1:i2] = w1
        w[:, i2:] -= err @ u[i1:i2, i2:]
    w = w[:, torch.argsort(order)]
    return w.to(weight.dtype), pq.QuantParams(scale.reshape(-1), zero.reshape(-1), qp.qmin, qp.qmax, 0, group_size)


def gptq(model: nn.Module, batches: Sequence[Any], *, bits: int = 4, group_size: int | None = None,
         symmetric: bool = False, act_order: bool = False, blocks: Sequence[str] | None = None,
         params: pc.Params | None = None, block_size: int = 128, damp: float = 0.01,
         progress: bool | None = None) -> SequentialResult:
    """GPTQ on every Linear of a decoder's blocks, block by block (:func:`compress_sequential`).

    Args:
        model: a decoder (:class:`TinyDecoder`, or a Llama-style model with ``model.layers``).
        batches: calibration batches.
        bits: code width (2-8), as :func:`gptq_quantize`.
        group_size: one scale per this many input columns (None: per output channel).
        symmetric: symmetric codes (zero point in the middle) instead of affine.
        act_order: quantize columns in order of decreasing Hessian diagonal.
        block_size: columns updated together (the lazy-batch block of the paper).
        damp: dampening added to the Hessian diagonal, relative to its mean.
        blocks: block module names; default :func:`decoder_blocks`.
        params: start from these params instead of the model's (never written).
        progress: tqdm over the blocks (default: when stderr is a terminal).

    Returns:
        :class:`SequentialResult` with the dequantized weights in ``params`` and ``qparams``
        (save them with :func:`purecompress.quant.save_quant_params`).
    """
    def compress(weights: Mapping[str, Tensor], stats: Mapping[str, LinearStats]) -> BlockResult:
        out, qparams = {}, {}
        for name, w in weights.items():
            out[name], qparams[name] = gptq_quantize(w, stats[name].hessian, bits=bits, group_size=group_size,
                                                     symmetric=symmetric, act_order=act_order,
                                                     block_size=block_size, damp=damp)
        return BlockResult(weights=out, qparams=qparams)

    return compress_sequential(model, batches, compress, blocks=decoder_blocks(model) if blocks is None else blocks,
                               params=params, need="hessian", progress=progress)
