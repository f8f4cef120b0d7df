"""Saving and loading quantization parameters safely: safetensors tensors plus a JSON header.

Two things are saved:

- :class:`~purecompress.quant.qparams.QuantParams` by tensor name (``save_quant_params`` /
  ``load_quant_params``): scales and zero points as tensors, ``qmin``/``qmax``/``axis`` in JSON.
- NNI calibration configs (``save_calibration`` / ``load_calibration``): the
  ``{layer: {'weight_bits': 8, 'weight_scale': tensor, 'tracked_min_input': 0.1, ...}}`` dicts that
  NNI's ``Quantizer.export_model`` returns. Tensors go into safetensors, numbers into JSON.

Nothing here unpickles. safetensors files hold raw tensors and a JSON header; NNI's own
``torch.save`` calibration files are read by :func:`load_nni_calibration` with
``torch.load(..., weights_only=True)``, which refuses arbitrary objects.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping

import torch
from safetensors.torch import save_file
from torch import Tensor

from purecompress._files import FileFormatError, read_safetensors
from purecompress.quant.qparams import QuantParams

__all__ = [
    "CalibrationConfig",
    "load_calibration",
    "load_nni_calibration",
    "load_quant_params",
    "save_calibration",
    "save_quant_params",
]

#: NNI calibration config: ``{layer: {key: int | float | Tensor}}``.
CalibrationConfig = dict[str, dict[str, "int | float | Tensor"]]

_QP_KEY = "purecompress.quant_params"
_CAL_KEY = "purecompress.calibration"
_SEP = "/"  # layer and key names never contain '/'


def save_quant_params(
    path: str | os.PathLike[str],
    qparams: Mapping[str, QuantParams],
    *,
    metadata: Mapping[str, str] | None = None,
) -> None:
    """Write ``qparams`` (tensor name -> :class:`QuantParams`) to a safetensors file.

    Args:
        path: destination file (``.safetensors`` by convention).
        qparams: e.g. ``{'conv1.weight': QuantParams(scale [C], zero_point [C], -127, 127, 0)}``.
        metadata: extra string entries for the header (e.g. the algorithm name).

    >>> import tempfile
    >>> qp = {'fc.weight': QuantParams(torch.tensor([0.1, 0.2]), torch.zeros(2), -127, 127, 0)}
    >>> path = os.path.join(tempfile.mkdtemp(), 'qp.safetensors')
    >>> save_quant_params(path, qp); load_quant_params(path) == qp
    True
    """
    tensors: dict[str, Tensor] = {}
    header: dict[str, dict[str, int | None]] = {}
    for name, qp in qparams.items():
        tensors[f"{name}{_SEP}scale"] = qp.scale.detach().cpu().contiguous()
        tensors[f"{name}{_SEP}zero_point"] = qp.zero_point.detach().cpu().contiguous()
        header[name] = {"qmin": int(qp.qmin), "qmax": int(qp.qmax), "axis": qp.axis}
        if qp.group_size is not None:
            header[name]["group_size"] = int(qp.group_size)
    meta = dict(metadata or {})
    meta[_QP_KEY] = json.dumps(header)
    save_file(tensors, os.fspath(path), metadata=meta)


_QP_FIELDS = {"qmin", "qmax", "axis", "group_size"}


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _checked_qparams(path: str, name: str, info: object, scale: Tensor, zero_point: Tensor) -> QuantParams:
    """The :class:`QuantParams` of tensor ``name``, its header entry ``info`` checked against its tensors."""
    where = f"{path!r}: tensor {name!r}"
    if not isinstance(info, dict):
        raise FileFormatError(f"{where}: the header entry {info!r} is not a mapping")
    missing, unknown = {"qmin", "qmax", "axis"} - set(info), set(info) - _QP_FIELDS
    if missing or unknown:
        raise FileFormatError(f"{where}: the header entry misses {sorted(missing)} "
                              f"or has unknown keys {sorted(unknown)}")
    qmin, qmax, axis, group_size = info["qmin"], info["qmax"], info["axis"], info.get("group_size")
    if not (_is_int(qmin) and _is_int(qmax)) or not qmin < qmax:
        raise FileFormatError(f"{where}: qmin={qmin!r}, qmax={qmax!r} must be ints with qmin < qmax")
    if axis is not None and not (_is_int(axis) and axis >= 0):
        raise FileFormatError(f"{where}: axis={axis!r} must be null (per tensor) or a non-negative int")
    if group_size is not None and not (_is_int(group_size) and group_size > 0 and axis == 0):
        raise FileFormatError(f"{where}: group_size={group_size!r} must be a positive int, with axis 0")
    if not (scale.is_floating_point() and zero_point.is_floating_point()) or scale.shape != zero_point.shape:
        raise FileFormatError(f"{where}: scale ({scale.dtype}, {tuple(scale.shape)}) and zero point "
                              f"({zero_point.dtype}, {tuple(zero_point.shape)}) must be float tensors of one shape")
    if scale.dim() != (0 if axis is None else 1):
        raise FileFormatError(f"{where}: a scale of shape {tuple(scale.shape)} does not fit axis={axis!r} "
                              "(0-d per tensor, 1-D per channel)")
    if not bool(torch.isfinite(scale).all() and (scale > 0).all()):
        raise FileFormatError(f"{where}: the scale must be finite and > 0")
    codes = zero_point.double()
    if not bool((codes == codes.round()).all() and (codes >= qmin).all() and (codes <= qmax).all()):
        raise FileFormatError(f"{where}: the zero point must hold integers in [qmin, qmax] = [{qmin}, {qmax}]")
    return QuantParams(scale, zero_point, qmin, qmax, axis, group_size)


def load_quant_params(path: str | os.PathLike[str]) -> dict[str, QuantParams]:
    """Read quantization parameters written by :func:`save_quant_params` (no unpickling).

    Raises:
        FileFormatError: the file is not a safetensors file, or its header does not describe
            valid parameters: a missing tensor or key, ``qmin``/``qmax`` that are not ints with
            ``qmin < qmax``, an ``axis`` that is neither null nor a non-negative int, a
            ``group_size`` that is not a positive int with axis 0, a scale that is not finite and
            > 0 or whose rank does not fit ``axis``, a zero point outside ``[qmin, qmax]`` (the
            message names the file and the tensor).
    """
    file = os.fspath(path)
    header, tensors = read_safetensors(file, _QP_KEY, "quantization parameters")
    if not isinstance(header, dict):
        raise FileFormatError(f"{file!r}: the {_QP_KEY!r} header is not a mapping of tensor names")
    out = {}
    for name, info in header.items():
        try:
            scale, zero_point = tensors[f"{name}{_SEP}scale"], tensors[f"{name}{_SEP}zero_point"]
        except KeyError as err:
            raise FileFormatError(f"{file!r}: tensor {err.args[0]!r} named in the header is missing") from None
        out[name] = _checked_qparams(file, name, info, scale, zero_point)
    return out


def save_calibration(path: str | os.PathLike[str], config: Mapping[str, Mapping[str, object]]) -> None:
    """Write an NNI calibration config safely (tensors to safetensors, numbers to JSON).

    Args:
        path: destination file.
        config: ``{layer: {key: int | float | bool | str | Tensor}}`` as returned by
            ``Quantizer.export_model``.

    Raises:
        TypeError: for a value that is neither a number, a string nor a tensor.

    >>> import tempfile
    >>> cal = {'fc': {'weight_bits': 8, 'weight_scale': torch.tensor([0.02]), 'tracked_min_input': -1.5}}
    >>> path = os.path.join(tempfile.mkdtemp(), 'cal.safetensors')
    >>> save_calibration(path, cal); out = load_calibration(path)
    >>> out['fc']['weight_bits'], out['fc']['tracked_min_input'], out['fc']['weight_scale']
    (8, -1.5, tensor([0.0200]))
    """
    tensors: dict[str, Tensor] = {}
    numbers: dict[str, dict[str, int | float | bool | str]] = {}
    for layer, entries in config.items():
        if _SEP in layer:
            raise ValueError(f"layer name {layer!r} contains {_SEP!r}")
        numbers[layer] = {}
        for key, value in entries.items():
            if isinstance(value, Tensor):
                tensors[f"{layer}{_SEP}{key}"] = value.detach().cpu().contiguous()
            elif isinstance(value, (bool, int, float, str)):
                numbers[layer][key] = value
            else:
                raise TypeError(f"calibration[{layer!r}][{key!r}] is a {type(value).__name__}; "
                                "only numbers, strings and tensors can be saved")
    save_file(tensors, os.fspath(path), metadata={_CAL_KEY: json.dumps(numbers)})


def load_calibration(path: str | os.PathLike[str]) -> CalibrationConfig:
    """Read a calibration config written by :func:`save_calibration` (no unpickling)."""
    numbers, tensors = read_safetensors(path, _CAL_KEY, "calibration")
    if not isinstance(numbers, dict) or not all(isinstance(v, dict) for v in numbers.values()):
        raise FileFormatError(f"{os.fspath(path)!r}: the {_CAL_KEY!r} header is not a "
                              "{layer: {key: value}} mapping")
    out: CalibrationConfig = {layer: dict(entries) for layer, entries in numbers.items()}
    for name, tensor in tensors.items():
        layer, _, key = name.partition(_SEP)
        out.setdefault(layer, {})[key] = tensor
    return out


def load_nni_calibration(path: str | os.PathLike[str]) -> CalibrationConfig:
    """Read a calibration file written by NNI (``torch.save`` of the dict) with ``weights_only=True``.

    Raises:
        ValueError: the file does not hold a ``{layer: {key: value}}`` dict.
        pickle.UnpicklingError: the file holds objects other than tensors and plain containers
            (``weights_only`` refuses them: nothing is executed).
    """
    data = torch.load(os.fspath(path), map_location="cpu", weights_only=True)
    if not isinstance(data, Mapping) or not all(isinstance(v, Mapping) for v in data.values()):
        raise ValueError(f"{os.fspath(path)!r} does not hold an NNI calibration dict")
    return {str(layer): dict(entries) for layer, entries in data.items()}
