"""NNI 2.x's quantizer base (``nni.compression.pytorch.compressor``): :class:`Quantizer`,
:class:`QuantizerModuleWrapper`, :class:`QuantGrad`, :class:`QuantForward`, and the export of a
quantized model (``export_model``, calibration files, QDQ ONNX).
"""

from __future__ import annotations

import copy
import enum
import logging
import os
import types
from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

import attrs
import torch
from torch import Tensor, nn

from purecompress.compat.quantization.utils import get_bits_length
from purecompress.compat.schema import schema_errors
from purecompress.graph import GraphCaptureError, capture
from purecompress.quant import QUANT_TYPES, QuantConfig, QuantParams, from_quant_config_list
from purecompress.quant.export import save_calibration
from purecompress.quant.fold import fold_conv_bn
from purecompress.quant.onnx_export import export_qdq_onnx
from purecompress.quant.ste import codes
from purecompress.selectors import ConfigError, select

__all__ = [
    "BN_FOLD_TAG",
    "LayerInfo",
    "OnnxPlan",
    "QuantForward",
    "QuantGrad",
    "QuantType",
    "Quantizer",
    "QuantizerIdentityWrapper",
    "QuantizerModuleWrapper",
]


if TYPE_CHECKING:
    from purecompress.quant.config import QuantConfig


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
        return codes(x, scale, zero_point)

    @classmethod
    def get_bits_length(cls, config: Mapping[str, Any], quant_type: str) -> int | None:
        """Bits of ``quant_type`` in an NNI config (:func:`purecompress.compat.quantization.utils.get_bits_length`)."""
        return get_bits_length(config, quant_type)

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



@attrs.frozen
class OnnxPlan:
    """What ``export_model(onnx_path=...)`` quantizes, keyed by the names of the unwrapped model.

    Attributes:
        weights: parameter name -> parameters of its QuantizeLinear/DequantizeLinear.
        inputs: module name -> parameters for its input.
        outputs: module name -> parameters for its output.
        replace: parameter name -> value baked into the exported copy (folded conv weights/biases,
            non-affine quantized weights such as DoReFa's or BNN's).
        identities: modules replaced by identities in the exported copy (folded BatchNorms).
    """

    weights: Mapping[str, QuantParams] = attrs.field(factory=dict)
    inputs: Mapping[str, QuantParams] = attrs.field(factory=dict)
    outputs: Mapping[str, QuantParams] = attrs.field(factory=dict)
    replace: Mapping[str, Tensor] = attrs.field(factory=dict)
    identities: tuple[str, ...] = ()



