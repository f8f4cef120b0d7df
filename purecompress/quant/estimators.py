"""Straight-through estimators besides fake quantization: pass-through, binarization, LSQ.

All are ``torch.autograd.Function`` s in the ``forward`` / ``setup_context`` style with
``generate_vmap_rule = True``, so they compose with ``torch.func.grad``, ``torch.func.vmap`` and
``torch.compile``.

- :func:`straight_through`: the value of ``y`` with the identity gradient to ``x`` (NNI's default
  ``QuantGrad`` around any quantizer, e.g. Naive and DoReFa).
- :func:`binarize`: ``sign`` with 0 -> +1; ``clip=True`` zeroes the gradient where ``|x| > 1``
  (NNI's BNN ``ClipGrad`` for outputs).
- :func:`lsq_fake_quantize`: Learned Step Size Quantization; the step gets the LSQ gradient
  scaled by ``1 / sqrt(qmax * numel)``; :func:`lsq_init_scale` is ``2 mean|x| / sqrt(qmax)``.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor

from purecompress.quant.qparams import SCALE_EPS

__all__ = ["binarize", "lsq_fake_quantize", "lsq_init_scale", "straight_through"]


class _StraightThrough(torch.autograd.Function):
    generate_vmap_rule = True

    @staticmethod
    def forward(x: Tensor, y: Tensor) -> Tensor:
        return y.clone()

    @staticmethod
    def setup_context(ctx: Any, inputs: tuple[Any, ...], output: Tensor) -> None:
        pass

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor, None]:
        return grad, None


def straight_through(x: Tensor, y: Tensor) -> Tensor:
    """The value of ``y`` (same shape as ``x``) whose gradient flows to ``x`` unchanged.

    ``y`` gets no gradient: compute it from ``x.detach()``.

    >>> x = torch.tensor([0.2, 1.7], requires_grad=True)
    >>> out = straight_through(x, torch.trunc(x.detach()))
    >>> out.sum().backward()
    >>> out.detach(), x.grad
    (tensor([0., 1.]), tensor([1., 1.]))
    """
    return _StraightThrough.apply(x, y)


class _Binarize(torch.autograd.Function):
    generate_vmap_rule = True

    @staticmethod
    def forward(x: Tensor, clip: bool) -> Tensor:
        return torch.where(x >= 0, 1.0, -1.0).to(x.dtype)

    @staticmethod
    def setup_context(ctx: Any, inputs: tuple[Any, ...], output: Tensor) -> None:
        x, clip = inputs
        ctx.clip = clip
        if clip:
            ctx.save_for_backward(x)

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor | None, None]:
        if not ctx.clip:
            return grad, None
        (x,) = ctx.saved_tensors
        return grad * (x.abs() <= 1), None


def binarize(x: Tensor, *, clip: bool = False) -> Tensor:
    """``sign(x)`` with 0 -> +1 and a straight-through gradient (BNN).

    Args:
        x: any shape.
        clip: zero the gradient where ``|x| > 1`` (NNI applies this to outputs only).

    >>> binarize(torch.tensor([-0.5, 0.0, 2.0]))
    tensor([-1.,  1.,  1.])
    """
    return _Binarize.apply(x, clip)


def _lsq(x: Tensor, scale: Tensor, qmin: int, qmax: int, grad_scale: float) -> Tensor:
    # The LSQ paper's composition: the step's gradient scaled by ``grad_scale`` without changing its
    # value's role, rounding through a straight-through estimator. Written as plain differentiable
    # ops (no custom backward), so autograd takes the same operations, in the same order, as NNI's
    # LsqQuantizer: its gradients, and the trained weights, are bit-identical to NNI's on any thread
    # count (a closed-form backward differs in the last bits and drifts over steps).
    step = (scale - scale * grad_scale).detach() + scale * grad_scale
    v = torch.clamp(x / step, qmin, qmax)
    return ((torch.round(v) - v).detach() + v) * step


def lsq_fake_quantize(x: Tensor, scale: Tensor, qmin: int, qmax: int) -> Tensor:
    """LSQ fake quantization ``round(clamp(x / s, qmin, qmax)) * s`` with a learnable step ``s``.

    Gradients: ``x`` gets the straight-through gradient inside the range (0 where clamped); ``s``
    gets LSQ's ``round(v) - v`` (inside) or ``qmin`` / ``qmax`` (clamped), summed and scaled by
    ``1 / sqrt(qmax * x.numel())``.

    Args:
        x: any shape.
        scale: ``[]`` or broadcastable to ``x``, > 0.
        qmin: e.g. -128 (LSQ uses the full signed range).
        qmax: e.g. 127.

    >>> lsq_fake_quantize(torch.tensor([0.26, -9.0]), torch.tensor(0.5), -4, 3)
    tensor([ 0.5000, -2.0000])
    """
    if not qmin < qmax or qmax <= 0 or x.numel() == 0:
        raise ValueError(f"lsq_fake_quantize needs qmin < qmax and qmax > 0 (2 bits or more) and a non-empty x, "
                         f"got [{qmin}, {qmax}] and {x.numel()} elements")
    if x.dtype in (torch.float16, torch.bfloat16):  # the codes in float32, the result in x's dtype
        return _lsq(x.float(), scale.float(), qmin, qmax, 1.0 / (qmax * x.numel()) ** 0.5).to(x.dtype)
    return _lsq(x, scale, qmin, qmax, 1.0 / (qmax * x.numel()) ** 0.5)


def lsq_init_scale(x: Tensor, qmax: int) -> Tensor:
    """LSQ's initial step ``2 mean|x| / sqrt(qmax)`` (floored at ``SCALE_EPS``), detached, ``[]``.

    >>> lsq_init_scale(torch.tensor([-1.0, 3.0]), 4)
    tensor(2.)
    """
    return torch.clamp(x.detach().abs().mean() * 2 / math.sqrt(qmax), min=SCALE_EPS)
