"""2:4 masks as ``torch.sparse`` semi-structured weights, for sparse-tensor-core inference (CUDA)."""

from __future__ import annotations

import torch

import purecompress as pc

__all__ = ["to_semi_structured"]


def to_semi_structured(params: pc.Params, masks: pc.Masks) -> pc.Params:
    """A copy of ``params`` whose 2:4-masked weights are ``SparseSemiStructuredTensor`` s.

    Run the model with it through :func:`torch.func.functional_call` (``F.linear`` dispatches
    to the sparse kernels). Needs CUDA and float16/bfloat16 weights; every mask given must be 2:4.

    Args:
        params: name -> tensor (CUDA, half precision for the masked weights).
        masks: name -> 2:4 :class:`~purecompress.Mask` (e.g. from ``wanda(..., n_m='2:4')``).

    Raises:
        ValueError: for a weight not on CUDA or a mask that is not 2:4.
    """
    out = dict(params)
    for name, mask in masks.items():
        weight = params[name]
        if not weight.is_cuda:
            raise ValueError(f"{name!r}: semi-structured sparsity needs a CUDA tensor, got {weight.device}")
        keep = mask.broadcastable().expand(mask.shape).reshape(weight.shape[0], -1, 4)
        if not bool((keep.sum(-1) == 2).all()):
            raise ValueError(f"{name!r}: the mask is not 2:4 (every 4 consecutive inputs must keep exactly 2)")
        out[name] = torch.sparse.to_sparse_semi_structured(mask.apply(weight))
    return out
