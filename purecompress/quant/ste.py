"""Fake quantization with straight-through gradients (STE), as ``torch.autograd.Function`` s.

:func:`fake_quantize_ste`: forward is :func:`~purecompress.quant.qparams.fake_quantize`; backward
passes the gradient through unchanged (NNI's default ``QuantGrad``) or, with ``clip=True``, zeroes
it where the unclamped code ``round(x / s + zp)`` falls outside ``[qmin, qmax]`` (NNI's
``QATGrad``). :func:`fake_quantize_clipped` is the clipped form for callers that know ``x``'s min
and max.

One function, several implementations with the same values and gradients, picked per call:
under ``torch.func`` transforms, ``forward`` / ``setup_context`` functions with
``generate_vmap_rule = True`` (no ``.item()``, no data-dependent control flow); under
``torch.compile``, plain ops that inductor fuses; in eager mode, in-place passes over one
temporary, and for the clipped form a test of the codes of ``x``'s min and max first (the code map
is monotone): when every code is in range the backward is the identity and needs no mask.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from purecompress.quant import hostmath
from purecompress.quant.observers import current_range
from purecompress.quant.qparams import LOW_PRECISION, QuantParams, grouped_view

__all__ = ["codes", "fake_quantize_clipped", "fake_quantize_ste"]


def _codes(x: Tensor, scale: Tensor, zero_point: Tensor) -> Tensor:
    """``round(x / scale + zero_point)`` on a fresh tensor (in place after the division). Every
    path (eager and under transforms) computes codes with this one sequence, so a code computed for a tensor's min/max
    is bit-identical to the code of that element inside the tensor."""
    return (x / scale).add_(zero_point).round_()


def codes(x: Tensor, scale: Tensor, zero_point: Tensor) -> Tensor:
    """The unclamped integer codes ``round(x / scale + zero_point)`` (a new tensor; the sequence
    every fake quantization here uses, so the clipped STE's mask agrees with it).

    >>> codes(torch.tensor([0.26, -9.0]), torch.tensor(0.5), torch.tensor(1.0))
    tensor([  2., -17.])
    """
    return _codes(x, scale, zero_point)


def _fake_quantized(x: Tensor, scale: Tensor, zero_point: Tensor, qmin: int, qmax: int) -> Tensor:
    """The fake-quantized values of ``x`` on one fresh tensor (no autograd, eager only: clamp_ has
    no vmap rule)."""
    return _codes(x, scale, zero_point).clamp_(qmin, qmax).sub_(zero_point).mul_(scale)


class _FakeQuantSTE(torch.autograd.Function):
    generate_vmap_rule = True

    @staticmethod
    def forward(x: Tensor, scale: Tensor, zero_point: Tensor, qmin: int, qmax: int) -> Tensor:
        # In-place steps on fresh temporaries (fewer allocations; clamp_ has no vmap rule).
        return _codes(x, scale, zero_point).clamp(qmin, qmax).sub_(zero_point).mul_(scale)

    @staticmethod
    def setup_context(ctx: Any, inputs: tuple[Any, ...], output: Tensor) -> None:
        pass

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor | None, ...]:
        return grad, None, None, None, None


def _clipped_forward(x: Tensor, scale: Tensor, zero_point: Tensor, qmin: int, qmax: int,
                     batched: bool = False) -> tuple[Tensor, Tensor]:
    code = _codes(x, scale, zero_point)
    q = code.clamp(qmin, qmax)
    # Float mask, 1.0 where the code is in range (code == q), else 0.0 (a bool mask is slow to
    # make and to multiply by on CPU): eq_ writes it over ``code`` in one pass and keeps the float
    # dtype. eq_ has no vmap batching rule, so under transforms the same mask comes from float
    # arithmetic (code - q is integer valued).
    if batched:
        inside = code.sub_(q).abs_().clamp(max=1.0).neg_().add_(1.0)
    else:
        inside = code.eq_(q)
    return q.sub_(zero_point).mul_(scale), inside


class _FakeQuantClipped(torch.autograd.Function):
    """Transform-compatible form (``setup_context``), used under ``torch.func`` transforms."""

    generate_vmap_rule = True

    @staticmethod
    def forward(x: Tensor, scale: Tensor, zero_point: Tensor, qmin: int, qmax: int) -> tuple[Tensor, Tensor]:
        return _clipped_forward(x, scale, zero_point, qmin, qmax, batched=True)

    @staticmethod
    def setup_context(ctx: Any, inputs: tuple[Any, ...], output: tuple[Tensor, Tensor]) -> None:
        ctx.mark_non_differentiable(output[1])
        ctx.save_for_backward(output[1])

    @staticmethod
    def backward(ctx: Any, grad: Tensor, grad_mask: Tensor | None) -> tuple[Tensor | None, ...]:
        (inside,) = ctx.saved_tensors
        return grad * inside, None, None, None, None


class _FakeQuantClippedEager(torch.autograd.Function):
    """Same values and gradient; the classic form skips ``apply``'s per-call signature binding
    (about 0.1 ms), which matters for small layers. Not usable under ``torch.func`` transforms."""

    @staticmethod
    def forward(ctx: Any, x: Tensor, scale: Tensor, zero_point: Tensor, qmin: int, qmax: int) -> Tensor:
        out, inside = _clipped_forward(x, scale, zero_point, qmin, qmax)
        ctx.save_for_backward(inside)
        return out

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor | None, ...]:
        (inside,) = ctx.saved_tensors
        return grad * inside, None, None, None, None


class _FakeQuantClippedLean(torch.autograd.Function):
    """Same values and gradient with one large allocation per pass instead of three: the forward
    works in place on one temporary and saves nothing new; the backward recomputes the code from
    the saved ``x`` and turns it into the mask in place (``qmin <= code <= qmax`` as
    ``|code - mid| <= half``, exact for ranges within 2^20 in float32/64). Fresh allocations of
    large temporaries (page faults) cost more than the extra in-place passes on CPU."""

    @staticmethod
    def forward(ctx: Any, x: Tensor, scale: Tensor, zero_point: Tensor, qmin: int, qmax: int) -> Tensor:
        ctx.save_for_backward(x, scale, zero_point)
        ctx.qrange = (qmin, qmax)
        return _fake_quantized(x, scale, zero_point, qmin, qmax)

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor | None, ...]:
        x, scale, zero_point = ctx.saved_tensors
        qmin, qmax = ctx.qrange
        inside = _codes(x, scale, zero_point).sub_((qmin + qmax) / 2).abs_().le_((qmax - qmin) / 2)
        return inside.mul_(grad), None, None, None, None


class _FakeQuantInRange(torch.autograd.Function):
    """Fake quantization when every code is known to lie in ``[qmin, qmax]``: no clamp, and the
    clipped STE's mask is all ones, so the backward passes the gradient through unchanged."""

    @staticmethod
    def forward(ctx: Any, x: Tensor, scale: Tensor, zero_point: Tensor) -> Tensor:
        return _codes(x, scale, zero_point).sub_(zero_point).mul_(scale)

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor | None, ...]:
        return grad, None, None


