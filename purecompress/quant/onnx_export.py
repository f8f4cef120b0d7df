"""ONNX export with QuantizeLinear/DequantizeLinear (QDQ) nodes, through the dynamo exporter.

:func:`export_qdq_onnx` runs the model (a private copy, in eval mode) with its quantized weights,
inputs and outputs replaced by ``torch.fake_quantize_per_{tensor,channel}_affine``, which
``torch.onnx.export(..., dynamo=True)`` translates into a QuantizeLinear/DequantizeLinear pair
(per tensor, or per channel with the ``axis`` attribute). ONNX only knows the 8-bit ranges
``[0, 255]``, ``[0, 127]`` and ``[-128, 127]``; a narrower range (NNI's signed ``[-127, 127]``, or
fewer than 8 bits) is exported as the enclosing 8-bit QDQ followed by a clamp to
``scale * ([qmin, qmax] - zero_point)``, which is exactly the same function.

:func:`qdq_forward` is the PyTorch reference: the same forward with purecompress's
:func:`~purecompress.quant.qparams.fake_quantize`. onnxruntime's output matches it up to
round-half-to-even ties (at most one quantization step; in practice ~1e-7).

Nothing here modifies the model it is given.
"""

from __future__ import annotations

import copy
import os
import warnings
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import onnx
import torch
from torch import Tensor, nn
from torch.func import functional_call

from purecompress.quant.qparams import QuantParams, fake_quantize, grouped_view
from purecompress.quant.transform import QuantState

__all__ = ["export_qdq_onnx", "onnx_fake_quantize", "qdq_forward", "qdq_targets"]


def qdq_targets(state: QuantState) -> dict[str, dict[str, QuantParams]]:
    """Split a functional :class:`QuantState` into :func:`export_qdq_onnx`'s keyword arguments.

    ``'<module>.weight'`` entries go to ``weights`` (keyed by the parameter name), ``'<module>.input'``
    and ``'<module>.output'`` to ``inputs`` / ``outputs`` (keyed by the module name); tensors without
    parameters (never observed, or not affine such as DoReFa's) are left out.

    >>> qp = QuantParams(torch.tensor(0.1), torch.tensor(0.), -127, 127)
    >>> from purecompress.quant.transform import TensorState
    >>> state = QuantState(torch.tensor(1), {'fc.weight': TensorState(None, qp), 'fc.output': TensorState()})
    >>> {k: list(v) for k, v in qdq_targets(state).items()}
    {'weights': ['fc.weight'], 'inputs': [], 'outputs': []}
    """
    out: dict[str, dict[str, QuantParams]] = {"weights": {}, "inputs": {}, "outputs": {}}
    for key, tensor_state in state.tensors.items():
        if tensor_state.qparams is None:
            continue
        module, _, kind = key.rpartition(".")
        if kind == "weight":
            out["weights"][key] = tensor_state.qparams
        else:
            out[f"{kind}s"][module] = tensor_state.qparams
    return out


def _onnx_range(qp: QuantParams) -> tuple[int, int]:
    """The ONNX 8-bit range that contains ``[qmin, qmax]``."""
    if qp.qmin >= 0 and qp.qmax <= 255:
        return (0, 127) if qp.qmax <= 127 else (0, 255)
    if qp.qmin >= -128 and qp.qmax <= 127:
        return -128, 127
    raise ValueError(f"ONNX QuantizeLinear supports 8-bit ranges only; [{qp.qmin}, {qp.qmax}] does not fit "
                     "in [0, 255] or [-128, 127]")


def onnx_fake_quantize(x: Tensor, qp: QuantParams) -> Tensor:
    """Fake quantization written with the aten ops that export to ONNX QuantizeLinear/DequantizeLinear.

    Same values as :func:`~purecompress.quant.qparams.fake_quantize` (up to rounding ties).

    Args:
        x: any shape; per channel, ``x.shape[qp.axis]`` equals ``qp.scale.numel()``.
        qp: 8-bit-representable parameters (see :func:`_onnx_range`).

    >>> qp = QuantParams(torch.tensor(0.5), torch.tensor(0.), -127, 127)
    >>> onnx_fake_quantize(torch.tensor([-100., 0.3, 0.8]), qp)
    tensor([-63.5000,   0.5000,   1.0000])
    """
    if qp.group_size is not None:  # exported as Reshape, per-channel QuantizeLinear/DequantizeLinear, Reshape
        view, flat = grouped_view(x, qp)
        return onnx_fake_quantize(view, flat).reshape(x.shape)
    lo, hi = _onnx_range(qp)
    if qp.axis is None:
        scale, zero_point = float(qp.scale), int(qp.zero_point)
        y = torch.fake_quantize_per_tensor_affine(x, scale, zero_point, lo, hi)
        if (lo, hi) != (qp.qmin, qp.qmax):
            y = torch.clamp(y, scale * (qp.qmin - zero_point), scale * (qp.qmax - zero_point))
        return y
    scale = qp.scale.detach().to(x.dtype)
    zero_point = qp.zero_point.detach().round().to(torch.int32)
    y = torch.fake_quantize_per_channel_affine(x, scale, zero_point, qp.axis, lo, hi)
    if (lo, hi) != (qp.qmin, qp.qmax):
        s, z = qp.broadcast(x.dim())
        y = torch.clamp(y, (s * (qp.qmin - z)).to(x.dtype), (s * (qp.qmax - z)).to(x.dtype))
    return y


