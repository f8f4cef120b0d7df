"""Weight-only quantization parameters per row or per group of columns, and round-to-nearest.

A ``[out, in]`` weight quantized with group size ``g`` has one scale and zero point per row and
group of ``g`` consecutive input columns. They are stored as a per-channel
:class:`~purecompress.quant.QuantParams` (``axis=0``) of the view ``weight.reshape(-1, g)``
(row ``o``, group ``k`` at index ``o * in // g + k``): per-row quantization is the case
``g = in``, exactly the per-channel weight parameters the existing export paths take.
"""

from __future__ import annotations

from collections.abc import Iterable

import attrs
from torch import Tensor

import purecompress as pc
import purecompress.quant as pq

__all__ = ["fake_quantize_weight", "rtn", "rtn_quantize", "weight_qparams"]


def _group(weight: Tensor, group_size: int | None) -> int:
    if weight.dim() != 2:
        raise ValueError(f"weight-only quantization takes [out, in] weights, got shape {tuple(weight.shape)}")
    g = weight.shape[1] if group_size is None else group_size
    if isinstance(g, bool) or not isinstance(g, int) or g <= 0 or weight.shape[1] % g:
        raise ValueError(f"group_size must divide the input dim {weight.shape[1]}, got {group_size!r}")
    return g


def weight_qparams(weight: Tensor, *, bits: int = 4, group_size: int | None = None,
                   symmetric: bool = False) -> pq.QuantParams:
    """Min/max quantization parameters of each row (``group_size=None``) or row and column group.

    Args:
        weight: ``[out, in]``.
        bits: 2..8.
        group_size: columns per group (divides ``in``); None for one group per row.
        symmetric: signed narrow range around 0 (``[-(2^(b-1)-1), 2^(b-1)-1]``) instead of the
            affine unsigned range ``[0, 2^b - 1]``.

    Returns:
        Per-channel :class:`~purecompress.quant.QuantParams` over ``weight.reshape(-1, g)``
        (``scale``: ``[out * in // g]``, float32); grouped ones carry ``group_size``, so
        ``pq.fake_quantize(weight, qp)``, the safetensors files and the QDQ ONNX export take them as they are.

    >>> import torch
    >>> qp = weight_qparams(torch.tensor([[0., 1., 2., 3.]]), bits=2, group_size=2)
    >>> qp.scale, qp.zero_point, (qp.qmin, qp.qmax)
    (tensor([0.3333, 1.0000]), tensor([0., 0.]), (0, 3))
    """
    if isinstance(bits, bool) or not isinstance(bits, int) or not 2 <= bits <= 8:
        raise ValueError(f"bits must be an int in 2..8, got {bits!r}")
    rows = weight.detach().float().reshape(-1, _group(weight, group_size))
    scheme = "per_channel_symmetric" if symmetric else "per_channel_affine"
    qp = pq.quant_params(rows.amin(1), rows.amax(1), bits=bits, dtype="int" if symmetric else "uint",
                         scheme=scheme, axis=0)
    return qp if group_size is None else attrs.evolve(qp, group_size=group_size)


def fake_quantize_weight(weight: Tensor, qp: pq.QuantParams, group_size: int | None = None) -> Tensor:
    """``weight`` rounded onto the grid of :func:`weight_qparams`'s ``qp`` (same dtype and shape).

    Args:
        weight: ``[out, in]``.
        qp: per-channel parameters of ``weight.reshape(-1, group_size or in)``.
        group_size: the group size ``qp`` was made for.
    """
    g = _group(weight, group_size)
    return pq.fake_quantize(weight.float().reshape(-1, g), qp).reshape(weight.shape).to(weight.dtype)


def rtn_quantize(weight: Tensor, *, bits: int = 4, group_size: int | None = None,
                 symmetric: bool = False) -> tuple[Tensor, pq.QuantParams]:
    """Round-to-nearest weight quantization (the baseline GPTQ improves on).

    Args:
        weight: ``[out, in]``, any float dtype (rounded in float32).
        bits: 2..8.
        group_size: columns per group; None per row.
        symmetric: see :func:`weight_qparams`.

    Returns:
        ``(dequantized weight in weight's dtype, qparams)``.

    >>> import torch
    >>> w, qp = rtn_quantize(torch.tensor([[0., 1.1, 2.2, 2.9]]), bits=2)
    >>> w
    tensor([[0.0000, 0.9667, 1.9333, 2.9000]])
    """
    qp = weight_qparams(weight, bits=bits, group_size=group_size, symmetric=symmetric)
    return fake_quantize_weight(weight, qp, group_size), qp


def rtn(params: pc.Params, targets: Iterable[str], *, bits: int = 4, group_size: int | None = None,
        symmetric: bool = False) -> tuple[pc.Params, dict[str, pq.QuantParams]]:
    """:func:`rtn_quantize` on each weight of ``targets`` (no calibration data).

    Returns:
        ``(new params with the targets quantized, name -> qparams)``; ``params`` is not written.
    """
    out = dict(params)
    qparams = {}
    for name in targets:
        out[name], qparams[name] = rtn_quantize(params[name], bits=bits, group_size=group_size, symmetric=symmetric)
    return out, qparams