class _QuantizerExport:
    """The export half of :class:`~purecompress.compat.quantization.base.Quantizer` (abstract).

    ``Quantizer`` sets the attributes annotated below in its constructor and provides
    ``_unwrap_model``; the algorithms set :attr:`simulated_attrs` and override the two hooks.
    """

    bound_model: nn.Module
    dummy_input: Any
    modules_to_compress: list[tuple[LayerInfo, dict[str, Any]]]
    #: Attributes the algorithm adds to a quantized module, removed on export.
    simulated_attrs: tuple[str, ...] = ()
    #: The ONNX plan ``export_model`` takes while the modules are still wrapped, for ``export_model_save``.
    _export_onnx_plan: OnnxPlan | None = None

    # -- what the algorithms implement for export -----------------------------------------------

    def _calibration_config(self) -> dict[str, dict[str, Any]]:
        return {}

    def _onnx_plan(self) -> OnnxPlan:
        return OnnxPlan()

    def _unwrap_model(self) -> None:
        """Put the original modules back in place (:class:`Quantizer` implements it)."""
        raise NotImplementedError(f"{type(self).__name__} must implement _unwrap_model")

    # -- export ---------------------------------------------------------------------------------

    def _restore_module(self, module: nn.Module) -> None:
        """Give ``module`` back its float Parameters and drop the simulation attributes."""
        old_weight = getattr(module, "old_weight", None)
        if isinstance(old_weight, nn.Parameter):
            delattr(module, "weight")
            del module.old_weight
            module.register_parameter("weight", old_weight)
        if getattr(module, BN_FOLD_TAG, False):
            old_bias = getattr(module, "old_bias", None)
            delattr(module, "bias")
            if isinstance(old_bias, nn.Parameter):
                del module.old_bias
                module.register_parameter("bias", old_bias)
            else:
                module.bias = None
            delattr(module, BN_FOLD_TAG)
        for name in self.simulated_attrs:
            if hasattr(module, name):
                delattr(module, name)

    def export_model(self, model_path: str | os.PathLike[str], calibration_path: str | os.PathLike[str] | None = None,
                     onnx_path: str | os.PathLike[str] | None = None, input_shape: Sequence[int] | None = None,
                     device: torch.device | str | None = None) -> dict[str, dict[str, Any]]:
        """Save the float state_dict (original keys), the calibration config and optionally ONNX.

        The model is unwrapped afterwards (as in NNI): it holds its original float weights.

        Args:
            model_path: where to ``torch.save`` the state_dict.
            calibration_path: where to save the calibration config (``.safetensors``: safe format;
                anything else: NNI's ``torch.save`` format).
            onnx_path: where to write a QDQ ONNX model (needs ``input_shape`` or ``dummy_input``).
            input_shape: shape of the example input for the ONNX export.
            device: device of that example input.

        Returns:
            The calibration config ``{layer: {'weight_bits': ..., ...}}``.
        """
        if model_path is None:
            raise ValueError("model_path must be specified")
        self._export_onnx_plan = self._onnx_plan() if onnx_path is not None else None
        calibration = self._calibration_config()
        self._unwrap_model()
        for layer, _ in self.modules_to_compress:
            self._restore_module(layer.module)
        if "steps" in self.bound_model._buffers:
            del self.bound_model._buffers["steps"]
        self.export_model_save(self.bound_model, model_path, calibration, calibration_path, onnx_path,
                               input_shape, device)
        return calibration

    def export_model_save(self, model: nn.Module, model_path: str | os.PathLike[str],
                          calibration_config: Mapping[str, Any] | None = None,
                          calibration_path: str | os.PathLike[str] | None = None,
                          onnx_path: str | os.PathLike[str] | None = None,
                          input_shape: Sequence[int] | None = None, device: torch.device | str | None = None) -> None:
        """Save ``model``'s state_dict, the calibration config and (optionally) a QDQ ONNX model."""
        example: Any = None
        if onnx_path is not None:  # check before writing anything: no partial exports
            if input_shape is not None:
                example = (torch.zeros(*input_shape, device=device or "cpu"),)
            elif self.dummy_input is not None:
                example = self.dummy_input if isinstance(self.dummy_input, tuple) else (self.dummy_input,)
            else:
                raise ValueError("exporting ONNX needs an example input: pass input_shape "
                                 "(or dummy_input to the quantizer)")
        torch.save(model.state_dict(), os.fspath(model_path))
        if calibration_path is not None:
            if os.fspath(calibration_path).endswith(".safetensors"):
                save_calibration(calibration_path, calibration_config or {})
            else:
                torch.save(dict(calibration_config or {}), os.fspath(calibration_path))
        if onnx_path is None:
            return
        plan = self._export_onnx_plan or self._onnx_plan()
        target = model
        if plan.replace or plan.identities:
            target = copy.deepcopy(model)
            with torch.no_grad():
                for name, value in plan.replace.items():
                    parent, _, leaf = name.rpartition(".")
                    owner = target.get_submodule(parent) if parent else target
                    setattr(owner, leaf, nn.Parameter(value.detach().clone()))
            for name in plan.identities:
                _set_submodule(target, name, nn.Identity())
        export_qdq_onnx(target, example, onnx_path, weights=plan.weights, inputs=plan.inputs, outputs=plan.outputs)


logger = logging.getLogger(__name__)


_NNI_KEYS = ("quant_types", "quant_bits", "quant_dtype", "quant_scheme", "quant_start_step",
             "op_types", "op_names", "exclude")  # fmt: skip



