"""Integer ranges, quantization parameters and (fake) quantization as pure tensor functions.

The math is NNI 2.10's QAT math (see ``NNI_PARITY.md``): ranges are widened to include 0, the
symmetric scale is ``max|x| / ((qmax - qmin) / 2)``, the affine scale ``(max - min) / (qmax - qmin)``
with ``zero_point = qmin - round(min / scale)``; quantization is ``round(clamp(x / s + zp))``.
One deliberate difference: the scale is clamped to ``[eps, float32 max]`` (``eps =
torch.finfo(float32).eps``), so an all-zero or constant range gives a finite scale > 0 where NNI
divides by zero and produces NaN.
"""

from __future__ import annotations

from typing import Literal

import torch
from torch import Tensor

from purecompress._pytree import record, static
from purecompress.quant import hostmath

__all__ = [
    "DTYPES",
    "LOW_PRECISION",
    "SCALE_EPS",
    "SCHEMES",
    "QuantParams",
    "dequantize",
    "fake_quantize",
    "int_range",
    "is_per_channel",
    "is_symmetric",
    "quant_params",
    "quantize",
]

Dtype = Literal["int", "uint"]
Scheme = Literal["per_tensor_affine", "per_tensor_symmetric", "per_channel_affine", "per_channel_symmetric"]
DTYPES: tuple[str, ...] = ("int", "uint")
SCHEMES: tuple[str, ...] = (
    "per_tensor_affine", "per_tensor_symmetric", "per_channel_affine", "per_channel_symmetric",
)  # fmt: skip
#: Floating dtypes whose quantization math runs in float32 (the result is cast back to the dtype).
LOW_PRECISION: tuple[torch.dtype, ...] = (torch.float16, torch.bfloat16)
#: Smallest scale :func:`quant_params` returns (NNI returns 0 and then NaN for a zero range).
SCALE_EPS = float(torch.finfo(torch.float32).eps)
_SCALE_MAX = float(torch.finfo(torch.float32).max)


def int_range(bits: int, dtype: str = "uint", *, narrow: bool = True) -> tuple[int, int]:
    """The integer range ``(qmin, qmax)`` of ``bits``-bit ``dtype``.

    Args:
        bits: 1..31.
        dtype: ``'int'`` (signed) or ``'uint'``.
        narrow: signed only: NNI's symmetric ``[-(2^(b-1)) + 1, 2^(b-1) - 1]`` (True) or the full
            two's complement range ``[-2^(b-1), 2^(b-1) - 1]`` (False, LSQ).

    >>> int_range(8, 'int'), int_range(8, 'uint'), int_range(8, 'int', narrow=False)
    ((-127, 127), (0, 255), (-128, 127))
    """
    if isinstance(bits, bool) or not isinstance(bits, int) or not 0 < bits < 32:
        raise ValueError(f"bits must be an int in 1..31, got {bits!r}")
    if dtype == "int":
        return -(2 ** (bits - 1)) + (1 if narrow else 0), 2 ** (bits - 1) - 1
    if dtype == "uint":
        return 0, 2**bits - 1
    raise ValueError(f"dtype must be 'int' or 'uint', got {dtype!r}")


def is_per_channel(scheme: str) -> bool:
    """Whether ``scheme`` is one of the per-channel schemes."""
    _check_scheme(scheme)
    return scheme.startswith("per_channel")


def is_symmetric(scheme: str) -> bool:
    """Whether ``scheme`` is one of the symmetric schemes."""
    _check_scheme(scheme)
    return scheme.endswith("symmetric")


def _check_scheme(scheme: str) -> None:
    if scheme not in SCHEMES:
        raise ValueError(f"quant scheme must be one of {list(SCHEMES)}, got {scheme!r}")


