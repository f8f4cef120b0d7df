"""Typed, frozen quantization configs: one :class:`QuantConfig` per NNI ``config_list`` entry.

Keys (NNI 2.10): ``quant_types`` (subset of weight/input/output), ``quant_bits`` (int or per-type
dict, each in 1..31), ``quant_dtype`` ('int'/'uint' or per-type dict, default 'uint'),
``quant_scheme`` (one of :data:`~purecompress.quant.qparams.SCHEMES` or per-type dict, default
'per_tensor_affine'), ``quant_start_step`` (int >= 0), ``op_types``, ``op_names``, ``exclude``.
Every problem raises :class:`~purecompress.selectors.ConfigError` naming the entry index and key.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import attrs

from purecompress.quant.qparams import DTYPES, SCHEMES, int_range, is_per_channel
from purecompress.selectors import ConfigError, Selector, check_op_types, parse_selector

__all__ = ["QUANT_TYPES", "SELECT_KEYS", "QuantConfig", "TensorSpec", "from_quant_config_list"]

QUANT_TYPES: tuple[str, ...] = ("weight", "input", "output")
SELECT_KEYS: tuple[str, ...] = ("op_types", "op_names", "exclude")
_KEYS = ("quant_types", "quant_bits", "quant_dtype", "quant_scheme", "quant_start_step",
         "op_types", "op_names", "exclude")  # fmt: skip


@attrs.frozen
class TensorSpec:
    """How one tensor kind of a layer is quantized.

    Attributes:
        bits: bit width.
        dtype: 'int' or 'uint'.
        scheme: one of the four schemes.
    """

    bits: int
    dtype: str = "uint"
    scheme: str = "per_tensor_affine"

    @property
    def qrange(self) -> tuple[int, int]:
        """``int_range(bits, dtype)`` (NNI's narrow signed range)."""
        return int_range(self.bits, self.dtype)

    @property
    def per_channel(self) -> bool:
        """Whether the scheme is per channel."""
        return is_per_channel(self.scheme)


@attrs.frozen
class QuantConfig:
    """One quantization config entry, validated.

    Attributes:
        selector: which modules it applies to.
        specs: quant type ('weight'/'input'/'output') -> :class:`TensorSpec`, in NNI's type order.
        start_step: quantization is skipped while the step is below this (observers still run).
    """

    selector: Selector
    specs: Mapping[str, TensorSpec] = attrs.field(factory=dict, converter=lambda d: dict(d))
    start_step: int = 0

    @property
    def quant_types(self) -> tuple[str, ...]:
        """The quantized tensor kinds."""
        return tuple(self.specs)

    def bits(self, quant_type: str) -> int:
        """Bit width of ``quant_type`` (KeyError when it is not quantized)."""
        return self.specs[quant_type].bits


def _per_type(index: int, key: str, value: object, types: Sequence[str], check: object) -> dict[str, object]:
    if isinstance(value, Mapping):
        bad = [k for k in value if k not in QUANT_TYPES]
        if bad:
            raise ConfigError(index, key, f"keys must be among {list(QUANT_TYPES)}, got {bad}")
        values = dict(value)
    else:
        values = {t: value for t in types}
    for t, v in values.items():
        check(t, v)  # type: ignore[operator]
    return values


def _entry(index: int, entry: Mapping[str, object], allowed_op_types: Sequence[str] | None,
           allowed_bits: Sequence[int] | None, allowed_types: Sequence[str], allowed_keys: Sequence[str],
           min_bits: int | None) -> QuantConfig:
    if not isinstance(entry, Mapping):
        raise ConfigError(index, None, f"each entry must be a dict, got {type(entry).__name__}")
    unknown = [k for k in entry if k not in allowed_keys]
    if unknown:
        what = "unknown key" if unknown[0] not in _KEYS else "not used by this algorithm (it would be ignored)"
        raise ConfigError(index, str(unknown[0]), f"{what}; allowed: {list(allowed_keys)}")
    selector = parse_selector(index, entry)
    check_op_types(index, selector, allowed_op_types)
    if "exclude" not in entry and not ("quant_types" in entry and "quant_bits" in entry):
        raise ConfigError(index, None, "either (quant_types and quant_bits) or exclude must be specified")
    if selector.exclude and (given := [k for k in entry if k.startswith("quant_")]):
        raise ConfigError(index, "exclude", f"exclude=True removes the selected modules, so {given} would be "
                          "ignored; drop them, or drop 'exclude'")
    types = entry.get("quant_types", [])
    if not isinstance(types, (list, tuple)) or any(t not in allowed_types for t in types):
        raise ConfigError(index, "quant_types", f"must be a list drawn from {list(allowed_types)}, got {types!r}")
    types = [t for t in QUANT_TYPES if t in types]

    def check_bits(t: str, v: object) -> None:
        if isinstance(v, bool) or not isinstance(v, int) or not 0 < v < 32:
            raise ConfigError(index, "quant_bits", f"{t} bits must be an int in 1..31, got {v!r}")
        if allowed_bits is not None and v not in allowed_bits:
            raise ConfigError(index, "quant_bits", f"{t} bits must be one of {list(allowed_bits)}, got {v!r}")

    def check_in(key: str, allowed: Sequence[str]) -> object:
        def check(t: str, v: object) -> None:
            if v not in allowed:
                raise ConfigError(index, key, f"{t}: must be one of {list(allowed)}, got {v!r}")
        return check

    bits = _per_type(index, "quant_bits", entry.get("quant_bits", {}), types, check_bits)
    dtypes = _per_type(index, "quant_dtype", entry.get("quant_dtype", "uint"), types, check_in("quant_dtype", DTYPES))
    schemes = _per_type(index, "quant_scheme", entry.get("quant_scheme", "per_tensor_affine"), types,
                        check_in("quant_scheme", SCHEMES))
    start = entry.get("quant_start_step", 0)
    if isinstance(start, bool) or not isinstance(start, int) or not 0 <= start < 2**62:
        raise ConfigError(index, "quant_start_step", f"must be an int in [0, 2**62) (the step counter is "
                          f"int64), got {start!r}")
    specs = {}
    for t in types:
        if t not in bits:
            raise ConfigError(index, "quant_bits", f"no bit width for quant type {t!r}")
        if bits[t] == 1 and dtypes.get(t, "uint") == "int":
            raise ConfigError(index, "quant_bits", f"{t}: 1-bit 'int' has the single code 0 (range [0, 0]); use "
                              "quant_dtype 'uint' at 1 bit, or 2 bits or more")
        if min_bits is not None and bits[t] < min_bits:
            raise ConfigError(index, "quant_bits", f"{t} bits must be >= {min_bits} here, got {bits[t]}")
        specs[t] = TensorSpec(bits[t], dtypes.get(t, "uint"), schemes.get(t, "per_tensor_affine"))  # type: ignore[arg-type]
    return QuantConfig(selector, specs, start)


def from_quant_config_list(
    config_list: Sequence[Mapping[str, object]],
    *,
    allowed_op_types: Sequence[str] | None = None,
    allowed_bits: Sequence[int] | None = None,
    allowed_quant_types: Sequence[str] = QUANT_TYPES,
    allowed_keys: Sequence[str] = _KEYS,
    min_bits: int | None = None,
) -> tuple[QuantConfig, ...]:
    """Parse an NNI quantization ``config_list`` into :class:`QuantConfig` records.

    Args:
        config_list: NNI dicts.
        allowed_op_types: op types the algorithm supports (QAT: Conv2d, Linear, ReLU, ReLU6).
        allowed_bits: bit widths the algorithm supports (Naive/Observer: ``(8,)``).
        allowed_quant_types: quant types the algorithm supports (DoReFa: ``('weight',)``).
        allowed_keys: config keys the algorithm reads (others would be ignored, so they are refused).
        min_bits: the smallest bit width the algorithm supports (LSQ: 2).

    Raises:
        ConfigError: naming the entry index, the key and the reason.

    >>> cfg, = from_quant_config_list([{'quant_types': ['weight', 'input'],
    ...     'quant_bits': {'weight': 4, 'input': 8}, 'quant_dtype': 'int', 'op_types': ['Conv2d']}])
    >>> cfg.specs['weight']
    TensorSpec(bits=4, dtype='int', scheme='per_tensor_affine')
    >>> from_quant_config_list([{'quant_types': ['weight'], 'quant_bits': 40, 'op_types': ['Conv2d']}])
    Traceback (most recent call last):
    ...
    purecompress.selectors.ConfigError: config_list[0]['quant_bits']: weight bits must be an int in 1..31, got 40
    """
    if not isinstance(config_list, (list, tuple)):
        raise ConfigError(None, None, f"config_list must be a list of dicts, got {type(config_list).__name__}")
    return tuple(_entry(i, e, allowed_op_types, allowed_bits, allowed_quant_types, allowed_keys, min_bits)
                 for i, e in enumerate(config_list))
