"""NNI's Naive, DoReFa, BNN and LSQ quantizers on the functional core.

Differences from NNI 2.10 (NNI bugs; regression tests in ``tests/test_quant_compat.py``):
``NaiveQuantizer`` exports (NNI raises NotImplementedError); LSQ trains the weights (NNI hands it
a detached copy, so they never change), exports weight-only configs (NNI crashes) and never gets a
zero step; ``ObserverQuantizer`` quantizes the weights in the forward after ``compress()`` (NNI
evaluates with the float weights) and refuses a model in training mode with a clear error.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import Tensor, nn

from purecompress.compat.quantization_base import OnnxPlan, Quantizer
from purecompress.compat.quantization_wrappers import QuantForward, QuantizerModuleWrapper
from purecompress.quant import (
    SCALE_EPS,
    QuantParams,
    binarize,
    dorefa_weight,
    int_range,
    lsq_fake_quantize,
    lsq_init_scale,
)

__all__ = ["BNNQuantizer", "DoReFaQuantizer", "LsqQuantizer", "NaiveQuantizer"]

logger = logging.getLogger(__name__)

_SELECT = ("op_types", "op_names", "exclude")


def _require_optimizer(name: str, optimizer: object) -> None:
    if not isinstance(optimizer, torch.optim.Optimizer):
        raise TypeError(f"{name} needs a torch.optim.Optimizer (it counts steps), got {type(optimizer).__name__}")


def _register_weight_bits(wrappers: Sequence[QuantizerModuleWrapper]) -> None:
    """A ``weight_bits`` buffer ``[1]`` on every module whose weight is quantized (NNI's modules carry it)."""
    for w in wrappers:
        if "weight" in w.quant_config.specs:
            w.module.register_buffer("weight_bits", torch.tensor([float(w.quant_config.bits("weight"))],
                                                                 device=w.module.weight.device))


def naive_quantize(weight: Tensor, scale: Tensor) -> Tensor:
    """``trunc(w / scale) * scale``: NNI casts to int8, which truncates toward zero."""
    # core-request: purecompress.quant naive_quantize (see .notes/quant_requests.md)
    return torch.trunc(weight / scale) * scale


class NaiveQuantizer(Quantizer):
    """8-bit weights with a running max scale ``max|w| / 127`` (NNI's ``NaiveQuantizer``)."""

    allowed_bits = (8,)
    allowed_quant_types = ("weight",)
    allowed_keys = ("quant_types", "quant_bits", *_SELECT)

    def __init__(self, model: nn.Module, config_list: Sequence[Mapping[str, Any]],
                 optimizer: torch.optim.Optimizer | None = None) -> None:
        super().__init__(model, config_list, optimizer)
        self.layer_scale: dict[str, Tensor] = {}

    def quantize_weight(self, wrapper: QuantizerModuleWrapper, **kwargs: Any) -> Tensor:
        weight = wrapper.module.weight
        scale = torch.clamp(weight.detach().abs().max() / 127, min=SCALE_EPS)
        if wrapper.name in self.layer_scale:
            scale = torch.maximum(self.layer_scale[wrapper.name], scale)
        self.layer_scale[wrapper.name] = scale
        return naive_quantize(weight, scale)

    def _calibration_config(self) -> dict[str, dict[str, Any]]:
        return {w.name: {"weight_bits": 8} for w in self.modules_wrapper}

    def _onnx_plan(self) -> OnnxPlan:
        weights, replace = {}, {}
        for w in self.modules_wrapper:
            if w.name in self.layer_scale and w.quantizes_weight:
                scale = self.layer_scale[w.name].detach()
                key = f"{w.name}.weight" if w.name else "weight"
                # Truncated codes are integers, so QuantizeLinear's rounding reproduces them exactly.
                replace[key] = naive_quantize(w.module.old_weight.detach(), scale)
                weights[key] = QuantParams(scale, torch.zeros(()), -127, 127)
        return OnnxPlan(weights=weights, replace=replace)


class DoReFaQuantizer(Quantizer):
    """DoReFa-Net weight quantization (NNI's ``DoReFaQuantizer``); plain STE gradient."""

    allowed_quant_types = ("weight",)
    allowed_keys = ("quant_types", "quant_bits", *_SELECT)
    simulated_attrs = ("weight_bits",)

    def __init__(self, model: nn.Module, config_list: Sequence[Mapping[str, Any]],
                 optimizer: torch.optim.Optimizer) -> None:
        _require_optimizer("DoReFaQuantizer", optimizer)
        super().__init__(model, config_list, optimizer)
        _register_weight_bits(self.modules_wrapper)

    def quantize_weight(self, wrapper: QuantizerModuleWrapper, **kwargs: Any) -> Tensor:
        return dorefa_weight(wrapper.module.weight, wrapper.quant_config.bits("weight"))

    def _calibration_config(self) -> dict[str, dict[str, Any]]:
        return {w.name: {"weight_bits": int(w.module.weight_bits)} for w in self.modules_wrapper
                if hasattr(w.module, "weight_bits")}

    def _onnx_plan(self) -> OnnxPlan:  # the grid is not affine-integer: bake the weights
        return OnnxPlan(replace={f"{w.name}.weight": dorefa_weight(w.module.old_weight.detach(),
                                                                      w.quant_config.bits("weight"))
                                 for w in self.modules_wrapper if w.quantizes_weight})


class BNNQuantizer(Quantizer):
    """Binarized weights and outputs (NNI's ``BNNQuantizer``): ``sign`` with 0 -> +1."""

    allowed_quant_types = ("weight", "output")
    allowed_keys = ("quant_types", "quant_bits", *_SELECT)
    simulated_attrs = ("weight_bits",)

    def __init__(self, model: nn.Module, config_list: Sequence[Mapping[str, Any]],
                 optimizer: torch.optim.Optimizer) -> None:
        _require_optimizer("BNNQuantizer", optimizer)
        super().__init__(model, config_list, optimizer)
        self.quant_grad = QuantForward()
        _register_weight_bits(self.modules_wrapper)

    def quantize_weight(self, wrapper: QuantizerModuleWrapper, **kwargs: Any) -> Tensor:
        wrapper.module.weight_bits.fill_(1.0)  # NNI reports 1 bit once the weights are binarized
        return binarize(wrapper.module.weight)

    def quantize_output(self, output: Tensor, wrapper: QuantizerModuleWrapper, **kwargs: Any) -> Tensor:
        return binarize(output, clip=True)

    def _calibration_config(self) -> dict[str, dict[str, Any]]:
        return {w.name: {"weight_bits": int(w.module.weight_bits)} for w in self.modules_wrapper
                if hasattr(w.module, "weight_bits")}

    def _onnx_plan(self) -> OnnxPlan:
        if any("output" in w.quant_config.specs for w in self.modules_wrapper):
            logger.warning("ONNX has no binarization op: BNN outputs are exported unquantized")
        return OnnxPlan(replace={f"{w.name}.weight": binarize(w.module.old_weight.detach())
                                 for w in self.modules_wrapper if w.quantizes_weight})


class LsqQuantizer(Quantizer):
    """Learned Step Size Quantization (NNI's ``LsqQuantizer``): the steps are Parameters."""

    simulated_attrs = ("old_weight", "tracked_min_input", "tracked_max_input", "tracked_min_output",
                       "tracked_max_output", "output_scale", "input_scale", "weight_scale", "weight_bits",
                       "output_bits", "input_bits", "weight_qmin", "weight_qmax", "input_qmin", "input_qmax",
                       "output_qmin", "output_qmax")

    def __init__(self, model: nn.Module, config_list: Sequence[Mapping[str, Any]], optimizer: torch.optim.Optimizer,
                 dummy_input: Any = None) -> None:
        _require_optimizer("LsqQuantizer", optimizer)
        super().__init__(model, config_list, optimizer, dummy_input)
        self.quant_grad = QuantForward()
        device = next(model.parameters()).device
        self.bound_model.register_buffer("steps", torch.tensor([1.0], device=device))
        for w in self.modules_wrapper:
            module = w.module
            for kind, spec in w.quant_config.specs.items():
                qmin, qmax = int_range(spec.bits, "int", narrow=False)
                if kind == "weight":
                    init = lsq_init_scale(module.weight, qmax)
                else:  # initialised from the first batch
                    init = torch.tensor([1.0], device=device)
                setattr(module, f"{kind}_scale", nn.Parameter(init))
                module.register_buffer(f"{kind}_bits", torch.tensor([float(spec.bits)], device=device))
                setattr(module, f"{kind}_qmin", qmin)
                setattr(module, f"{kind}_qmax", qmax)
                optimizer.add_param_group({"params": getattr(module, f"{kind}_scale")})

    def quantize_weight(self, wrapper: QuantizerModuleWrapper, **kwargs: Any) -> Tensor:
        m = wrapper.module
        return lsq_fake_quantize(m.weight, m.weight_scale, m.weight_qmin, m.weight_qmax)

    def _activation(self, x: Tensor, wrapper: QuantizerModuleWrapper, kind: str) -> Tensor:
        m = wrapper.module
        scale = getattr(m, f"{kind}_scale")
        if int(self.bound_model.steps) == 1:
            scale.data = lsq_init_scale(x, getattr(m, f"{kind}_qmax"))
        return lsq_fake_quantize(x, scale, getattr(m, f"{kind}_qmin"), getattr(m, f"{kind}_qmax"))

    def quantize_input(self, inputs: Tensor, wrapper: QuantizerModuleWrapper, **kwargs: Any) -> Tensor:
        return self._activation(inputs, wrapper, "input")

    def quantize_output(self, output: Tensor, wrapper: QuantizerModuleWrapper, **kwargs: Any) -> Tensor:
        return self._activation(output, wrapper, "output")

    def step_with_optimizer(self) -> None:
        """Count one optimizer step."""
        self.bound_model.steps.add_(1)

    def _calibration_config(self) -> dict[str, dict[str, Any]]:
        config = {}
        for w in self.modules_wrapper:
            m, entry = w.module, {}
            for kind in w.quant_config.specs:
                entry[f"{kind}_bits"] = int(getattr(m, f"{kind}_bits"))
                if kind != "weight":  # NNI also writes the input range here, and crashes without one
                    bound = float(getattr(m, f"{kind}_scale").detach().reshape(-1)[0] * getattr(m, f"{kind}_qmax"))
                    entry[f"tracked_min_{kind}"], entry[f"tracked_max_{kind}"] = -bound, bound
            config[w.name] = entry
        return config

    def load_calibration_config(self, calibration_config: Mapping[str, Mapping[str, Any]]) -> None:
        """Set the input/output steps to ``tracked_max / qmax``; bits must match.

        Raises:
            ValueError: a layer's bits differ from this quantizer's config.
        """
        for w in self.modules_wrapper:
            if w.name not in calibration_config:
                logger.warning("calibration config has no entry for module %s", w.name)
                continue
            entry, m = calibration_config[w.name], w.module
            for kind, spec in w.quant_config.specs.items():
                if entry.get(f"{kind}_bits") != spec.bits:
                    raise ValueError(f"calibration config: {w.name} {kind}_bits is {entry.get(f'{kind}_bits')!r}, "
                                     f"the quantizer uses {spec.bits}")
                if kind != "weight":
                    step = float(entry[f"tracked_max_{kind}"]) / getattr(m, f"{kind}_qmax")
                    scale = getattr(m, f"{kind}_scale")
                    scale.data = torch.tensor([max(step, SCALE_EPS)], device=scale.device)

    def _onnx_plan(self) -> OnnxPlan:
        plan: dict[str, dict[str, QuantParams]] = {"weight": {}, "input": {}, "output": {}}
        for w in self.modules_wrapper:
            m = w.module
            for kind in w.quant_config.specs:
                scale = getattr(m, f"{kind}_scale").detach().reshape(())
                qp = QuantParams(scale, torch.zeros(()), getattr(m, f"{kind}_qmin"), getattr(m, f"{kind}_qmax"))
                plan[kind][f"{w.name}.weight" if kind == "weight" else w.name] = qp
        return OnnxPlan(weights=plan["weight"], inputs=plan["input"], outputs=plan["output"])