def _codes_in_range(bounds: tuple[Tensor, Tensor], qp: QuantParams) -> bool:
    """Whether every code of a tensor whose min/max (``[]``, or ``[C]`` along ``qp.axis``) are
    ``bounds`` lies in ``[qmin, qmax]``. ``x -> round(x / s + zp)`` is monotone for ``s > 0``, so
    the codes of the two ends bound every code; NaN ends give False. Eager only (host sync)."""
    if qp.axis is None and (host := hostmath.read(*bounds, qp.scale, qp.zero_point)):
        rnd, (lo, hi, scale, zero_point) = host
        return hostmath.codes_in_range(lo, hi, scale, zero_point, qp.qmin, qp.qmax, rnd)
    codes = _codes(torch.stack(bounds), qp.scale, qp.zero_point)
    low, high = torch.aminmax(codes)
    return qp.qmin <= low.item() and high.item() <= qp.qmax


_LEAN_LIMIT = 2**20
_LEAN_DTYPES = (torch.float32, torch.float64)


def fake_quantize_ste(x: Tensor, qp: QuantParams, *, clip: bool = False) -> Tensor:
    """Fake-quantize ``x`` with a straight-through gradient (no gradient to ``qp``).

    Args:
        x: any shape; per-channel ``qp`` broadcast along ``qp.axis``.
        qp: scale and zero point.
        clip: zero the gradient where the unclamped code is out of range (NNI QAT).

    >>> qp = QuantParams(torch.tensor(1.), torch.tensor(0.), -2, 2)
    >>> x = torch.tensor([-3., 0.4, 2.6], requires_grad=True)
    >>> fake_quantize_ste(x, qp, clip=True).sum().backward()
    >>> x.grad
    tensor([0., 1., 0.])
    """
    return _fake_quantize_ste(x, qp, clip, None)


