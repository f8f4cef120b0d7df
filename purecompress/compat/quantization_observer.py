"""NNI's ``ObserverQuantizer`` (post-training calibration) on the functional core.

Difference from NNI 2.10 (a bug; regression test in ``tests/test_quant_compat.py``): after
``compress()`` the forward quantizes the weights (NNI's wrapper puts the float weights back before
every forward, so its simulated model only quantizes activations). A model in training mode is
refused with a clear error (NNI asserts).
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import Tensor, nn

from purecompress.compat.quantization_base import OnnxPlan, Quantizer
from purecompress.compat.quantization_wrappers import QuantForward, QuantizerModuleWrapper
from purecompress.quant import QuantParams, Range, fake_quantize, minmax_range, quant_params

__all__ = ["ObserverQuantizer"]

_SELECT = ("op_types", "op_names", "exclude")


class ObserverQuantizer(Quantizer):
    """Post-training calibration (NNI's ``ObserverQuantizer``).

    Run the model in eval mode on calibration data, then call :meth:`compress`: weights become
    8-bit symmetric ([-127, 127], torch's MinMaxObserver scale ``max|w| / 127.5``), inputs and
    outputs 7-bit affine ([0, 127]) from a histogram observer (torch's ``HistogramObserver``
    collects the histogram; its L2 search picks the range; scale and zero point come from the core).
    """

    allowed_bits = (8,)
    allowed_keys = ("quant_types", "quant_bits", *_SELECT)
    simulated_attrs = ("weight_qmax", "weight_qmin", "input_qmax", "input_qmin", "output_qmax", "output_qmin",
                       "weight_scale", "weight_zero_point", "input_scale", "input_zero_point", "output_scale",
                       "output_zero_point")

    def __init__(self, model: nn.Module, config_list: Sequence[Mapping[str, Any]],
                 optimizer: torch.optim.Optimizer | None = None) -> None:
        if model.training:
            raise ValueError("ObserverQuantizer calibrates in evaluation mode: call model.eval() first")
        super().__init__(model, config_list, optimizer)
        self.quant_grad = QuantForward()
        self.compressed = False
        self.device = next(model.parameters()).device
        self.weight_ranges: dict[str, Range] = {}
        self.all_observers: dict[str, dict[str, Any]] = {w.name: {} for w in self.modules_wrapper}
        for w in self.modules_wrapper:
            for kind in w.quant_config.specs:
                qmin, qmax = (-127, 127) if kind == "weight" else (0, 127)
                setattr(w.module, f"{kind}_qmin", qmin)
                setattr(w.module, f"{kind}_qmax", qmax)
                if kind != "weight":
                    with warnings.catch_warnings():  # torch's deprecation note on reduce_range (NNI's setting)
                        warnings.simplefilter("ignore", UserWarning)
                        observer = torch.ao.quantization.HistogramObserver(reduce_range=True)
                    self.all_observers[w.name][kind] = observer

    def _qparams(self, name: str, kind: str) -> QuantParams:
        if kind == "weight":
            rng = self.weight_ranges[name]
            qp = quant_params(rng.min, rng.max, dtype="int", scheme="per_tensor_symmetric", qrange=(-128, 127))
            return QuantParams(qp.scale, qp.zero_point, -127, 127)
        observer = self.all_observers[name][kind]
        search = getattr(observer, "_non_linear_param_search", None)
        lo, hi = search() if search is not None else (observer.min_val, observer.max_val)
        return quant_params(lo, hi, dtype="uint", qrange=(0, 127))

    def _record(self, wrapper: QuantizerModuleWrapper, kind: str, x: Tensor) -> None:
        if kind == "weight":
            self.weight_ranges[wrapper.name] = minmax_range(self.weight_ranges.get(wrapper.name), x)
        else:
            self.all_observers[wrapper.name][kind](x.detach().cpu())

    def _observe(self, x: Tensor, wrapper: QuantizerModuleWrapper, kind: str) -> Tensor:
        """Before :meth:`compress`: record ``x`` and return it; after: ``x`` fake-quantized."""
        if self.compressed:
            return fake_quantize(x, _stored(wrapper.module, kind))
        self._record(wrapper, kind, x)
        return x

    def quantize_weight(self, wrapper: QuantizerModuleWrapper, **kwargs: Any) -> Tensor:
        return self._observe(wrapper.module.weight, wrapper, "weight")

    def quantize_input(self, inputs: Tensor, wrapper: QuantizerModuleWrapper, **kwargs: Any) -> Tensor:
        return self._observe(inputs, wrapper, "input")

    def quantize_output(self, output: Tensor, wrapper: QuantizerModuleWrapper, **kwargs: Any) -> Tensor:
        return self._observe(output, wrapper, "output")

    def compress(self) -> nn.Module:
        """Fix scales and zero points from the calibration data; later forwards are quantized."""
        for w in self.modules_wrapper:
            for kind in w.quant_config.specs:
                if kind == "weight" and w.name not in self.weight_ranges:
                    self._record(w, "weight", w.module.old_weight.detach())
                qp = self._qparams(w.name, kind)
                w.module.register_buffer(f"{kind}_scale", qp.scale.reshape(1).to(self.device))
                w.module.register_buffer(f"{kind}_zero_point", qp.zero_point.reshape(1).to(self.device))
        self.compressed = True
        return self.bound_model

    def _restore_module(self, module: nn.Module) -> None:
        quantized = None
        if self.compressed and isinstance(getattr(module, "old_weight", None), nn.Parameter):
            quantized = fake_quantize(module.old_weight.detach(), _stored(module, "weight"))
        super()._restore_module(module)
        if quantized is not None:  # NNI exports the fake-quantized weights
            module.weight.data.copy_(quantized)

    def _calibration_config(self) -> dict[str, dict[str, Any]]:
        config: dict[str, dict[str, Any]] = {}
        if not self.compressed:  # nothing calibrated yet
            return config
        for w in self.modules_wrapper:
            m, entry = w.module, {}
            for kind in w.quant_config.specs:
                scale, zp = getattr(m, f"{kind}_scale"), getattr(m, f"{kind}_zero_point")
                qmin, qmax = getattr(m, f"{kind}_qmin"), getattr(m, f"{kind}_qmax")
                entry[f"{kind}_bits"] = 8
                entry[f"tracked_min_{kind}"] = float(scale * (qmin - zp))  # float32, as NNI computes it
                entry[f"tracked_max_{kind}"] = float(scale * (qmax - zp))
                entry[f"tracked_qmin_{kind}"], entry[f"tracked_qmax_{kind}"] = qmin, qmax
            if entry:
                config[w.name] = entry
        return config

    def _onnx_plan(self) -> OnnxPlan:
        if not self.compressed:  # nothing calibrated yet
            return OnnxPlan()
        plan: dict[str, dict[str, QuantParams]] = {"weight": {}, "input": {}, "output": {}}
        for w in self.modules_wrapper:
            for kind in w.quant_config.specs:
                plan[kind][f"{w.name}.weight" if kind == "weight" else w.name] = _stored(w.module, kind)
        return OnnxPlan(weights=plan["weight"], inputs=plan["input"], outputs=plan["output"])


def _stored(module: nn.Module, kind: str) -> QuantParams:
    """The per-tensor parameters :meth:`ObserverQuantizer.compress` stored on ``module`` for ``kind``."""
    return QuantParams(getattr(module, f"{kind}_scale").reshape(()), getattr(module, f"{kind}_zero_point").reshape(()),
                       getattr(module, f"{kind}_qmin"), getattr(module, f"{kind}_qmax"))