@record
class QuantParams:
    """Scale and zero point of one quantized tensor.

    Attributes:
        scale: ``[]`` (per tensor) or ``[C]`` (per channel), float, > 0.
        zero_point: same shape as ``scale``, float holding integers in ``[qmin, qmax]``.
        qmin: smallest integer (static).
        qmax: largest integer (static).
        axis: None per tensor; the channel dimension of the quantized tensor per channel (0 for
            weights, 1 for activations).
        group_size: None, or (with ``axis=0``) parameters per group of ``group_size`` consecutive
            elements along the last dimension: the channels of ``x.reshape(-1, group_size)``
            (group-wise weight quantization, e.g. GPTQ's; ``scale``: ``[x.numel() // group_size]``).
    """

    scale: Tensor
    zero_point: Tensor
    qmin: int = static()
    qmax: int = static()
    axis: int | None = static(default=None)
    group_size: int | None = static(default=None)

    @property
    def per_channel(self) -> bool:
        """Whether these are per-channel parameters."""
        return self.axis is not None

    def broadcast(self, ndim: int) -> tuple[Tensor, Tensor]:
        """``(scale, zero_point)`` reshaped to broadcast against a tensor of rank ``ndim``."""
        if self.axis is None:
            return self.scale, self.zero_point
        if not 0 <= self.axis < ndim:
            raise ValueError(f"per-channel parameters on axis {self.axis} applied to a tensor of rank {ndim}")
        shape = [1] * ndim
        shape[self.axis] = -1
        return self.scale.reshape(shape), self.zero_point.reshape(shape)


