"""NNI 2.10's quantizers (``nni.algorithms.compression.pytorch.quantization``): :class:`QAT_Quantizer`,
:class:`NaiveQuantizer`, :class:`DoReFaQuantizer`, :class:`BNNQuantizer`, :class:`LsqQuantizer` and
:class:`ObserverQuantizer`, on the kernels of :mod:`purecompress.quant`.
"""

from __future__ import annotations

import logging
import warnings
from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import Tensor, nn

from purecompress.compat.quantization.base import OnnxPlan, QuantForward, Quantizer, QuantizerModuleWrapper
from purecompress.compat.quantization.settings import LayerQuantSetting
from purecompress.compat.quantization.utils import get_quant_shape
from purecompress.quant import (
    EMA_DECAY,
    SCALE_EPS,
    Histogram,
    KernelContext,
    QuantParams,
    Range,
    TensorSpec,
    TensorState,
    binarize,
    dorefa_weight,
    fake_quantize,
    fold_conv_bn,
    histogram_estimate,
    histogram_range,
    int_range,
    lsq_fake_quantize,
    lsq_init_scale,
    minmax_range,
    naive_quantize,
    naive_step,
    observer_qparams,
    qat_kernel,
    quant_params,
)

__all__ = [
    "BNNQuantizer",
    "DoReFaQuantizer",
    "LsqQuantizer",
    "NaiveQuantizer",
    "ObserverQuantizer",
    "QAT_Quantizer",
]


logger = logging.getLogger(__name__)



def _axis(kind: str, spec: TensorSpec) -> int | None:
    # NNI: weights keep dim 0 (output channels), activations dim 1.
    return (0 if kind == "weight" else 1) if spec.per_channel else None



def _nni_shape(like: Tensor, axis: int | None) -> list[int]:
    if axis is None:
        return [1]
    return [like.shape[axis] if d == axis else 1 for d in range(like.dim())]



def _flat(buffer: Tensor, axis: int | None) -> Tensor:
    return buffer.reshape(-1) if axis is not None else buffer.reshape(())



def _as_buffer(value: Any, device: torch.device) -> Tensor:
    t = torch.as_tensor(value, dtype=torch.float32).to(device)
    return t.reshape(1) if t.dim() == 0 else t.clone()



def _qparams(spec: TensorSpec, rng: Range, axis: int | None) -> QuantParams:
    return quant_params(rng.min, rng.max, bits=spec.bits, dtype=spec.dtype, scheme=spec.scheme, axis=axis)