def _module_state(model: nn.Module) -> list[tuple[nn.Module, dict[str, Any], dict[str, Any], dict[str, Any],
                                                      dict[str, Any]]]:
    """Each submodule with copies of its child, parameter and buffer dicts and its attributes."""
    return [(m, dict(m._modules), dict(m._parameters), dict(m._buffers), dict(m.__dict__))
            for m in model.modules()]


def _restore_module_state(model: nn.Module, snapshot: list[tuple[nn.Module, dict[str, Any], dict[str, Any],
                                                                 dict[str, Any], dict[str, Any]]]) -> None:
    for module, children, params, buffers, attrs_ in snapshot:
        module.__dict__.clear()
        module.__dict__.update(attrs_)
        for slot, saved in (("_modules", children), ("_parameters", params), ("_buffers", buffers)):
            current = module.__dict__[slot]
            current.clear()
            current.update(saved)
    del model


def record_shapes(model: nn.Module, dummy_input: Any, names: Sequence[str]) -> dict[str, tuple[Any, Any]]:
    """``{module: (first input's shape, output's shape)}`` of one forward of ``dummy_input`` (NNI's
    ``all_shapes``; empty without it). The forward runs on a copy, so BatchNorm statistics stay."""
    if dummy_input is None or not names:
        return {}
    copied = copy.deepcopy(model)
    shapes: dict[str, tuple[Any, Any]] = {}

    def hook(name: str) -> Callable[..., None]:
        def record(_: nn.Module, inputs: tuple[Any, ...], output: Any) -> None:
            first = inputs[0] if inputs and isinstance(inputs[0], Tensor) else None
            shapes.setdefault(name, (None if first is None else first.shape,
                                     output.shape if isinstance(output, Tensor) else None))
        return record

    handles = [copied.get_submodule(name).register_forward_hook(hook(name)) for name in names]
    try:
        with torch.no_grad():
            copied(*dummy_input) if isinstance(dummy_input, tuple) else copied(dummy_input)
    finally:
        for handle in handles:
            handle.remove()
    return shapes



