"""NNI 2.10's quantization helpers (``nni.compression.pytorch.quantization.utils``), on the core.

Ranges come from :func:`purecompress.quant.qparams.int_range`, schemes from
:func:`purecompress.quant.qparams.is_per_channel`, observed ranges and means from
:func:`purecompress.quant.observers.current_range` / :func:`~purecompress.quant.observers.current_mean`;
what is left here is NNI's layout: weights are quantized per output channel (dim 0), activations
per channel of dim 1, and per-channel values keep the tensor's rank (``keepdim``).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from torch import Tensor

from purecompress.quant.observers import current_mean, current_range
from purecompress.quant.qparams import int_range
from purecompress.quant.qparams import is_per_channel as _core_is_per_channel

__all__ = [
    "calculate_qmin_qmax",
    "get_bits_length",
    "get_mean_value",
    "get_min_max_value",
    "get_quant_shape",
    "get_target_dim",
    "is_per_channel",
]


def calculate_qmin_qmax(bits: int, dtype: str) -> tuple[int, int]:
    """NNI's integer range: ``'int'`` is narrow (``[-(2^(b-1)) + 1, 2^(b-1) - 1]``), ``'uint'`` ``[0, 2^b - 1]``.

    >>> calculate_qmin_qmax(8, 'int'), calculate_qmin_qmax(8, 'uint')
    ((-127, 127), (0, 255))
    """
    return int_range(bits, str(dtype.value if hasattr(dtype, "value") else dtype))


def get_bits_length(config: Mapping[str, Any], quant_type: str) -> int | None:
    """Bits of ``quant_type`` in an NNI config (``quant_bits``: one int, or ``{quant_type: int}``).

    >>> get_bits_length({'quant_bits': {'weight': 4}}, 'weight'), get_bits_length({'quant_bits': 8}, 'input')
    (4, 8)
    """
    if "quant_bits" not in config:
        raise KeyError(f"the config has no 'quant_bits': {dict(config)}")
    bits = config["quant_bits"]
    return bits if isinstance(bits, int) else bits.get(str(getattr(quant_type, "value", quant_type)))


def is_per_channel(quant_scheme: str) -> bool:
    """Whether ``quant_scheme`` is ``'per_channel_affine'`` or ``'per_channel_symmetric'``."""
    return _core_is_per_channel(str(getattr(quant_scheme, "value", quant_scheme)))


def _channel_dim(quant_type: str) -> int:
    # NNI's layout: weights c_out x c_in x ...; feature maps batch x channel x ...
    return 0 if str(getattr(quant_type, "value", quant_type)) == "weight" else 1


def get_target_dim(quant_type: str, quant_scheme: str) -> int | None:
    """The channel dim a per-channel scheme quantizes along (0 for weights, 1 for activations); None per tensor.

    >>> get_target_dim('weight', 'per_channel_affine'), get_target_dim('input', 'per_channel_symmetric')
    (0, 1)
    >>> get_target_dim('weight', 'per_tensor_affine') is None
    True
    """
    return _channel_dim(quant_type) if is_per_channel(quant_scheme) else None


def get_quant_shape(shape: Sequence[int], quant_type: str, quant_scheme: str) -> list[int]:
    """Shape of the scale / zero point: the channel dim kept, others 1 (per channel), or ``[1]``.

    >>> get_quant_shape([2, 1, 3, 3], 'weight', 'per_channel_affine')
    [2, 1, 1, 1]
    >>> get_quant_shape([1, 1, 4, 4], 'input', 'per_tensor_affine')
    [1]
    """
    dim = get_target_dim(quant_type, quant_scheme)
    if dim is None:
        return [1]
    return [int(n) if d == dim else 1 for d, n in enumerate(shape)]


def get_min_max_value(x: Tensor, quant_type: str, quant_scheme: str) -> tuple[Tensor, Tensor]:
    """Min and max of ``x``: scalars per tensor, or per channel with the rank kept (:func:`get_quant_shape`).

    >>> import torch
    >>> lo, hi = get_min_max_value(torch.arange(6.).view(2, 3), 'weight', 'per_channel_affine')
    >>> lo.tolist(), hi.tolist()
    ([[0.0], [3.0]], [[2.0], [5.0]])
    """
    dim = get_target_dim(quant_type, quant_scheme)
    if dim is not None and not 0 <= dim < x.dim():
        raise ValueError(f"a {quant_type} tensor of shape {tuple(x.shape)} has no channel dim {dim}")
    rng = current_range(x, axis=dim)
    if dim is None:
        return rng.min, rng.max
    shape = get_quant_shape(x.shape, quant_type, quant_scheme)
    return rng.min.reshape(shape), rng.max.reshape(shape)


def get_mean_value(x: Tensor, target_dim: int | None = None) -> Tensor:
    """Mean of ``x``: a scalar, or per index of ``target_dim`` with the rank kept.

    >>> import torch
    >>> get_mean_value(torch.arange(6.).view(2, 3), 0).tolist()
    [[1.0], [4.0]]
    """
    if target_dim is None:
        return current_mean(x)
    if not 0 <= target_dim < x.dim():
        raise ValueError(f"target_dim {target_dim} is out of range for a tensor of shape {tuple(x.shape)}")
    return current_mean(x, axis=target_dim).reshape([int(n) if d == target_dim else 1 for d, n in enumerate(x.shape)])