def quant_params(
    min_val: Tensor,
    max_val: Tensor,
    *,
    bits: int = 8,
    dtype: str = "uint",
    scheme: str = "per_tensor_affine",
    axis: int | None = None,
    qrange: tuple[int, int] | None = None,
) -> QuantParams:
    """Scale and zero point for the observed range ``[min_val, max_val]`` (NNI's formulas).

    Args:
        min_val: ``[]`` per tensor, ``[C]`` per channel.
        max_val: same shape as ``min_val``.
        bits: bit width (ignored when ``qrange`` is given).
        dtype: ``'int'`` or ``'uint'``; for symmetric uint the zero point is ``(qmin + qmax) // 2``.
        scheme: one of :data:`SCHEMES`.
        axis: channel dimension for per-channel schemes (default 0, the weight convention).
        qrange: explicit ``(qmin, qmax)`` instead of :func:`int_range` ``(bits, dtype)``.

    Returns:
        :class:`QuantParams`; the scale is finite and >= :data:`SCALE_EPS` for any finite range.

    >>> w = torch.arange(1., 19.).view(2, 1, 3, 3)
    >>> qp = quant_params(w.min(), w.max(), bits=8, dtype='int', scheme='per_tensor_affine')
    >>> round(qp.scale.item() * 254, 4), qp.zero_point.item()
    (18.0, -127.0)
    """
    qmin, qmax = qrange if qrange is not None else int_range(bits, dtype)
    if not qmin < qmax:
        raise ValueError(f"the integer range [{qmin}, {qmax}] has fewer than two codes (1-bit 'int' has only 0): "
                         "use 'uint' at 1 bit, or more bits")
    if min_val.dtype in LOW_PRECISION:  # float16/bfloat16 cannot hold the float32 clamp bounds, nor
        # the codes of wide ranges exactly: their parameters are computed and kept in float32
        min_val, max_val = min_val.float(), max_val.float()
    per_channel = is_per_channel(scheme)
    if per_channel and min_val.dim() != 1:
        raise ValueError(f"{scheme} needs 1-D per-channel min/max, got shape {tuple(min_val.shape)}")
    if not per_channel and min_val.dim() != 0:
        raise ValueError(f"{scheme} needs 0-d min/max, got shape {tuple(min_val.shape)}")
    symmetric = is_symmetric(scheme)
    zero = float(min(max((qmin + qmax) // 2 if dtype == "uint" else 0, qmin), qmax))  # symmetric only
    if not per_channel and (host := hostmath.read(min_val, max_val)):
        rnd, ends = host
        scale_v, zero_v = hostmath.qparams(*ends, qmin, qmax, symmetric=symmetric, zero=zero, eps=SCALE_EPS,
                                        largest=_SCALE_MAX, rnd=rnd)
        return QuantParams(hostmath.scalar(scale_v, min_val), hostmath.scalar(zero_v, min_val), qmin, qmax, None)
    rmin = torch.clamp(min_val, max=0.0)
    rmax = torch.clamp(max_val, min=0.0)
    if symmetric:
        abs_max = torch.maximum(-rmin, rmax)
        scale = torch.clamp(abs_max / (float(qmax - qmin) / 2), SCALE_EPS, _SCALE_MAX)
        zero_point = torch.full_like(scale, zero)
    else:
        scale = torch.clamp((rmax - rmin) / float(qmax - qmin), SCALE_EPS, _SCALE_MAX)
        zero_point = torch.clamp(qmin - torch.round(rmin / scale), qmin, qmax)
    return QuantParams(scale, zero_point, qmin, qmax, (0 if axis is None else axis) if per_channel else None)


def grouped_view(x: Tensor, qp: QuantParams) -> tuple[Tensor, QuantParams]:
    """``x`` and ``qp`` as plain per-channel ones: ``(x.reshape(-1, group_size), qp without groups)``.

    Unchanged when ``qp.group_size`` is None; reshape the result back with ``.reshape(x.shape)``.

    Raises:
        ValueError: the groups do not tile ``x`` (``group_size`` must divide ``x``'s last
            dimension, ``axis`` be 0, and ``scale`` hold one entry per group).

    >>> qp = QuantParams(torch.tensor([1., 2.]), torch.zeros(2), -8, 7, 0, group_size=2)
    >>> view, flat = grouped_view(torch.zeros(1, 4), qp)
    >>> tuple(view.shape), flat.group_size
    ((2, 2), None)
    """
    g = qp.group_size
    if g is None:
        return x, qp
    if (isinstance(g, bool) or not isinstance(g, int) or g <= 0 or qp.axis != 0 or x.dim() < 1
            or x.shape[-1] % g or qp.scale.numel() != x.numel() // g or qp.zero_point.shape != qp.scale.shape):
        raise ValueError(f"group-wise parameters (group_size={g!r}, axis={qp.axis!r}, {qp.scale.numel()} scales) "
                         f"do not tile a tensor of shape {tuple(x.shape)}: groups run along the last dimension "
                         "with axis 0 and one scale per group")
    return x.reshape(-1, g), QuantParams(qp.scale, qp.zero_point, qp.qmin, qp.qmax, 0)


def quantize(x: Tensor, qp: QuantParams) -> Tensor:
    """Integer codes ``round(clamp(x / scale + zero_point, qmin, qmax))`` (float dtype of ``x``).

    >>> qp = QuantParams(torch.tensor(0.5), torch.tensor(3.), 0, 7)
    >>> quantize(torch.tensor([-9., 0., 1., 9.]), qp)
    tensor([0., 3., 5., 7.])
    """
    if qp.group_size is not None:
        view, flat = grouped_view(x, qp)
        return quantize(view, flat).reshape(x.shape)
    scale, zero_point = qp.broadcast(x.dim())
    if x.dtype in LOW_PRECISION:
        return torch.round(torch.clamp(x.float() / scale + zero_point, qp.qmin, qp.qmax)).to(x.dtype)
    return torch.round(torch.clamp(x / scale + zero_point, qp.qmin, qp.qmax))


def dequantize(q: Tensor, qp: QuantParams) -> Tensor:
    """Real values ``scale * (q - zero_point)`` of integer codes ``q``.

    >>> dequantize(torch.tensor([0., 3., 5.]), QuantParams(torch.tensor(0.5), torch.tensor(3.), 0, 7))
    tensor([-1.5000,  0.0000,  1.0000])
    """
    if qp.group_size is not None:
        view, flat = grouped_view(q, qp)
        return dequantize(view, flat).reshape(q.shape)
    scale, zero_point = qp.broadcast(q.dim())
    if q.dtype in LOW_PRECISION:
        return (scale * (q.float() - zero_point)).to(q.dtype)
    return scale * (q - zero_point)


def fake_quantize(x: Tensor, qp: QuantParams) -> Tensor:
    """``dequantize(quantize(x))``: ``x`` rounded onto the quantization grid (no custom gradient).

    >>> fake_quantize(torch.tensor([0.3, 0.74, 5.]), QuantParams(torch.tensor(0.5), torch.tensor(0.), 0, 3))
    tensor([0.5000, 0.5000, 1.5000])
    """
    if x.dtype in LOW_PRECISION:  # codes above 2048 are not exact in float16: stay in float32 between
        return dequantize(quantize(x.float(), qp), qp).to(x.dtype)
    return dequantize(quantize(x, qp), qp)