class Quantizer(_QuantizerExport):
    """Base of the NNI-style quantizers: wraps the selected modules of ``model`` in place.

    Args:
        model: the model; selected modules are wrapped in place.
        config_list: NNI quantization configs (``quant_types``, ``quant_bits``, ``op_types`` ...).
        optimizer: patched so that ``step()`` also calls :meth:`step_with_optimizer`; the new
            ``old_weight`` Parameters are added to it.
        dummy_input: example inputs; enables Conv2d-BatchNorm2d folding (NNI semantics) and records
            each selected module's input and output shapes in ``all_shapes``.
    """

    #: Op types / bits / quant types / config keys the algorithm accepts (None: any).
    allowed_op_types: tuple[str, ...] | None = None
    allowed_bits: tuple[int, ...] | None = None
    allowed_quant_types: tuple[str, ...] = QUANT_TYPES
    allowed_keys: tuple[str, ...] = _NNI_KEYS
    min_bits: int | None = None

    def __init__(self, model: nn.Module, config_list: Sequence[Mapping[str, Any]],
                 optimizer: torch.optim.Optimizer | None = None, dummy_input: Any = None) -> None:
        if isinstance(model, nn.DataParallel):
            model = model.module
        if not isinstance(model, nn.Module):
            raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
        self.bound_model = model
        self.config_list = config_list
        self.optimizer = optimizer
        self.dummy_input = dummy_input
        self.quant_configs = self.validate_config(model, config_list)
        self.identity_wrappers: list[QuantizerIdentityWrapper] = []
        self.conv_bn_patterns: dict[str, str] = {}
        self.modules_wrapper: list[QuantizerModuleWrapper] = []
        snapshot = _module_state(model)
        try:  # all or nothing: on any exception (Ctrl-C included) the model is as it was
            self.find_conv_bn_patterns(model, dummy_input)
            self.modules_to_compress = self._detect_modules_to_compress()
            self.all_shapes = record_shapes(model, dummy_input, [layer.name for layer, _ in self.modules_to_compress])
            self.modules_wrapper = [self._wrap_modules(layer, config) for layer, config in self.modules_to_compress]
            if not self.modules_wrapper:
                logger.warning("nothing is configured to quantize; check the model and config_list")
            self._wrap_model()
        except BaseException:
            _restore_module_state(model, snapshot)
            raise
        self.quant_grad: Callable[..., Tensor | None] = QuantGrad.apply
        if optimizer is not None:
            self.patch_optimizer(self.step_with_optimizer)
            for wrapper in self.modules_wrapper:
                for name in ("old_weight", "old_bias"):
                    if isinstance(getattr(wrapper.module, name, None), nn.Parameter):
                        optimizer.add_param_group({"params": getattr(wrapper.module, name)})

    # -- configuration and wrapping -------------------------------------------------------------

    def validate_config(self, model: nn.Module, config_list: Sequence[Mapping[str, Any]]) -> tuple[QuantConfig, ...]:
        """Parse and check ``config_list`` with this algorithm's rules.

        Raises:
            SchemaError: a ConfigError naming the entry index, the key and the reason; also NNI's
                ``schema.SchemaError``.
        """
        with schema_errors():
            return self._validate_config(model, config_list)

    def _validate_config(self, model: nn.Module, config_list: Sequence[Mapping[str, Any]]) -> tuple[QuantConfig, ...]:
        if not isinstance(config_list, (list, tuple)):
            raise ConfigError(None, None, f"config_list must be a list of dicts, got {type(config_list).__name__}")
        for index, entry in enumerate(config_list):
            if isinstance(entry, Mapping):
                bad = [k for k in entry if k not in self.allowed_keys]
                if bad:
                    raise ConfigError(index, str(bad[0]), f"not accepted by {type(self).__name__}; "
                                      f"allowed keys: {list(self.allowed_keys)}")
        configs = from_quant_config_list(config_list, allowed_op_types=self.allowed_op_types,
                                         allowed_bits=self.allowed_bits, allowed_quant_types=self.allowed_quant_types,
                                         min_bits=self.min_bits)
        for entry in select(model, configs, warn=False):
            if "weight" in entry.config.specs and not _has_tensor(model.get_submodule(entry.module), "weight"):
                raise ConfigError(entry.index, "quant_types", f"module {entry.module!r} ({entry.type_name}) has no "
                                  "weight to quantize; drop 'weight' from quant_types for it, or select weighted "
                                  "modules only")
        return configs

    def _detect_modules_to_compress(self) -> list[tuple[LayerInfo, dict[str, Any]]]:
        plan = select(self.bound_model, self.quant_configs)
        self._layer_configs = {entry.module: entry.config for entry in plan}
        return [(LayerInfo(e.module, self.bound_model.get_submodule(e.module)), dict(self.config_list[e.index]))
                for e in plan]

    def _wrap_modules(self, layer: LayerInfo, config: dict[str, Any]) -> QuantizerModuleWrapper:
        quant_config = self._layer_configs[layer.name]
        bn_module = None
        bn_name = self.conv_bn_patterns.get(layer.name)
        if bn_name is not None and "weight" in quant_config.specs:
            bn_module = self.bound_model.get_submodule(bn_name)
            self.identity_wrappers.append(QuantizerIdentityWrapper(bn_module, bn_name))
        wrapper = QuantizerModuleWrapper(layer.module, layer.name, layer.type, config, self, bn_module)
        wrapper.quant_config = quant_config
        wrapper.train(layer.module.training)  # NNI's wrappers start in training mode even in an eval model
        for identity in self.identity_wrappers:
            identity.train(identity.module.training)
        return wrapper

    def _wrap_model(self) -> None:
        for wrapper in reversed(self.identity_wrappers):
            _set_submodule(self.bound_model, wrapper.module_name, wrapper)
        for wrapper in reversed(self.modules_wrapper):
            _set_submodule(self.bound_model, wrapper.name, wrapper)

    def _unwrap_model(self) -> None:
        for wrapper in self.identity_wrappers:
            _set_submodule(self.bound_model, wrapper.module_name, wrapper.module)
        for wrapper in self.modules_wrapper:
            _set_submodule(self.bound_model, wrapper.name, wrapper.module)

    def compress(self) -> nn.Module:
        """The model, wrapped (the wrapping already happened in the constructor, as in NNI)."""
        return self.bound_model

    def get_modules_to_compress(self) -> list[tuple[LayerInfo, dict[str, Any]]]:
        """``[(LayerInfo, config dict)]`` of the selected modules, in ``named_modules()`` order."""
        return self.modules_to_compress

    def get_modules_wrapper(self) -> list[QuantizerModuleWrapper]:
        """The wrappers, in ``named_modules()`` order."""
        return self.modules_wrapper

    def update_epoch(self, epoch: int) -> None:
        """Kept for NNI compatibility; nothing to do."""

    # -- what the algorithms implement ----------------------------------------------------------

    def quantize_weight(self, wrapper: QuantizerModuleWrapper, **kwargs: Any) -> Tensor | None:
        """The quantized ``wrapper.module.weight``."""
        raise NotImplementedError(f"{type(self).__name__} does not quantize weights")

    def quantize_input(self, inputs: Tensor, wrapper: QuantizerModuleWrapper, **kwargs: Any) -> Tensor:
        """The quantized input of ``wrapper``."""
        raise NotImplementedError(f"{type(self).__name__} does not quantize inputs")

    def quantize_output(self, output: Tensor, wrapper: QuantizerModuleWrapper, **kwargs: Any) -> Tensor:
        """The quantized output of ``wrapper``."""
        raise NotImplementedError(f"{type(self).__name__} does not quantize outputs")

    def step_with_optimizer(self) -> None:
        """Called after each ``optimizer.step()``."""

    def load_calibration_config(self, calibration_config: Mapping[str, Mapping[str, Any]]) -> None:
        """Set quantization parameters from a calibration config (see the algorithms)."""
        raise NotImplementedError(f"{type(self).__name__} cannot load a calibration config")

    # -- optimizer, BN folding --------------------------------------------------------------------

    def patch_optimizer(self, *tasks: Callable[[], None]) -> None:
        """Make ``optimizer.step()`` run ``tasks`` after the original step."""
        if self.optimizer is None:
            return
        old_step = self.optimizer.step

        def new_step(_: torch.optim.Optimizer, *args: Any, **kwargs: Any) -> Any:
            output = old_step(*args, **kwargs)
            for task in tasks:
                task()
            return output

        self.optimizer.step = types.MethodType(new_step, self.optimizer)  # type: ignore[method-assign]

    def find_conv_bn_patterns(self, model: nn.Module, dummy_input: Any) -> None:
        """Record ``{conv name: bn name}`` for each Conv2d whose only consumer is a BatchNorm2d."""
        if dummy_input is None:
            logger.debug("no dummy_input: batch normalization folding is disabled")
            return
        try:
            graph = capture(model, dummy_input)
        except GraphCaptureError as err:
            logger.warning("batch normalization folding is disabled: %s", err)
            return
        modules = dict(model.named_modules())
        for node in graph.graph.nodes:
            if node.op != "call_module" or not isinstance(modules.get(node.target), nn.Conv2d):
                continue
            users = list(node.users)
            if len(users) == 1 and users[0].op == "call_module" \
                    and isinstance(modules.get(users[0].target), nn.BatchNorm2d):
                self.conv_bn_patterns[node.target] = users[0].target

    def fold_bn(self, *inputs: Tensor, wrapper: QuantizerModuleWrapper) -> tuple[Tensor, Tensor]:
        """Folded ``(weight, bias)`` of ``wrapper``'s conv and BN; updates BN statistics while training."""
        module, bn = wrapper.module, wrapper.bn_module
        with torch.no_grad():
            # NNI's call order: the statistics pass runs the conv as it stands, i.e. with the
            # (fake-quantized, folded) weight and the folded bias of the previous forward.
            bn(module(*inputs))
        return fold_conv_bn(module.old_weight, getattr(module, "old_bias", None), bn.weight, bn.bias,
                            bn.running_mean, bn.running_var, bn.eps)
