"""NNI's ``QAT_Quantizer`` (Jacob et al. 2018) on the functional core.

Weights use their current min/max every training step; inputs and outputs an EMA of their ranges
(decay 0.99, reset to the current range while ``steps == 1``). Scales and zero points live in
NNI's buffers (``weight_scale``, ``tracked_min_input``, ...; per tensor ``[1]``, per channel the
channel dim kept, e.g. ``[C, 1, 1, 1]`` for a conv weight, ``[1, C, 1, 1]`` for its output) and every
number comes from :mod:`purecompress.quant` (``current_range``, ``ema_range``, ``quant_params``,
``fake_quantize_ste(clip=True)``).

Differences from NNI 2.10 (NNI bugs, regression tests in ``tests/test_quant_compat.py``):
``dummy_input`` is optional (it only enables BN folding); a zero or constant range gives a finite
scale, not NaN; evaluating before any training step quantizes the weights with their current range
(NNI: scale 0, weights become 0) and leaves never-observed activations unquantized (NNI: NaN);
before ``quant_start_step`` evaluation is not quantized either, as in training; per-channel
activation ranges export as tensors (NNI crashes); ``load_calibration_config`` also restores the
scales, so evaluation right after loading works.
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
    EMA_DECAY,
    SCALE_EPS,
    QuantParams,
    Range,
    TensorSpec,
    current_range,
    ema_range,
    fake_quantize_clipped,
    fake_quantize_ste,
    quant_params,
)

__all__ = ["QAT_Quantizer"]

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
                       "input_scale", "input_zero_point", "output_scale", "output_zero_point")

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
                else:  # activation shapes are known at the first forward (per channel: resized there)
                    shape = [1]
                    module.register_buffer(f"tracked_min_{kind}", torch.zeros(shape, device=device))
                    module.register_buffer(f"tracked_max_{kind}", torch.zeros(shape, device=device))
                module.register_buffer(f"{kind}_scale", torch.zeros(shape, device=device))
                module.register_buffer(f"{kind}_zero_point", torch.zeros(shape, device=device))
            module.ema_decay = EMA_DECAY

    @property
    def steps(self) -> int:
        """Optimizer steps taken plus one (NNI's ``bound_model.steps``)."""
        return int(self.bound_model.steps)

    def _stored(self, module: nn.Module, kind: str, spec: TensorSpec, axis: int | None) -> tuple[QuantParams, Tensor]:
        scale = _flat(getattr(module, f"{kind}_scale"), axis)
        zero_point = _flat(getattr(module, f"{kind}_zero_point"), axis)
        qmin, qmax = spec.qrange
        # Scale 0 means "never computed" (the core never returns 0): NNI would divide by it.
        return QuantParams(torch.clamp(scale, min=SCALE_EPS), zero_point, qmin, qmax, axis), scale > 0

    def _store(self, module: nn.Module, kind: str, qp: QuantParams, like: Tensor) -> None:
        shape = _nni_shape(like, qp.axis)
        for name, value in ((f"{kind}_scale", qp.scale), (f"{kind}_zero_point", qp.zero_point)):
            buffer = getattr(module, name)
            if list(buffer.shape) != shape:
                setattr(module, name, value.detach().reshape(shape).clone())
            else:
                buffer.copy_(value.detach().reshape(shape))

    def quantize_weight(self, wrapper: QuantizerModuleWrapper, **kwargs: Any) -> Tensor:
        module, spec = wrapper.module, wrapper.quant_config.specs["weight"]
        weight, axis = module.weight, _axis("weight", spec)
        if self.steps < wrapper.quant_config.start_step:
            return weight
        observed = current_range(weight, axis=axis)
        current = _qparams(spec, observed, axis)
        if wrapper.training:
            self._store(module, "weight", current, weight)
            return fake_quantize_clipped(weight, current, (observed.min, observed.max))
        stored, valid = self._stored(module, "weight", spec, axis)
        qp = QuantParams(torch.where(valid, stored.scale, current.scale),
                         torch.where(valid, stored.zero_point, current.zero_point), stored.qmin, stored.qmax, axis)
        return fake_quantize_ste(weight, qp, clip=True)

    def _activation(self, x: Tensor, wrapper: QuantizerModuleWrapper, kind: str) -> Tensor:
        module, spec = wrapper.module, wrapper.quant_config.specs[kind]
        axis = _axis(kind, spec)
        if not wrapper.training:
            if self.steps < wrapper.quant_config.start_step:
                return x
            stored, valid = self._stored(module, kind, spec, axis)
            if axis is not None:
                valid = valid.reshape(_nni_shape(x, axis))
            return torch.where(valid, fake_quantize_ste(x, stored, clip=True), x)
        lo, hi = getattr(module, f"tracked_min_{kind}"), getattr(module, f"tracked_max_{kind}")
        channels = x.shape[axis] if axis is not None else 1
        prev = Range(_flat(lo, axis), _flat(hi, axis)) if lo.numel() == channels else None
        observed = current_range(x, axis=axis)
        tracked = ema_range(prev, x, decay=module.ema_decay, axis=axis, first=self.steps == 1, current=observed)
        shape = _nni_shape(x, axis)
        setattr(module, f"tracked_min_{kind}", tracked.min.reshape(shape).clone())
        setattr(module, f"tracked_max_{kind}", tracked.max.reshape(shape).clone())
        if self.steps < wrapper.quant_config.start_step:
            return x
        qp = _qparams(spec, tracked, axis)
        self._store(module, kind, qp, x)
        return fake_quantize_clipped(x, qp, (observed.min, observed.max))

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
                axis = _axis(kind, spec)
                stored, valid = self._stored(module, kind, spec, axis)
                if not bool(valid.all()):
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
    from purecompress.compat.quantization_base import fold_bn_params

    module = wrapper.module
    with torch.no_grad():
        return fold_bn_params(module.old_weight, getattr(module, "old_bias", None), wrapper.bn_module)