class QAT_Quantizer(Quantizer):  # noqa: N801 (NNI's name)
    """Quantization-aware training with NNI 2.10's interface.

    Args:
        model: the model (wrapped in place).
        config_list: e.g. ``[{'quant_types': ['weight', 'input'], 'quant_bits': 8,
            'op_types': ['Conv2d', 'Linear']}]``; op types Conv2d, Linear, ReLU, ReLU6.
        optimizer: required: ``steps`` counts its ``step()`` calls (starting at 1).
        dummy_input: optional; enables Conv2d-BatchNorm2d folding.
    """

    allowed_op_types = ("Conv2d", "Linear", "ReLU", "ReLU6")
    simulated_attrs = ("old_weight", "old_bias", "ema_decay", "tracked_min_output", "tracked_max_output",
                       "tracked_min_input", "tracked_max_input", "weight_scale", "weight_zero_point",
                       "input_scale", "input_zero_point", "output_scale", "output_zero_point",
                       "layer_quant_setting")

    def __init__(self, model: nn.Module, config_list: Sequence[Mapping[str, Any]], optimizer: torch.optim.Optimizer,
                 dummy_input: Any = None) -> None:
        if not isinstance(optimizer, torch.optim.Optimizer):
            raise TypeError("QAT_Quantizer needs a torch.optim.Optimizer (it counts steps), "
                            f"got {type(optimizer).__name__}")
        super().__init__(model, config_list, optimizer, dummy_input)
        self.quant_grad = QuantForward()
        device = next(model.parameters()).device
        self.bound_model.register_buffer("steps", torch.tensor(1, device=device))
        for wrapper in self.modules_wrapper:
            module = wrapper.module
            for kind, spec in wrapper.quant_config.specs.items():
                axis = _axis(kind, spec)
                if kind == "weight":
                    shape = _nni_shape(module.weight, axis) if wrapper.quantizes_weight else [1]
                else:  # from dummy_input's shapes (NNI's), else known at the first forward (resized there)
                    seen = self.all_shapes.get(wrapper.name, (None, None))[0 if kind == "input" else 1]
                    shape = [1] if seen is None else get_quant_shape(seen, kind, spec.scheme)
                    module.register_buffer(f"tracked_min_{kind}", torch.zeros(shape, device=device))
                    module.register_buffer(f"tracked_max_{kind}", torch.zeros(shape, device=device))
                module.register_buffer(f"{kind}_scale", torch.zeros(shape, device=device))
                module.register_buffer(f"{kind}_zero_point", torch.zeros(shape, device=device))
            module.ema_decay = EMA_DECAY
            module.layer_quant_setting = LayerQuantSetting.from_config(wrapper.quant_config, EMA_DECAY)

    @property
    def steps(self) -> int:
        """Optimizer steps taken plus one (NNI's ``bound_model.steps``)."""
        return int(self.bound_model.steps)

    def _state(self, module: nn.Module, kind: str, spec: TensorSpec, like: Tensor | None = None, *,
               qparams: bool = True) -> TensorState:
        """The core's :class:`~purecompress.quant.TensorState` read from NNI's buffers (a range only
        for activations whose buffers have ``like``'s channels; parameters once computed, and only
        when asked: a training step without ``quant_start_step`` does not read them)."""
        axis = _axis(kind, spec)
        rng = None
        if kind != "weight":
            lo, hi = getattr(module, f"tracked_min_{kind}"), getattr(module, f"tracked_max_{kind}")
            if like is None or lo.numel() == (like.shape[axis] if axis is not None else 1):
                rng = Range(_flat(lo, axis), _flat(hi, axis))
        scale = getattr(module, f"{kind}_scale")
        qp = None
        if qparams and bool((scale > 0).all()):  # 0: never computed (the core never returns 0)
            qp = QuantParams(_flat(scale, axis), _flat(getattr(module, f"{kind}_zero_point"), axis), *spec.qrange, axis)
        return TensorState(rng, qp)

    def _mirror(self, module: nn.Module, kind: str, spec: TensorSpec, new: TensorState, like: Tensor, *,
                qparams: bool) -> None:
        """Write the core's new state into NNI's buffers (``tracked_*``, ``*_scale``, ``*_zero_point``)."""
        shape = _nni_shape(like, _axis(kind, spec))
        if new.range is not None:
            setattr(module, f"tracked_min_{kind}", new.range.min.reshape(shape).clone())
            setattr(module, f"tracked_max_{kind}", new.range.max.reshape(shape).clone())
        if not qparams or new.qparams is None:
            return
        for name, value in ((f"{kind}_scale", new.qparams.scale), (f"{kind}_zero_point", new.qparams.zero_point)):
            buffer = getattr(module, name)
            if list(buffer.shape) != shape:
                setattr(module, name, value.detach().reshape(shape).clone())
            else:
                buffer.copy_(value.detach().reshape(shape))

    def _run(self, x: Tensor, wrapper: QuantizerModuleWrapper, kind: str) -> Tensor:
        """The core's :func:`~purecompress.quant.qat_kernel` on ``x`` with the state in NNI's
        buffers, the new state mirrored back: the one place this class computes anything."""
        module, config = wrapper.module, wrapper.quant_config
        spec, active = config.specs[kind], self.steps >= config.start_step
        if not active and (kind == "weight" or not wrapper.training):
            return x  # NNI: nothing before quant_start_step (activation ranges are still tracked)
        ctx = KernelContext(f"{wrapper.name}.{kind}", kind, spec, self.bound_model.steps, self.steps == 1,
                            config.start_step, wrapper.training, {})
        prev = self._state(module, kind, spec, x, qparams=not wrapper.training or config.start_step > 1)
        out, new = qat_kernel(x, prev, ctx)
        if wrapper.training and new is not None:
            self._mirror(module, kind, spec, new, x, qparams=active)
        return out

    def quantize_weight(self, wrapper: QuantizerModuleWrapper, **kwargs: Any) -> Tensor:
        quantized = self._run(wrapper.module.weight, wrapper, "weight")
        wrapper.module.weight = quantized  # NNI: a direct call leaves the quantized weight on the module
        return quantized

    def _activation(self, x: Tensor, wrapper: QuantizerModuleWrapper, kind: str) -> Tensor:
        return self._run(x, wrapper, kind)

    def quantize_input(self, inputs: Tensor, wrapper: QuantizerModuleWrapper, **kwargs: Any) -> Tensor:
        return self._activation(inputs, wrapper, "input")

    def quantize_output(self, output: Tensor, wrapper: QuantizerModuleWrapper, **kwargs: Any) -> Tensor:
        return self._activation(output, wrapper, "output")

    def step_with_optimizer(self) -> None:
        """Count one optimizer step."""
        self.bound_model.steps.add_(1)

    def _calibration_config(self) -> dict[str, dict[str, Any]]:
        config: dict[str, dict[str, Any]] = {}
        for wrapper in self.modules_wrapper:
            module, entry = wrapper.module, {}
            for kind, spec in wrapper.quant_config.specs.items():
                entry[f"{kind}_bits"] = int(spec.bits)
                if kind == "weight":
                    entry["weight_scale"] = module.weight_scale.detach().clone()
                    entry["weight_zero_point"] = module.weight_zero_point.detach().clone()
                    continue
                for bound in ("min", "max"):
                    value = getattr(module, f"tracked_{bound}_{kind}").detach()
                    # NNI calls float() on it and crashes for per-channel ranges: keep the tensor.
                    entry[f"tracked_{bound}_{kind}"] = float(value) if value.numel() == 1 else value.clone()
            config[wrapper.name] = entry
        return config

    def load_calibration_config(self, calibration_config: Mapping[str, Mapping[str, Any]]) -> None:
        """Restore tracked ranges (and weight scales) from a calibration config; bits must match.

        Raises:
            ValueError: a layer's bits differ from this quantizer's config.
        """
        for wrapper in self.modules_wrapper:
            name, module = wrapper.name, wrapper.module
            if name not in calibration_config:
                logger.warning("calibration config has no entry for module %s", name)
                continue
            entry = calibration_config[name]
            for kind, spec in wrapper.quant_config.specs.items():
                if entry.get(f"{kind}_bits") != spec.bits:
                    raise ValueError(f"calibration config: {name} {kind}_bits is {entry.get(f'{kind}_bits')!r}, "
                                     f"the quantizer uses {spec.bits}")
                device = getattr(module, f"{kind}_scale").device
                if kind == "weight":
                    for key in ("weight_scale", "weight_zero_point"):
                        if key in entry:
                            setattr(module, key, _as_buffer(entry[key], device))
                    continue
                axis = _axis(kind, spec)
                lo = _as_buffer(entry[f"tracked_min_{kind}"], device)
                hi = _as_buffer(entry[f"tracked_max_{kind}"], device)
                setattr(module, f"tracked_min_{kind}", lo)
                setattr(module, f"tracked_max_{kind}", hi)
                qp = _qparams(spec, Range(_flat(lo, axis), _flat(hi, axis)), axis)
                setattr(module, f"{kind}_scale", qp.scale.reshape(lo.shape).clone())
                setattr(module, f"{kind}_zero_point", qp.zero_point.reshape(lo.shape).clone())

    def _onnx_plan(self) -> OnnxPlan:
        weights, inputs, outputs, replace, identities = {}, {}, {}, {}, []
        for wrapper in self.modules_wrapper:
            module, name = wrapper.module, wrapper.name
            prefix = f"{name}." if name else ""
            for kind, spec in wrapper.quant_config.specs.items():
                stored = self._state(module, kind, spec).qparams
                if stored is None:
                    continue  # never observed: exported in float
                if kind == "weight" and wrapper.quantizes_weight:
                    weights[prefix + "weight"] = stored
                    if wrapper.bn_module is not None:
                        folded_w, folded_b = fold_for_export(wrapper)
                        replace[prefix + "weight"], replace[prefix + "bias"] = folded_w, folded_b
                        identities.append(self.conv_bn_patterns[name])
                elif kind == "input":
                    inputs[name] = stored
                elif kind == "output":
                    outputs[name] = stored
        return OnnxPlan(weights, inputs, outputs, replace, tuple(identities))



