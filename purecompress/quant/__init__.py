"""Quantization as pure functions: ranges, scales, fake quantization, observers, configs.

API summary (stable names; everything is re-exported here except the ONNX exporter,
``purecompress.quant.onnx_export``, which imports ``onnx``):

- Ranges and parameters (``qparams``): ``int_range(bits, dtype='uint', *, narrow=True)``,
  ``QuantParams(scale, zero_point, qmin, qmax, axis=None, group_size=None)`` (record; ``.broadcast(ndim)``,
  ``.per_channel``; ``group_size``: group-wise weights, ``grouped_view(x, qp)``),
  ``quant_params(min, max, *, bits=8, dtype='uint', scheme='per_tensor_affine',
  axis=None, qrange=None)``, ``quantize(x, qp)``, ``dequantize(q, qp)``, ``fake_quantize(x, qp)``,
  ``SCHEMES``, ``DTYPES``, ``SCALE_EPS``, ``is_per_channel``, ``is_symmetric``.
- Straight-through fake quantization (``ste``): ``codes(x, scale, zero_point)`` (unclamped),
  ``fake_quantize_ste(x, qp, *, clip=False)``
  (clip=True is NNI QAT's clipped STE), ``fake_quantize_clipped(x, qp, bounds)`` (the same with
  ``x``'s known min/max, for observers that have them).
- Other straight-through estimators (``estimators``): ``straight_through(x, y)``,
  ``binarize(x, *, clip=False)`` (BNN), ``lsq_fake_quantize(x, scale, qmin, qmax)``,
  ``lsq_init_scale(x, qmax)``.
- Observers (``observers``): ``Range(min, max)`` record, ``current_range(x, *, axis=None)``, ``current_mean``,
  ``minmax_range(prev, x, *, axis=None)``, ``ema_range(prev, x, *, decay=0.99, axis=None,
  first=None, current=None)``, ``EMA_DECAY``; ``Histogram(counts, min, max)``, ``histogram_range(prev, x)``,
  ``histogram_estimate(h) -> Range`` (torch's HistogramObserver as data).
- Configs (``config``): ``TensorSpec(bits, dtype, scheme)`` (``.qrange``, ``.per_channel``),
  ``QuantConfig(selector, specs, start_step)``, ``from_quant_config_list(config_list, *,
  allowed_op_types=None, allowed_bits=None, allowed_quant_types=QUANT_TYPES)``, ``QUANT_TYPES``.
- Transform (``transform``): ``QuantTransform`` (``.init(params) -> QuantState``,
  ``.update(params, state) -> (params, state)``: step + 1 after each optimizer step, ``.keys``, ``.plan``, calling it =
  ``quantized_call``), ``quantized_call(q, model, params, state, args, kwargs=None, *,
  training=True) -> (output, new_state)``, ``QuantState(step, tensors)`` with
  ``tensors['<module>.<weight|input|output>'] = TensorState(range, qparams)``; ``Kernel``,
  ``KernelContext`` for new algorithms; ``quant_report(q, state=None) -> QuantReport`` (one
  ``QuantedTensor(key, kind, bits, scheme, tied, calibrated)`` per tensor, ``.table()``; a tied
  weight is one tensor, quantized at every use, its other names in ``tied``).
- Algorithms (``algorithms``), each ``f(model, config_list) -> QuantTransform``: ``qat``, ``naive``,
  ``dorefa`` (+ ``dorefa_weight``), ``bnn``, ``lsq`` (+ ``lsq_scales(q, model, params, args)``:
  learnable steps ``'<module>.<kind>_scale'`` to merge into the trainable params), ``observer``
  (``estimator='minmax'|'histogram'``; calibrate with ``training=True``, evaluate with
  ``training=False``); ``QAT_OP_TYPES``; each
  algorithm's per-tensor kernel is public (``qat_kernel``, ``naive_kernel`` (+ ``naive_step``, ``naive_quantize``),
  ``dorefa_kernel``, ``bnn_kernel``, ``lsq_kernel``, ``observer_kernel``): compat runs them.
- Conv-BN folding (``fold``): ``find_conv_bn(model) -> {conv: bn}`` (torch.fx),
  ``fold_conv_bn(w, b, gamma, beta, mean, var, eps) -> (w', b')``, ``fold_params(model, params,
  pairs) -> (params', extra_bias)``, ``folded_call(model, params, pairs, args)``.
- Files (``export``; safetensors + JSON, nothing unpickled): ``save_quant_params(path, qparams, *,
  metadata=None)``, ``load_quant_params(path)``, ``save_calibration`` / ``load_calibration`` (NNI
  calibration configs), ``load_nni_calibration`` (NNI's ``torch.save`` files, ``weights_only=True``);
  a file that is not one of these raises ``FileFormatError`` (a ValueError naming the file and the tensor).
"""

