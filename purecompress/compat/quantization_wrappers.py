"""NNI 2.x quantization object API: the module wrappers, ``QuantGrad`` and ``QuantForward``.

Wrappers replace modules in place as NNI does: ``module.old_weight`` is the trainable Parameter and
``module.weight`` a plain tensor that the quantizer rewrites each forward. Unlike NNI, the gradient
always reaches ``old_weight`` (the wrapper hands the quantizer a view of it, not its ``.data``).
"""

from __future__ import annotations

import enum
import logging
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor, nn

if TYPE_CHECKING:
    from purecompress.compat.quantization_base import Quantizer
    from purecompress.quant.config import QuantConfig

__all__ = [
    "BN_FOLD_TAG",
    "LayerInfo",
    "QuantForward",
    "QuantGrad",
    "QuantType",
    "QuantizerIdentityWrapper",
    "QuantizerModuleWrapper",
]

logger = logging.getLogger(__name__)

#: Attribute set on a module whose BatchNorm is folded into it (NNI's name).
BN_FOLD_TAG = "BN_FOLD_TAG"


class QuantType(str, enum.Enum):
    """Which tensor of a layer is quantized (compares equal to the plain strings)."""

    INPUT = "input"
    WEIGHT = "weight"
    OUTPUT = "output"

    def type_to_scale_zero_point_name(self) -> tuple[str, str]:
        """Buffer names of this type's scale and zero point, e.g. ``('weight_scale', 'weight_zero_point')``."""
        return f"{self.value}_scale", f"{self.value}_zero_point"


class LayerInfo:
    """A selected module: ``name`` (qualified), ``module``, ``type`` (class name)."""

    def __init__(self, name: str, module: nn.Module) -> None:
        self.module = module
        self.name = name
        self.type = type(module).__name__


def _set_submodule(model: nn.Module, name: str, module: nn.Module) -> None:
    parent, _, leaf = name.rpartition(".")
    setattr(model.get_submodule(parent) if parent else model, leaf, module)


def _has_tensor(module: nn.Module, name: str) -> bool:
    return isinstance(getattr(module, name, None), Tensor)


class QuantizerModuleWrapper(nn.Module):
    """Wraps one module: quantizes its input, weight and output through the quantizer.

    With ``'weight'`` in ``config['quant_types']`` the weight Parameter moves to
    ``module.old_weight`` and ``module.weight`` becomes a plain tensor (a buffer) holding the
    quantized weight of the last forward. With a folded BatchNorm (``bn_module``) the bias moves to
    ``module.old_bias`` the same way.
    """

    #: The parsed config, set by the quantizer that wraps the module (None: a wrapper made by hand).
    quant_config: QuantConfig | None = None

    def __init__(self, module: nn.Module, module_name: str, module_type: str, config: dict[str, Any],
                 quantizer: Quantizer, bn_module: nn.Module | None = None) -> None:
        super().__init__()
        self.module = module
        self.name = module_name
        self.type = module_type
        self.config = config
        self.quantizer = quantizer
        self.bn_module = bn_module
        if "weight" not in config.get("quant_types", []):
            return
        if not _has_tensor(module, "weight"):
            logger.warning("module %s has no tensor 'weight'; its weight is not quantized", module_name)
            return
        module.register_parameter("old_weight", nn.Parameter(module.weight))
        delattr(module, "weight")
        module.register_buffer("weight", module.old_weight.data)
        if bn_module is not None:
            if _has_tensor(module, "bias"):
                module.register_parameter("old_bias", nn.Parameter(module.bias))
                init = module.old_bias.data
            else:
                init = torch.zeros_like(bn_module.weight if bn_module.weight is not None else bn_module.running_mean)
            delattr(module, "bias")
            module.register_buffer("bias", init)
            setattr(module, BN_FOLD_TAG, True)

    @property
    def quantizes_weight(self) -> bool:
        """Whether this wrapper moved the weight to ``old_weight``."""
        return isinstance(getattr(self.module, "old_weight", None), nn.Parameter)

    def forward(self, *inputs: Any) -> Any:
        quant_types = self.config.get("quant_types", [])
        if "input" in quant_types:
            if len(inputs) != 1:
                raise ValueError(f"{self.name}: input quantization supports modules with one input, got {len(inputs)}")
            inputs = (self.quantizer.quant_grad(inputs[0], QuantType.INPUT, self),)
        if "weight" in quant_types and self.quantizes_weight:
            if self.bn_module is not None:
                new_weight, new_bias = self.quantizer.fold_bn(*inputs, wrapper=self)
                self.module.bias = new_bias
            else:
                # A view, not the Parameter itself: assigning a Parameter would re-register it,
                # and a detached copy (NNI's `.data`) would cut the gradient to old_weight.
                new_weight = self.module.old_weight.view_as(self.module.old_weight)
            self.module.weight = new_weight
            quantized = self.quantizer.quant_grad(new_weight, QuantType.WEIGHT, self, inputs[0])
            if quantized is not None:
                self.module.weight = quantized
        result = self.module(*inputs)
        if "output" in quant_types:
            result = self.quantizer.quant_grad(result, QuantType.OUTPUT, self)
        return result


