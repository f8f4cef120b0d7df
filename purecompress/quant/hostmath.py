"""The per-tensor scalar math of quantization in Python floats, bit-identical to the tensor ops.

On CPU every op on a 0-d tensor costs microseconds of dispatch (more with a Python scalar
operand, which is wrapped and cast first), and one quantized tensor needs about twenty of them
per step (range update, scale, zero point, the in-range test of the codes): for small layers
that costs more than the fake quantization itself. For eager calls on CPU float32/float64 0-d
tensors that need no gradient, :mod:`~purecompress.quant.observers`,
:mod:`~purecompress.quant.qparams` and :mod:`~purecompress.quant.ste` compute it here instead.

Exactness: each tensor op rounds its exact result once to the tensor dtype, with a Python scalar
operand first rounded to that dtype. Here every operation is done in double and rounded the same
way; for ``+ - * /`` a double result rounded to float32 is the correctly rounded float32 result
(53 >= 2 * 24 + 2 bits), and Python's ``round`` rounds half to even like ``torch.round``. Inputs
that are not finite take the tensor path (Python's ``min``/``max`` do not propagate NaN). The
tensor code stays the reference and the only path under ``torch.compile`` and ``torch.func``;
``properties/test_quant_laws.py`` checks that both agree bit for bit.
"""

from __future__ import annotations

import contextlib
import math
import struct
from collections.abc import Callable, Iterator

import torch
from torch import Tensor

__all__ = ["Rounding", "codes_in_range", "disabled", "ema", "qparams", "read", "scalar"]

Rounding = Callable[[float], float]
_F32 = struct.Struct("f")
_enabled = True


def _to_float32(v: float) -> float:
    try:
        return _F32.unpack(_F32.pack(v))[0]
    except OverflowError:  # rounds past the largest float32: IEEE gives infinity
        return math.copysign(math.inf, v)


_ROUNDING: dict[torch.dtype, Rounding] = {torch.float32: _to_float32, torch.float64: float}


@contextlib.contextmanager
def disabled() -> Iterator[None]:
    """Use the tensor ops everywhere inside the block (tests compare the two paths)."""
    global _enabled
    previous, _enabled = _enabled, False
    try:
        yield
    finally:
        _enabled = previous


def read(*tensors: Tensor) -> tuple[Rounding, list[float]] | None:
    """The rounding of the tensors' dtype and their values as Python floats, when all are eager,
    CPU, 0-d float32/float64 tensors of one dtype that need no gradient and hold finite values;
    otherwise None (use the tensor ops)."""
    if not _enabled or torch.compiler.is_compiling():
        return None
    dtype = tensors[0].dtype
    for t in tensors:
        if (type(t) is not Tensor or t.dim() != 0 or t.dtype != dtype or not t.is_cpu or t.requires_grad
                or torch._C._functorch.is_functorch_wrapped_tensor(t)):
            return None
    rnd = _ROUNDING.get(dtype)
    if rnd is None:
        return None
    values = [t.item() for t in tensors]
    return (rnd, values) if all(math.isfinite(v) for v in values) else None


def scalar(value: float, like: Tensor) -> Tensor:
    """A new 0-d tensor holding ``value`` (exactly representable in ``like``'s dtype)."""
    return torch.scalar_tensor(value, dtype=like.dtype)


def ema(prev: tuple[float, float], cur: tuple[float, float], decay: float,
        rnd: Rounding) -> tuple[float, float]:
    """``prev * decay + (1 - decay) * cur`` for (min, max), as the tensor ops round it."""
    keep, new = rnd(decay), rnd(1 - decay)
    return tuple(rnd(rnd(p * keep) + rnd(c * new)) for p, c in zip(prev, cur))  # type: ignore[return-value]


def qparams(lo: float, hi: float, qmin: int, qmax: int, *, symmetric: bool, zero: float,
            eps: float, largest: float, rnd: Rounding) -> tuple[float, float]:
    """Scale and zero point of :func:`~purecompress.quant.qparams.quant_params` (per tensor)."""
    rmin, rmax = min(lo, 0.0), max(hi, 0.0)
    if symmetric:
        scale = min(max(rnd(max(-rmin, rmax) / rnd((qmax - qmin) / 2)), eps), largest)
        return scale, zero
    scale = min(max(rnd(rnd(rmax - rmin) / rnd(float(qmax - qmin))), eps), largest)
    zero_point = rnd(qmin - float(round(rnd(rmin / scale))))
    return scale, float(min(max(zero_point, qmin), qmax))


def codes_in_range(lo: float, hi: float, scale: float, zero_point: float, qmin: int, qmax: int,
                   rnd: Rounding) -> bool:
    """Whether ``round(x / scale + zero_point)`` is in ``[qmin, qmax]`` for ``x = lo`` and ``x = hi``."""
    return (qmin <= round(rnd(rnd(lo / scale) + zero_point))
            and round(rnd(rnd(hi / scale) + zero_point)) <= qmax)
