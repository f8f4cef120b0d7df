"""NNI 2.10's per-layer quantization settings (``nni.compression.pytorch.quantization.settings``).

:class:`LayerQuantSetting` is what NNI's ``QAT_Quantizer`` stores on each quantized module as
``module.layer_quant_setting``: per tensor kind a :class:`TensorQuantSetting` (scheme, dtype, bits
and integer range), read from the core's parsed :class:`~purecompress.quant.QuantConfig`.
"""

from __future__ import annotations

import attrs

from purecompress.quant import QuantConfig, TensorSpec

__all__ = ["LayerQuantSetting", "TensorQuantSetting"]


@attrs.define
class TensorQuantSetting:
    """How one tensor kind (weight, input or output) of a layer is quantized.

    Attributes:
        quant_scheme: ``'per_tensor_affine'``, ``'per_tensor_symmetric'``, ``'per_channel_affine'``
            or ``'per_channel_symmetric'``.
        quant_dtype: ``'int'`` or ``'uint'``.
        bits: bit width.
        qmin, qmax: the integer range (NNI's narrow signed range for ``'int'``).
    """

    quant_scheme: str
    quant_dtype: str
    bits: int
    qmin: int
    qmax: int

    @classmethod
    def from_spec(cls, spec: TensorSpec) -> TensorQuantSetting:
        """The setting of the core's :class:`~purecompress.quant.TensorSpec`."""
        return cls(spec.scheme, spec.dtype, spec.bits, *spec.qrange)

    def get_qmin_qmax(self) -> tuple[int, int]:
        """``(qmin, qmax)``."""
        return self.qmin, self.qmax


@attrs.define
class LayerQuantSetting:
    """A layer's settings: one :class:`TensorQuantSetting` per quantized kind (None when not quantized).

    Attributes:
        input, weight, output: the kinds' settings.
        ema_decay: decay of the activation range EMA (NNI's 0.99).
        quant_start_step: quantization starts at this optimizer step.

    >>> from purecompress.quant import from_quant_config_list
    >>> config = from_quant_config_list([{'quant_types': ['weight'], 'quant_bits': 8, 'op_types': ['Conv2d'],
    ...                                   'quant_dtype': 'int'}])[0]
    >>> LayerQuantSetting.from_config(config).weight
    TensorQuantSetting(quant_scheme='per_tensor_affine', quant_dtype='int', bits=8, qmin=-127, qmax=127)
    """

    input: TensorQuantSetting | None = None
    weight: TensorQuantSetting | None = None
    output: TensorQuantSetting | None = None
    ema_decay: float = 0.99
    quant_start_step: int = 0

    @classmethod
    def from_config(cls, config: QuantConfig, ema_decay: float = 0.99) -> LayerQuantSetting:
        """The settings of one parsed config entry."""
        kinds = {kind: TensorQuantSetting.from_spec(spec) for kind, spec in config.specs.items()}
        return cls(**kinds, ema_decay=ema_decay, quant_start_step=config.start_step)