def fake_quantize_clipped(x: Tensor, qp: QuantParams, bounds: tuple[Tensor, Tensor]) -> Tensor:
    """``fake_quantize_ste(x, qp, clip=True)`` for callers that already hold ``x``'s min and max
    (``bounds``: ``[]`` each, or ``[C]`` along ``qp.axis``; e.g. an observer's current range of
    ``x``). In eager mode they tell, without another pass over ``x``, whether every code is in
    range; then the backward needs no mask. Wrong bounds give wrong gradients: pass only the
    exact min/max of this ``x`` (``current_range(x, axis=qp.axis)``)."""
    return _fake_quantize_ste(x, qp, True, bounds)


def _fake_quantize_ste(x: Tensor, qp: QuantParams, clip: bool, bounds: tuple[Tensor, Tensor] | None) -> Tensor:
    if qp.group_size is not None:  # group-wise: the per-channel case on x.reshape(-1, group_size)
        view, flat = grouped_view(x, qp)
        return _fake_quantize_ste(view, flat, clip, bounds).reshape(x.shape)
    if x.dtype in LOW_PRECISION:  # float16/bfloat16: the codes in float32, the result in x's dtype
        qp = QuantParams(qp.scale.float(), qp.zero_point.float(), qp.qmin, qp.qmax, qp.axis)
        wide = None if bounds is None else (bounds[0].float(), bounds[1].float())
        return _fake_quantize_ste(x.float(), qp, clip, wide).to(x.dtype)
    scale, zero_point = qp.broadcast(x.dim())
    if torch.compiler.is_compiling():
        return _fake_quantize_composite(x, scale, zero_point, qp.qmin, qp.qmax, clip)
    if not clip:
        return _FakeQuantSTE.apply(x, scale, zero_point, qp.qmin, qp.qmax)
    if torch._C._are_functorch_transforms_active():
        return _FakeQuantClipped.apply(x, scale, zero_point, qp.qmin, qp.qmax)[0]
    lean = x.dtype in _LEAN_DTYPES and scale.dtype in _LEAN_DTYPES and -_LEAN_LIMIT < qp.qmin <= qp.qmax < _LEAN_LIMIT
    if not lean:
        return _FakeQuantClippedEager.apply(x, scale, zero_point, qp.qmin, qp.qmax)
    if not (x.requires_grad and torch.is_grad_enabled()):  # no backward: no mask to keep
        return _fake_quantized(x, scale, zero_point, qp.qmin, qp.qmax)
    # The range test reads two numbers on the host: on CPU only (on an accelerator it would wait for
    # the device every call; meta tensors have no values). It computes the codes of x's ends as the
    # forward computes x's codes only when no dtype promotion can differ between them (a 0-d x would
    # promote with a float64 scale).
    if x.is_cpu and x.dtype == scale.dtype == zero_point.dtype:
        if bounds is None:
            observed = current_range(x, axis=qp.axis)
            bounds = (observed.min, observed.max)
        if _codes_in_range(bounds, qp):
            return _FakeQuantInRange.apply(x, scale, zero_point)
    return _FakeQuantClippedLean.apply(x, scale, zero_point, qp.qmin, qp.qmax)


def _fake_quantize_composite(x: Tensor, scale: Tensor, zero_point: Tensor, qmin: int, qmax: int,
                             clip: bool) -> Tensor:
    """The same values and gradients from plain ops, which inductor fuses into one kernel (it
    compiles the autograd.Function's in-place steps poorly). ``x - x.detach()`` is exactly 0, so
    the value is exactly the fake-quantized one; its gradient is 1 (times the in-range mask)."""
    code = torch.round(x.detach() / scale + zero_point)
    q = torch.clamp(code, qmin, qmax)
    through = x - x.detach()
    if clip:  # 1 where code == q, else 0; float arithmetic (inductor's bool kernels are slow on CPU)
        through = through * (1 - torch.clamp((code - q).abs(), max=1))
    return (q - zero_point) * scale + through
