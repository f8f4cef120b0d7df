"""NNI 2.x quantization API (``nni.compression.pytorch.compressor`` quantizer classes and
``nni.algorithms.compression.pytorch.quantization``) on purecompress's functional core.

Scripts written for NNI 2.10 run with their imports changed::

    from purecompress.compat.quantization import QAT_Quantizer
    quantizer = QAT_Quantizer(model, config_list, optimizer)     # dummy_input only for BN folding
    quantizer.compress()
    ...  # train as usual; optimizer.step() counts quantizer steps
    calibration = quantizer.export_model('model.pth', 'calibration.pth', onnx_path='model.onnx',
                                         input_shape=(1, 3, 32, 32))

Config errors are :class:`purecompress.config.ConfigError` (a ``ValueError``; also exported here
as ``SchemaError`` for scripts that catch NNI's name). The NNI bugs not copied are listed in each
implementation module's docstring.
"""

from __future__ import annotations

from purecompress.compat.quantization_algorithms import (
    BNNQuantizer,
    DoReFaQuantizer,
    LsqQuantizer,
    NaiveQuantizer,
)
from purecompress.compat.quantization_base import OnnxPlan, Quantizer
from purecompress.compat.quantization_observer import ObserverQuantizer
from purecompress.compat.quantization_qat import QAT_Quantizer
from purecompress.compat.quantization_wrappers import (
    BN_FOLD_TAG,
    LayerInfo,
    QuantForward,
    QuantGrad,
    QuantizerIdentityWrapper,
    QuantizerModuleWrapper,
    QuantType,
)
from purecompress.config import ConfigError

SchemaError = ConfigError

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