from __future__ import annotations

from purecompress._files import FileFormatError
from purecompress.quant.algorithms import (
    OBSERVER_ESTIMATORS,
    QAT_OP_TYPES,
    UncalibratedWarning,
    bnn,
    bnn_kernel,
    dorefa,
    dorefa_kernel,
    dorefa_weight,
    lsq,
    lsq_kernel,
    lsq_scales,
    naive,
    naive_kernel,
    naive_quantize,
    naive_step,
    observer,
    observer_histogram_kernel,
    observer_kernel,
    observer_qparams,
    qat,
    qat_kernel,
)
from purecompress.quant.config import QUANT_TYPES, QuantConfig, TensorSpec, from_quant_config_list
from purecompress.quant.estimators import binarize, lsq_fake_quantize, lsq_init_scale, straight_through
from purecompress.quant.export import (
    CalibrationConfig,
    load_calibration,
    load_nni_calibration,
    load_quant_params,
    save_calibration,
    save_quant_params,
)
from purecompress.quant.fold import find_conv_bn, fold_conv_bn, fold_params, folded_call
from purecompress.quant.observers import (
    EMA_DECAY,
    Histogram,
    Range,
    current_mean,
    current_range,
    ema_range,
    histogram_estimate,
    histogram_range,
    minmax_range,
)
from purecompress.quant.qparams import (
    DTYPES,
    SCALE_EPS,
    SCHEMES,
    QuantParams,
    dequantize,
    fake_quantize,
    grouped_view,
    int_range,
    is_per_channel,
    is_symmetric,
    quant_params,
    quantize,
)
from purecompress.quant.ste import codes, fake_quantize_clipped, fake_quantize_ste
from purecompress.quant.transform import (
    Kernel,
    KernelContext,
    QuantedTensor,
    QuantReport,
    QuantState,
    QuantTransform,
    TensorState,
    quant_report,
    quantized_call,
)

__all__ = [
    "observer_qparams",
    "UncalibratedWarning",
    "histogram_range",
    "histogram_estimate",
    "Histogram",
    "OBSERVER_ESTIMATORS",
    "observer_histogram_kernel",
    "codes",
    "qat_kernel",
    "observer_kernel",
    "naive_step",
    "naive_quantize",
    "naive_kernel",
    "lsq_kernel",
    "dorefa_kernel",
    "bnn_kernel",
    "DTYPES",
    "CalibrationConfig",
    "FileFormatError",
    "load_calibration",
    "load_nni_calibration",
    "load_quant_params",
    "save_calibration",
    "save_quant_params",
    "EMA_DECAY",
    "QAT_OP_TYPES",
    "QUANT_TYPES",
    "SCALE_EPS",
    "SCHEMES",
    "Kernel",
    "KernelContext",
    "QuantConfig",
    "QuantParams",
    "QuantReport",
    "QuantState",
    "QuantedTensor",
    "QuantTransform",
    "Range",
    "TensorSpec",
    "TensorState",
    "binarize",
    "bnn",
    "current_mean",
    "current_range",
    "dequantize",
    "dorefa",
    "dorefa_weight",
    "ema_range",
    "fake_quantize",
    "fake_quantize_clipped",
    "fake_quantize_ste",
    "grouped_view",
    "find_conv_bn",
    "fold_conv_bn",
    "fold_params",
    "folded_call",
    "from_quant_config_list",
    "int_range",
    "is_per_channel",
    "is_symmetric",
    "lsq",
    "lsq_fake_quantize",
    "lsq_init_scale",
    "lsq_scales",
    "minmax_range",
    "naive",
    "observer",
    "qat",
    "quant_params",
    "quantize",
    "quant_report",
    "quantized_call",
    "straight_through",
]
