"""How an NNI 2.x ``Quantizer`` exports: the float state_dict, the calibration config, QDQ ONNX.

:class:`_QuantizerExport` is the abstract export half of
:class:`~purecompress.compat.quantization_base.Quantizer` (its only subclass, which supplies
``bound_model``, ``dummy_input``, ``modules_to_compress`` and ``_unwrap_model``): it restores each
wrapped module's float Parameters, drops the algorithm's simulation attributes, and saves what the
algorithm reports through its two hooks, ``_calibration_config`` and ``_onnx_plan`` (an
:class:`OnnxPlan`). :class:`OnnxPlan` is re-exported by :mod:`purecompress.compat.quantization_base`.
"""

from __future__ import annotations

import copy
import os
from collections.abc import Mapping, Sequence
from typing import Any

import attrs
import torch
from torch import Tensor, nn

from purecompress.compat.quantization_wrappers import BN_FOLD_TAG, LayerInfo, _set_submodule
from purecompress.quant import QuantParams
from purecompress.quant.export import save_calibration
from purecompress.quant.onnx_export import export_qdq_onnx

__all__ = ["OnnxPlan"]


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
    """The export half of :class:`~purecompress.compat.quantization_base.Quantizer` (abstract).

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