def fold_for_export(wrapper: QuantizerModuleWrapper) -> tuple[Tensor, Tensor]:
    """The folded float weight and bias of a BN-folded wrapper (detached)."""
    module, bn = wrapper.module, wrapper.bn_module
    with torch.no_grad():
        return fold_conv_bn(module.old_weight, getattr(module, "old_bias", None), bn.weight, bn.bias,
                            bn.running_mean, bn.running_var, bn.eps)


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
        previous = self.layer_scale.get(wrapper.name)
        quantized, self.layer_scale[wrapper.name] = naive_step(wrapper.module.weight, previous)
        return quantized

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

    min_bits = 2  # the signed range at 1 bit is [-1, 0]: qmax 0 divides by zero

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
        self.validate_config(model, config_list)  # a bad config is reported first, as NNI does
        if model.training:
            raise ValueError("ObserverQuantizer calibrates in evaluation mode: call model.eval() first")
        super().__init__(model, config_list, optimizer)
        self.quant_grad = QuantForward()
        self.compressed = False
        self.device = next(model.parameters()).device
        self.weight_ranges: dict[str, Range] = {}
        self.histograms: dict[str, dict[str, Histogram]] = {w.name: {} for w in self.modules_wrapper}
        for w in self.modules_wrapper:
            for kind in w.quant_config.specs:
                qmin, qmax = (-127, 127) if kind == "weight" else (0, 127)
                setattr(w.module, f"{kind}_qmin", qmin)
                setattr(w.module, f"{kind}_qmax", qmax)

    def _unseen(self, name: str, kind: str) -> bool:
        return kind not in self.histograms[name] or self.histograms[name][kind].empty

    def _qparams(self, name: str, kind: str) -> QuantParams:
        if kind != "weight" and self._unseen(name, kind):
            # Never observed (no calibration batch reached it): torch's observers' default, as NNI exports.
            return QuantParams(torch.tensor(1.0), torch.tensor(0.0), 0, 127)
        rng = self.weight_ranges[name] if kind == "weight" else histogram_estimate(self.histograms[name][kind])
        return observer_qparams(kind, rng)

    def _record(self, wrapper: QuantizerModuleWrapper, kind: str, x: Tensor) -> None:
        if kind == "weight":
            self.weight_ranges[wrapper.name] = minmax_range(self.weight_ranges.get(wrapper.name), x)
        else:
            seen = self.histograms[wrapper.name]
            seen[kind] = histogram_range(seen.get(kind), x)

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
        """Fix scales and zero points from the calibration data; later forwards are quantized.

        Weights need no data (their range is read from them when no forward observed them). An
        input or output no calibration batch reached (no forward, or only empty batches) gets
        torch's default observer parameters, scale 1 and zero point 0, as NNI gives it; a warning
        names them.
        """
        unseen = [f"{w.name}.{kind}" for w in self.modules_wrapper for kind in w.quant_config.specs
                  if kind != "weight" and self._unseen(w.name, kind)]
        if unseen:
            logger.warning("ObserverQuantizer.compress(): no calibration batch reached %s; they get scale 1.0 and "
                           "zero point 0 (run the model on calibration data in eval mode before compress())",
                           ", ".join(unseen))
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
            warnings.warn("ObserverQuantizer.export_model() before compress(): nothing is calibrated, so the "
                          "calibration config is empty and the weights are exported unquantized", stacklevel=3)
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
