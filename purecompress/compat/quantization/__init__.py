"""NNI 2.x quantization API (``nni.compression.pytorch.compressor`` quantizer classes and
``nni.algorithms.compression.pytorch.quantization``) on purecompress's functional core.

Scripts written for NNI 2.10 run with their imports changed::

    from purecompress.compat.quantization import QAT_Quantizer
    quantizer = QAT_Quantizer(model, config_list, optimizer)     # dummy_input only for BN folding
    quantizer.compress()
    ...  # train as usual; optimizer.step() counts quantizer steps
    calibration = quantizer.export_model('model.pth', 'calibration.pth', onnx_path='model.onnx',
                                         input_shape=(1, 3, 32, 32))

Config errors are :class:`SchemaError`: a :class:`purecompress.selectors.ConfigError` (a
``ValueError``) that is also ``schema.SchemaError``, the type NNI scripts catch. The NNI bugs not
copied are listed in each implementation module's docstring.
"""

from __future__ import annotations

from purecompress.compat.quantization.base import (
    BN_FOLD_TAG,
    LayerInfo,
    OnnxPlan,
    QuantForward,
    QuantGrad,
    Quantizer,
    QuantizerIdentityWrapper,
    QuantizerModuleWrapper,
    QuantType,
)
from purecompress.compat.quantization.quantizers import (
    BNNQuantizer,
    DoReFaQuantizer,
    LsqQuantizer,
    NaiveQuantizer,
    ObserverQuantizer,
    QAT_Quantizer,
)
from purecompress.compat.schema import SchemaError
from purecompress.selectors import ConfigError

__all__ = [
    "BN_FOLD_TAG",
    "BNNQuantizer",
    "ConfigError",
    "DoReFaQuantizer",
    "LayerInfo",
    "LsqQuantizer",
    "NaiveQuantizer",
    "ObserverQuantizer",
    "OnnxPlan",
    "QAT_Quantizer",
    "QuantForward",
    "QuantGrad",
    "QuantType",
    "Quantizer",
    "QuantizerIdentityWrapper",
    "QuantizerModuleWrapper",
    "SchemaError",
]
