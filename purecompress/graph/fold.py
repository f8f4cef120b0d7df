"""Folding removed constant channels into the consumer's bias, and whether that fold is exact.

A removed input channel of a layer that is not zero (a pruned channel's bias, BatchNorm beta
through ReLU) still adds to the layer's output. :func:`_fold` measures that contribution as a
bias (its value at the centre of the output) and its largest deviation over the output elements
that are used: behind a zero-padded conv the constant is only partly seen at the borders, so the
fold is inexact there. With ``exact=True``, :func:`_keep_inexact` keeps the removed non-zero
channels of every layer whose fold deviates by more than :data:`EXACT_TOL`.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
import torch.fx as fx
from torch import Tensor, nn

from .channels import Call, Classes

__all__ = ["EXACT_TOL"]


#: A fold deviating by more than this (absolute, on the example inputs) is inexact.
EXACT_TOL = 1e-5


def _fold(
    module: nn.Module, x: Tensor, removed: Tensor, cd: int, cd_out: int, used: Tensor, keep_out: Tensor
) -> tuple[Tensor, float]:
    """Contribution of the removed input channels (as a bias) and its max deviation."""
    view = [1] * x.dim()
    view[cd] = -1
    xr = x * removed.reshape(view).to(device=x.device, dtype=x.dtype)
    if not bool(xr.any()):  # the removed channels are zero (pruned row, BN masked): nothing to fold
        return None, 0.0
    with torch.no_grad():
        contrib = module(xr) - module(torch.zeros_like(xr))
    first = contrib[0].movedim(cd_out - 1, 0)
    centre = first[(slice(None), *(s // 2 for s in first.shape[1:]))]
    shape = [1] * contrib.dim()
    shape[cd_out] = -1
    deviation = (contrib - centre.reshape(shape)).abs() * used * keep_out.reshape(shape).to(used.device)
    return centre.cpu(), float(deviation.max()) if deviation.numel() else 0.0


def _keep_inexact(classes: Classes, calls: Mapping[str, Call], fold_error: Mapping[str, float],
                  values: Mapping[fx.Node, Any]) -> bool:
    """Block the removed non-zero inputs of every layer whose fold is inexact; whether any were."""
    blocked = False
    for name, error in fold_error.items():
        call = calls[name]
        if error <= EXACT_TOL or call.tin is None:
            continue
        x = values[call.node.args[0]]
        nonzero = (x != 0).any(dim=[d for d in range(x.dim()) if d != call.cd_in]).cpu()
        removed = classes.removed(call.tin.ids)
        classes.block(call.tin.ids[removed & nonzero])
        blocked = blocked or bool((removed & nonzero).any())
    return blocked