def _detached(qparams: Mapping[str, QuantParams]) -> dict[str, QuantParams]:
    return {n: QuantParams(qp.scale.detach(), qp.zero_point.detach(), qp.qmin, qp.qmax, qp.axis, qp.group_size)
            for n, qp in qparams.items()}


class _QuantizedCall(nn.Module):
    """``model`` run with fake-quantized weights (functional_call) and temporary activation hooks."""

    def __init__(self, model: nn.Module, weights: Mapping[str, QuantParams], inputs: Mapping[str, QuantParams],
                 outputs: Mapping[str, QuantParams], fq: Callable[[Tensor, QuantParams], Tensor]) -> None:
        super().__init__()
        self.model = model
        self.weights, self.inputs, self.outputs = _detached(weights), _detached(inputs), _detached(outputs)
        self.fq = fq
        names = dict(model.named_modules())
        params = dict(model.named_parameters())
        for name in self.weights:
            if name not in params:
                raise KeyError(f"weights: {name!r} is not a parameter of the model")
        for name in (*self.inputs, *self.outputs):
            if name not in names:
                raise KeyError(f"{name!r} is not a module of the model")

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        params = {n: p for n, p in self.model.named_parameters()}
        for name, qp in self.weights.items():
            params[name] = self.fq(params[name], qp)
        modules = dict(self.model.named_modules())
        handles = []
        for name, qp in self.inputs.items():
            hook = lambda _m, a, qp=qp: (self.fq(a[0], qp), *a[1:])
            handles.append(modules[name].register_forward_pre_hook(hook))
        for name, qp in self.outputs.items():
            handles.append(modules[name].register_forward_hook(lambda _m, _a, out, qp=qp: self.fq(out, qp)))
        try:
            return functional_call(self.model, params, args, kwargs)
        finally:
            for handle in handles:
                handle.remove()


def _prepared(model: nn.Module, weights: Mapping[str, QuantParams], inputs: Mapping[str, QuantParams] | None,
              outputs: Mapping[str, QuantParams] | None, fq: Callable[[Tensor, QuantParams], Tensor]) -> _QuantizedCall:
    return _QuantizedCall(copy.deepcopy(model).eval(), weights, inputs or {}, outputs or {}, fq).eval()


def qdq_forward(
    model: nn.Module,
    args: Sequence[Any],
    *,
    weights: Mapping[str, QuantParams],
    inputs: Mapping[str, QuantParams] | None = None,
    outputs: Mapping[str, QuantParams] | None = None,
    kwargs: Mapping[str, Any] | None = None,
) -> Any:
    """The fake-quantized eval-mode forward that :func:`export_qdq_onnx` exports (reference).

    Args:
        model: float model (not modified; a copy runs in eval mode).
        args: positional model inputs.
        weights: parameter name (``'conv1.weight'``) -> its :class:`QuantParams`.
        inputs: module name -> parameters for its first input.
        outputs: module name -> parameters for its output.
        kwargs: keyword model inputs (a Hugging Face model's ``input_ids``, ``attention_mask``, ...).
    """
    with torch.no_grad():
        return _prepared(model, weights, inputs, outputs, fake_quantize)(*args, **dict(kwargs or {}))


def export_qdq_onnx(
    model: nn.Module,
    args: Sequence[Any],
    path: str | os.PathLike[str] | None = None,
    *,
    weights: Mapping[str, QuantParams],
    inputs: Mapping[str, QuantParams] | None = None,
    outputs: Mapping[str, QuantParams] | None = None,
    opset_version: int | None = None,
    dynamic_shapes: Any = None,
    kwargs: Mapping[str, Any] | None = None,
) -> onnx.ModelProto:
    """Export ``model`` to ONNX with QuantizeLinear/DequantizeLinear around the quantized tensors.

    Args:
        model: float model (not modified).
        args: example positional inputs, e.g. ``(torch.randn(1, 3, 32, 32),)``; ``()`` when the
            model takes keyword inputs only.
        path: where to write the ``.onnx`` file (None: only return the model).
        weights: parameter name -> :class:`QuantParams` (per channel: ``axis`` 0).
        inputs: module name -> parameters for the module's first input (per channel: axis 1).
        outputs: module name -> parameters for the module's output.
        opset_version: ONNX opset (default: the exporter's; QDQ per channel needs >= 13).
        dynamic_shapes: passed to ``torch.onnx.export``.
        kwargs: example keyword inputs (a Hugging Face model's ``{'input_ids': ..., 'attention_mask':
            ...}``); the ONNX graph takes them as inputs after the positional ones, under their names.

    Returns:
        The ONNX model (also saved to ``path`` when given).

    Raises:
        ValueError: a range that is not 8-bit representable.
        KeyError: a name that is not in the model.
    """
    for qp in (*weights.values(), *(inputs or {}).values(), *(outputs or {}).values()):
        _onnx_range(qp)
    wrapper = _prepared(model, weights, inputs, outputs, onnx_fake_quantize)
    options: dict[str, Any] = {"dynamo": True, "dynamic_shapes": dynamic_shapes, "verbose": False}
    if opset_version is not None:
        options["opset_version"] = opset_version
    if kwargs:
        options["kwargs"] = dict(kwargs)
    with warnings.catch_warnings():
        # The exporter's own deprecation chatter (torch internals), not the caller's concern.
        warnings.simplefilter("ignore", FutureWarning)
        warnings.simplefilter("ignore", DeprecationWarning)
        program = torch.onnx.export(wrapper, tuple(args), **options)
    if program is None:  # pragma: no cover - dynamo=True always returns a program
        raise RuntimeError("torch.onnx.export returned no program")
    if path is not None:
        program.save(os.fspath(path))
    return program.model_proto