class QuantizerIdentityWrapper(nn.Module):
    """Stands in for a BatchNorm folded into the preceding conv: returns its input."""

    def __init__(self, module: nn.Module, module_name: str) -> None:
        super().__init__()
        self.module = module
        self.module_name = module_name

    def forward(self, x: Tensor) -> Tensor:
        return x


def _quantize_helper(tensor: Tensor, quant_type: str, wrapper: QuantizerModuleWrapper,
                     input_tensor: Tensor | None = None, **kwargs: Any) -> Tensor | None:
    quantizer = wrapper.quantizer
    if quant_type == QuantType.INPUT:
        return quantizer.quantize_input(tensor, wrapper=wrapper, **kwargs)
    if quant_type == QuantType.WEIGHT:
        return quantizer.quantize_weight(wrapper, input_tensor=input_tensor, **kwargs)
    if quant_type == QuantType.OUTPUT:
        return quantizer.quantize_output(tensor, wrapper, **kwargs)
    raise ValueError(f"unknown quant type {quant_type!r}")


class QuantGrad(torch.autograd.Function):
    """Runs a quantizer's ``quantize_*`` without autograd; the gradient is :meth:`quant_backward`.

    Subclass and override ``quant_backward`` for a custom gradient (the default is the plain
    straight-through estimator), then set ``quantizer.quant_grad = MyGrad.apply``.
    """

    @classmethod
    def _quantize(cls, x: Tensor, scale: Tensor, zero_point: Tensor) -> Tensor:
        """Unclamped integer codes ``round(x / scale + zero_point)``."""
        return torch.round(x / scale + zero_point)

    @classmethod
    def get_bits_length(cls, config: Mapping[str, Any], quant_type: str) -> int | None:
        """Bits of ``quant_type`` in an NNI config (``quant_bits`` int or per-type dict)."""
        bits = config["quant_bits"]
        return bits if isinstance(bits, int) else bits.get(quant_type)

    @staticmethod
    def quant_backward(tensor: Tensor, grad_output: Tensor, quant_type: str, scale: Tensor | None,
                       zero_point: Tensor | None, qmin: int, qmax: int) -> Tensor:
        """Gradient of the input from the gradient of the output; default: straight through."""
        return grad_output

    @staticmethod
    def forward(ctx: Any, tensor: Tensor, quant_type: str, wrapper: QuantizerModuleWrapper,
                input_tensor: Tensor | None = None) -> Tensor:
        output = _quantize_helper(tensor, quant_type, wrapper, input_tensor)
        kind = QuantType(quant_type).value
        specs = wrapper.quant_config.specs if wrapper.quant_config is not None else {}
        if kind in specs:
            ctx.qmin, ctx.qmax = specs[kind].qrange
        else:  # a hand-made wrapper: NNI's fallback range
            ctx.qmin, ctx.qmax = 0, (1 << (QuantGrad.get_bits_length(wrapper.config, kind) or 8)) - 1
        scale_name, zero_point_name = QuantType(quant_type).type_to_scale_zero_point_name()
        module = wrapper.module
        ctx.scale = getattr(module, scale_name, getattr(module, "scale", None))
        ctx.zero_point = getattr(module, zero_point_name, getattr(module, "zero_point", None))
        ctx.quant_type = quant_type
        ctx.save_for_backward(tensor)
        return tensor if output is None else output

    @classmethod
    def backward(cls, ctx: Any, grad_output: Tensor) -> tuple[Tensor | None, None, None, None]:
        (tensor,) = ctx.saved_tensors
        grad = cls.quant_backward(tensor, grad_output, ctx.quant_type, ctx.scale, ctx.zero_point, ctx.qmin, ctx.qmax)
        return grad, None, None, None


class QuantForward(nn.Module):
    """Calls a quantizer's ``quantize_*`` with autograd on (the quantizer supplies the gradient)."""

    def forward(self, tensor: Tensor, quant_type: str, wrapper: QuantizerModuleWrapper,
                input_tensor: Tensor | None = None, **kwargs: Any) -> Tensor | None:
        return _quantize_helper(tensor, quant_type, wrapper, input_tensor, **kwargs)
