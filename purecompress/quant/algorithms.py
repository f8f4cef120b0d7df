"""Quantization algorithms as small kernels plus factories returning a :class:`QuantTransform`.

Each factory takes ``(model, config_list)`` (NNI dicts or parsed :class:`QuantConfig` s), validates
the configs with the algorithm's NNI rules and returns a transform; mixed precision per layer is
just several config entries with different ``quant_bits``.

- :func:`qat`: weights use their current min/max every training step, activations an EMA
  (decay 0.99, reset while ``step == 1``); clipped STE; ``quant_start_step`` delays quantization.
- :func:`naive`: 8-bit weights, running max of ``max|w| / 127``, truncation toward zero.
- :func:`dorefa`: weights ``tanh`` -> ``[0, 1]`` -> ``2^k - 1`` levels -> ``[-1, 1]``; STE.
- :func:`bnn`: weights and outputs ``sign`` (0 -> +1); outputs clip the gradient at ``|x| > 1``.
- :func:`lsq`: learnable steps read from ``params['<module>.<kind>_scale']``; create them with
  :func:`lsq_scales`.
- :func:`observer`: post-training calibration; ``training=True`` calls only observe (running
  min/max), ``training=False`` calls fake-quantize (weights symmetric ``[-127, 127]``,
  activations affine ``[0, 127]``).
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import Tensor, nn

from purecompress.quant.config import SELECT_KEYS, QuantConfig, TensorSpec, from_quant_config_list
from purecompress.quant.estimators import binarize, lsq_fake_quantize, lsq_init_scale, straight_through
from purecompress.quant.observers import (
    Range,
    current_range,
    ema_range,
    histogram_estimate,
    histogram_range,
    minmax_range,
)
from purecompress.quant.qparams import SCALE_EPS, QuantParams, quant_params
from purecompress.quant.ste import fake_quantize_clipped, fake_quantize_ste
from purecompress.quant.transform import KernelContext, QuantTransform, TensorState, build, quantized_call
from purecompress.selectors import ConfigError
from purecompress.transform import Params

__all__ = [
    "UncalibratedWarning",
    "OBSERVER_ESTIMATORS",
    "QAT_OP_TYPES",
    "bnn",
    "bnn_kernel",
    "dorefa",
    "dorefa_kernel",
    "dorefa_weight",
    "lsq",
    "lsq_kernel",
    "lsq_scales",
    "naive",
    "naive_kernel",
    "naive_quantize",
    "naive_step",
    "observer",
    "observer_histogram_kernel",
    "observer_kernel",
    "observer_qparams",
    "qat",
    "qat_kernel",
]

#: Module types NNI's QAT quantizer accepts.
QAT_OP_TYPES: tuple[str, ...] = ("Conv2d", "Linear", "ReLU", "ReLU6")
ConfigList = Sequence[Mapping[str, object]] | Sequence[QuantConfig]


_BASIC_KEYS = ("quant_types", "quant_bits", *SELECT_KEYS)  # what Naive/DoReFa/BNN/LSQ/Observer read


def _configs(config_list: ConfigList, **rules: Any) -> tuple[QuantConfig, ...]:
    if not isinstance(config_list, (list, tuple)):
        raise ConfigError(None, None, f"config_list must be a list of dicts, got {type(config_list).__name__}")
    if config_list and all(isinstance(c, QuantConfig) for c in config_list):
        return tuple(config_list)  # type: ignore[arg-type]
    return from_quant_config_list(config_list, **rules)  # type: ignore[arg-type]


# --- QAT -----------------------------------------------------------------------------------

def qat_kernel(x: Tensor, prev: TensorState | None, ctx: KernelContext) -> tuple[Tensor, TensorState | None]:
    """:func:`qat` per tensor (NNI's ``QAT_Quantizer.quantize_*``): in training, weights use their
    current range and activations the EMA range (reset at the first step); the state holds the
    tracked range (activations) and the parameters used; in eval, the stored parameters."""
    spec = ctx.spec
    if not ctx.training:
        if prev is None or prev.qparams is None:  # never observed: nothing to quantize with
            return x, prev
        return fake_quantize_ste(x, prev.qparams, clip=True), prev
    current = current_range(x, axis=ctx.axis)
    if ctx.kind == "weight":
        rng, tracked = current, None
    else:
        old = prev.range if prev is not None else None
        tracked = rng = ema_range(old, x, axis=ctx.axis, first=None if old is None else ctx.first, current=current)
    qp = quant_params(rng.min, rng.max, bits=spec.bits, dtype=spec.dtype, scheme=spec.scheme, axis=ctx.axis)
    out = fake_quantize_clipped(x, qp, (current.min, current.max))
    if ctx.start_step > 1:  # NNI: quantize once step >= quant_start_step; ranges are still tracked
        active = ctx.step >= ctx.start_step
        out = torch.where(active, out, x)
        old_qp = prev.qparams if prev is not None and prev.qparams is not None else qp
        qp = QuantParams(torch.where(active, qp.scale, old_qp.scale),
                         torch.where(active, qp.zero_point, old_qp.zero_point), qp.qmin, qp.qmax, qp.axis)
    return out, TensorState(tracked, qp)


def _qat_init(key: str, weight: Tensor, spec: TensorSpec) -> TensorState:
    axis = 0 if spec.per_channel else None
    rng = current_range(weight, axis=axis)
    return TensorState(None, quant_params(rng.min, rng.max, bits=spec.bits, dtype=spec.dtype,
                                          scheme=spec.scheme, axis=axis))


def qat(model: nn.Module, config_list: ConfigList, *, warn: bool = True) -> QuantTransform:
    """Quantization-aware training (Jacob et al.), NNI's ``QAT_Quantizer`` math.

    >>> model = torch.nn.Sequential(torch.nn.Linear(4, 3), torch.nn.ReLU())
    >>> q = qat(model, [{'quant_types': ['weight', 'output'], 'quant_bits': 8, 'op_types': ['Linear']}])
    >>> params = dict(model.named_parameters())
    >>> out, state = q(model, params, q.init(params), torch.ones(2, 4))
    >>> sorted(state.tensors)
    ['0.output', '0.weight']
    """
    configs = _configs(config_list, allowed_op_types=QAT_OP_TYPES)
    return build(model, configs, qat_kernel, name="qat", init_tensor=_qat_init, warn=warn)


# --- Naive, DoReFa, BNN ----------------------------------------------------------------------

def naive_quantize(x: Tensor, scale: Tensor) -> Tensor:
    """``trunc(x / scale) * scale`` (no gradient): NNI casts to int8, which truncates toward zero.

    >>> naive_quantize(torch.tensor([0.29, -0.29]), torch.tensor(0.1))
    tensor([ 0.2000, -0.2000])
    """
    return torch.trunc(x.detach() / scale) * scale


def naive_step(x: Tensor, prev_scale: Tensor | None) -> tuple[Tensor, Tensor]:
    """One Naive step: the running scale ``max(prev_scale, max|x| / 127)`` and ``trunc(x / s) * s``
    (NNI casts to int8, which truncates toward zero), with the identity gradient to ``x``.

    >>> out, scale = naive_step(torch.tensor([-0.5, 2.54]), torch.tensor(0.03))
    >>> scale, out
    (tensor(0.0300), tensor([-0.4800,  2.5200]))
    """
    scale = torch.clamp(x.detach().abs().max() / 127, min=SCALE_EPS)
    if prev_scale is not None:
        scale = torch.maximum(prev_scale, scale)
    return straight_through(x, naive_quantize(x, scale)), scale


def naive_kernel(x: Tensor, prev: TensorState | None, ctx: KernelContext) -> tuple[Tensor, TensorState | None]:
    """:func:`naive` per tensor: :func:`naive_step` with the running scale kept in the state."""
    out, scale = naive_step(x, prev.qparams.scale if prev is not None and prev.qparams is not None else None)
    return out, TensorState(None, QuantParams(scale, torch.zeros_like(scale), -127, 127))


def naive(model: nn.Module, config_list: ConfigList, *, warn: bool = True) -> QuantTransform:
    """NNI's ``NaiveQuantizer``: 8-bit weights with a running scale ``max|w| / 127``."""
    configs = _configs(config_list, allowed_bits=(8,), allowed_quant_types=("weight",), allowed_keys=_BASIC_KEYS)
    return build(model, configs, naive_kernel, name="naive", warn=warn)


def dorefa_weight(w: Tensor, bits: int) -> Tensor:
    """DoReFa weight quantization (forward value, no gradient).

    >>> dorefa_weight(torch.tensor([-1.0, 0.0, 2.0]), 2)
    tensor([-1.0000,  0.3333,  1.0000])
    """
    if w.dtype in (torch.float16, torch.bfloat16):  # 2^bits - 1 levels overflow float16: work in float32
        return dorefa_weight(w.float(), bits).to(w.dtype)
    t = torch.tanh(w)
    t = t / (2 * torch.clamp(t.abs().max(), min=SCALE_EPS)) + 0.5
    levels = 2**bits - 1
    return 2 * (torch.round(t * levels) / levels) - 1


def dorefa_kernel(x: Tensor, prev: TensorState | None, ctx: KernelContext) -> tuple[Tensor, TensorState | None]:
    """:func:`dorefa` per tensor: DoReFa weights, straight-through gradient (no state)."""
    return straight_through(x, dorefa_weight(x.detach(), ctx.spec.bits)), None


def dorefa(model: nn.Module, config_list: ConfigList, *, warn: bool = True) -> QuantTransform:
    """NNI's ``DoReFaQuantizer`` (weights only)."""
    configs = _configs(config_list, allowed_quant_types=("weight",), allowed_keys=_BASIC_KEYS)
    return build(model, configs, dorefa_kernel, name="dorefa", warn=warn)


def bnn_kernel(x: Tensor, prev: TensorState | None, ctx: KernelContext) -> tuple[Tensor, TensorState | None]:
    """:func:`bnn` per tensor: sign (0 -> +1), outputs with a clipped straight-through gradient."""
    return binarize(x, clip=ctx.kind == "output"), None


def bnn(model: nn.Module, config_list: ConfigList, *, warn: bool = True) -> QuantTransform:
    """NNI's ``BNNQuantizer``: binary weights and outputs (sign, 0 -> +1)."""
    configs = _configs(config_list, allowed_quant_types=("weight", "output"), allowed_keys=_BASIC_KEYS)
    return build(model, configs, bnn_kernel, name="bnn", warn=warn)


# --- LSQ -------------------------------------------------------------------------------------

def _lsq_range(spec: TensorSpec) -> tuple[int, int]:
    return -(2 ** (spec.bits - 1)), 2 ** (spec.bits - 1) - 1


def lsq_kernel(x: Tensor, prev: TensorState | None, ctx: KernelContext) -> tuple[Tensor, TensorState | None]:
    """:func:`lsq` per tensor: fake quantization with the learnable step ``'<key>_scale'`` of the params."""
    name = f"{ctx.key}_scale"
    if name not in ctx.params:
        raise KeyError(f"lsq: params has no learnable step {name!r}; add lsq_scales(...) to the params")
    qmin, qmax = _lsq_range(ctx.spec)
    scale = ctx.params[name]
    out = lsq_fake_quantize(x, scale, qmin, qmax)
    return out, TensorState(None, QuantParams(scale.detach(), torch.zeros_like(scale.detach()), qmin, qmax))


def lsq(model: nn.Module, config_list: ConfigList, *, warn: bool = True) -> QuantTransform:
    """Learned Step Size Quantization (Esser et al.), NNI's ``LsqQuantizer`` math."""
    return build(model, _configs(config_list, allowed_keys=_BASIC_KEYS, min_bits=2), lsq_kernel, name="lsq", warn=warn)


def lsq_scales(q: QuantTransform, model: nn.Module, params: Params, args: Any = (),
               kwargs: Mapping[str, Any] | None = None) -> Params:
    """Initial learnable steps ``{'<module>.<kind>_scale': []}``: ``2 mean|x| / sqrt(qmax)``.

    Weights use ``params``; activations use one forward pass on ``args`` in which every tensor is
    already quantized with its new step (NNI initialises them during the first step, so a layer's
    input step sees the quantized outputs upstream). Merge the result into the trainable params.
    """
    seen: dict[str, Tensor] = {}

    def observe(x: Tensor, prev: TensorState | None, ctx: KernelContext) -> tuple[Tensor, TensorState | None]:
        qmin, qmax = _lsq_range(ctx.spec)
        scale = seen.setdefault(f"{ctx.key}_scale", lsq_init_scale(x, qmax))
        return lsq_fake_quantize(x, scale, qmin, qmax), None

    observing = QuantTransform(q.plan, observe, None, "lsq-init")
    with torch.no_grad():
        quantized_call(observing, model, params, observing.init(params), args, kwargs, training=True)
    return seen


# --- Observer (post-training calibration) ------------------------------------------------------

def observer_qparams(kind: str, rng: Range) -> QuantParams:
    """:func:`observer`'s parameters from a range: weights symmetric ``max|w| / 127.5`` on
    ``[-127, 127]`` (torch's MinMaxObserver, clamped as NNI does), activations affine on ``[0, 127]``."""
    if kind == "weight":  # torch MinMaxObserver(qint8, per_tensor_symmetric), NNI clamps to +-127
        scale = torch.clamp(torch.maximum(-rng.min, rng.max).clamp(min=0) / 127.5, min=SCALE_EPS)
        return QuantParams(scale, torch.zeros_like(scale), -127, 127)
    return quant_params(rng.min, rng.max, scheme="per_tensor_affine", qrange=(0, 127))


def observer_kernel(x: Tensor, prev: TensorState | None, ctx: KernelContext) -> tuple[Tensor, TensorState | None]:
    """:func:`observer` per tensor with min/max ranges (``estimator='minmax'``)."""
    if ctx.training:  # calibration: observe only
        rng = minmax_range(prev.range if prev is not None else None, x)
        return x, TensorState(rng, observer_qparams(ctx.kind, rng))
    if prev is None or prev.qparams is None:
        return _uncalibrated(x, prev, ctx)
    return fake_quantize_ste(x, prev.qparams), prev


def _uncalibrated(x: Tensor, prev: TensorState | None, ctx: KernelContext) -> tuple[Tensor, TensorState | None]:
    """Evaluation before any calibration batch: a weight is quantized with its own range (it needs
    no data); an activation has no range, passes through unquantized, and the caller is told."""
    if ctx.kind == "weight":
        rng = minmax_range(None, x)
        state = TensorState(rng, observer_qparams(ctx.kind, rng))
        return fake_quantize_ste(x, state.qparams), state
    warnings.warn(f"observer: {ctx.key} saw no calibration batch (call the transform with training=True on "
                  "calibration data first); it is passed through unquantized", UncalibratedWarning, stacklevel=2)
    return x, prev


class UncalibratedWarning(UserWarning):
    """An observer evaluated an activation it never calibrated (it passes through unquantized)."""


def observer_histogram_kernel(x: Tensor, prev: TensorState | None,
                              ctx: KernelContext) -> tuple[Tensor, TensorState | None]:
    """:func:`observer` per tensor with ``estimator='histogram'``: weights as with min/max,
    activations a running :class:`~purecompress.quant.Histogram`; their parameters come from
    :func:`~purecompress.quant.histogram_estimate` at the first evaluation call (the search is
    costly: once, not per calibration batch)."""
    if ctx.kind == "weight":
        return observer_kernel(x, prev, ctx)
    if ctx.training:
        return x, TensorState(histogram=histogram_range(prev.histogram if prev is not None else None, x))
    if prev is None or (prev.qparams is None and prev.histogram is None):
        return _uncalibrated(x, prev, ctx)
    if prev.qparams is None:
        rng = histogram_estimate(prev.histogram)
        prev = TensorState(rng, observer_qparams(ctx.kind, rng), prev.histogram)
    return fake_quantize_ste(x, prev.qparams), prev


OBSERVER_ESTIMATORS = ("minmax", "histogram")


def observer(model: nn.Module, config_list: ConfigList, *, estimator: str = "minmax",
             warn: bool = True) -> QuantTransform:
    """NNI's ``ObserverQuantizer`` (8 bits): calibrate with ``training=True``, evaluate with False.

    Args:
        model: the model.
        config_list: NNI quantization configs (8 bits only).
        estimator: how activation ranges are estimated: ``'minmax'`` (running min/max) or
            ``'histogram'`` (torch's ``HistogramObserver`` and its L2 search: NNI's choice, scales
            ~1e-3 apart from min/max). Weights always use min/max (NNI's ``MinMaxObserver``).
        warn: warn about configs that select nothing.

    Raises:
        ValueError: an unknown ``estimator``.
    """
    if estimator not in OBSERVER_ESTIMATORS:
        raise ValueError(f"observer: estimator must be one of {OBSERVER_ESTIMATORS}, got {estimator!r}")
    configs = _configs(config_list, allowed_bits=(8,), allowed_keys=_BASIC_KEYS)
    kernel = observer_kernel if estimator == "minmax" else observer_histogram_kernel
    return build(model, configs, kernel, name="observer", warn=warn)
