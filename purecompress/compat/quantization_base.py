"""NNI 2.x ``Quantizer``: selects and wraps modules, patches the optimizer, folds BN, exports.

The imperative shell around :mod:`purecompress.quant`; the algorithms subclass it
(``quantization_algorithms.py``, ``quantization_qat.py``). Differences from NNI 2.10 (bugs not
copied, each with a regression test in ``tests/test_quant_compat.py``):

- Conv-BN folding feeds BatchNorm the output of the *float* convolution to update its running
  statistics (NNI feeds it the previous step's folded, quantized weights), and folds only layers
  whose weight is quantized (NNI drops the BN of a conv that is quantized on input/output only).
- ``export_model`` writes a state_dict that loads into the original model (NNI leaves the
  ``steps`` buffer in it); ``calibration_path`` ending in ``.safetensors`` is saved safely;
  ``onnx_path`` writes QuantizeLinear/DequantizeLinear nodes (NNI exports the float model).
- Conv-BN patterns are found with ``torch.fx`` (:func:`purecompress.graph.capture`); BN folding is
  enabled by ``dummy_input`` as in NNI. A BN that is not the conv's only consumer is not folded.

Export (``export_model``, ``export_model_save``, :class:`OnnxPlan`) is the base class
:class:`~purecompress.compat.quantization_export._QuantizerExport`; :class:`OnnxPlan` is
re-exported here, so every name keeps this path.
"""

from __future__ import annotations

import logging
import types
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch
from torch import Tensor, nn

from purecompress.compat.quantization_export import OnnxPlan, _QuantizerExport
from purecompress.compat.quantization_wrappers import (
    LayerInfo,
    QuantGrad,
    QuantizerIdentityWrapper,
    QuantizerModuleWrapper,
    _set_submodule,
)
from purecompress.config import ConfigError
from purecompress.graph import GraphCaptureError, capture
from purecompress.quant import QUANT_TYPES, QuantConfig, from_quant_config_list
from purecompress.selection import select

__all__ = ["OnnxPlan", "Quantizer", "fold_bn_params"]

logger = logging.getLogger(__name__)

_NNI_KEYS = ("quant_types", "quant_bits", "quant_dtype", "quant_scheme", "quant_start_step",
             "op_types", "op_names", "exclude")  # fmt: skip


def fold_bn_params(weight: Tensor, bias: Tensor | None, bn: nn.modules.batchnorm._BatchNorm) -> tuple[Tensor, Tensor]:
    """Conv weight and bias with ``bn`` folded in (running statistics), differentiable.

    ``W' = W * gamma / sqrt(var + eps)`` per output channel, ``b' = beta + (b - mean) * gamma /
    sqrt(var + eps)``; ``gamma = 1, beta = 0`` for a BN without affine parameters.
    """
    # core-request: purecompress.quant fold_bn (see .notes/quant_requests.md)
    std = torch.sqrt(bn.running_var + bn.eps)
    gamma = bn.weight if bn.weight is not None else torch.ones_like(std)
    beta = bn.bias if bn.bias is not None else torch.zeros_like(std)
    factor = gamma / std
    new_weight = weight * factor.reshape([-1] + [1] * (weight.dim() - 1))
    new_bias = beta + ((bias if bias is not None else torch.zeros_like(std)) - bn.running_mean) * factor
    return new_weight, new_bias


class Quantizer(_QuantizerExport):
    """Base of the NNI-style quantizers: wraps the selected modules of ``model`` in place.

    Args:
        model: the model; selected modules are wrapped in place.
        config_list: NNI quantization configs (``quant_types``, ``quant_bits``, ``op_types`` ...).
        optimizer: patched so that ``step()`` also calls :meth:`step_with_optimizer`; the new
            ``old_weight`` Parameters are added to it.
        dummy_input: example inputs; enables Conv2d-BatchNorm2d folding (NNI semantics).
    """

    #: Op types / bits / quant types / config keys the algorithm accepts (None: any).
    allowed_op_types: tuple[str, ...] | None = None
    allowed_bits: tuple[int, ...] | None = None
    allowed_quant_types: tuple[str, ...] = QUANT_TYPES
    allowed_keys: tuple[str, ...] = _NNI_KEYS

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
        self.find_conv_bn_patterns(model, dummy_input)
        self.modules_to_compress = self._detect_modules_to_compress()
        self.modules_wrapper = [self._wrap_modules(layer, config) for layer, config in self.modules_to_compress]
        if not self.modules_wrapper:
            logger.warning("nothing is configured to quantize; check the model and config_list")
        self._wrap_model()
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
            ConfigError: naming the entry index, the key and the reason.
        """
        del model
        for index, entry in enumerate(config_list):
            if isinstance(entry, Mapping):
                bad = [k for k in entry if k not in self.allowed_keys]
                if bad:
                    raise ConfigError(index, str(bad[0]), f"not accepted by {type(self).__name__}; "
                                      f"allowed keys: {list(self.allowed_keys)}")
        return from_quant_config_list(config_list, allowed_op_types=self.allowed_op_types,
                                      allowed_bits=self.allowed_bits, allowed_quant_types=self.allowed_quant_types)

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
        old_bias = getattr(module, "old_bias", None)
        with torch.no_grad():
            bn(module._conv_forward(inputs[0], module.old_weight, old_bias))
        return fold_bn_params(module.old_weight, old_bias, bn)
