"""Typed, frozen, validated pruning configs: one :class:`PruneConfig` per NNI ``config_list`` entry.

``from_config_list`` parses NNI dicts with NNI 2.10's validation rules; every problem raises
:class:`~purecompress.ConfigError`, which names the entry index, the key and the reason.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import attrs

from purecompress.pruning._n_m import n_m_sparsity, parse_n_m
from purecompress.selectors import SELECTOR_KEYS, ConfigError, Selector, check_op_types, parse_selector

__all__ = [
    "PruneConfig",
    "from_config_list",
]


_PRUNE_KEYS = ("sparsity", "sparsity_per_layer", "total_sparsity", "max_sparsity_per_layer", "sparse_pattern")



def _sparsity(index: int | None, key: str, value: object, *, upper_inclusive: bool = False) -> float:
    if not isinstance(value, float):  # NNI's schema: And(float, ...); 0 or 1 as int is a typo
        raise ConfigError(index, key, f"must be a float in [0, 1), got {type(value).__name__} {value!r}")
    if not (0.0 <= value < 1.0 or (upper_inclusive and value == 1.0)):
        raise ConfigError(index, key, f"must be in [0, 1{']' if upper_inclusive else ')'}, got {value!r}")
    return value



@attrs.frozen
class PruneConfig:
    """One pruning config entry, validated.

    Attributes:
        selector: which modules it applies to.
        sparsity_per_layer: each selected layer prunes this fraction (NNI ``sparsity``).
        total_sparsity: the selected layers together prune this fraction (global mode pools them;
            per-layer mode applies it to each layer, as NNI does).
        max_sparsity_per_layer: cap per layer in global allocation: one float, or per module name.
        options: algorithm-specific keys the caller allowed (e.g. ADMM's ``rho``).
        n_m: ``(N, M)`` from the ``'sparse_pattern'`` key (a purecompress extension, e.g. ``'2:4'``):
            keep the N largest of every M consecutive weights along the input dim; the per-layer
            sparsity is then ``1 - N/M``. NNI's pruners (purecompress.compat) reject the key.
    """

    selector: Selector
    sparsity_per_layer: float | None = None
    total_sparsity: float | None = None
    max_sparsity_per_layer: float | Mapping[str, float] | None = None
    options: Mapping[str, object] = attrs.field(factory=dict, converter=lambda d: dict(d))
    n_m: tuple[int, int] | None = None

    @property
    def sparsity(self) -> float | None:
        """The sparsity this config asks of each layer (per-layer value, else total)."""
        return self.sparsity_per_layer if self.sparsity_per_layer is not None else self.total_sparsity

    def cap_for(self, module: str) -> float:
        """``max_sparsity_per_layer`` for ``module`` (default 0.99, NNI's value)."""
        cap = self.max_sparsity_per_layer
        if cap is None:
            return 0.99
        if isinstance(cap, Mapping):
            return float(cap.get(module, 0.99))
        return float(cap)



def _prune_entry(index: int, entry: Mapping[str, object], extra_keys: Sequence[str],
                 allowed_op_types: Sequence[str] | None, require_sparsity: bool) -> PruneConfig:
    if not isinstance(entry, Mapping):
        raise ConfigError(index, None, f"each entry must be a dict, got {type(entry).__name__}")
    unknown = [k for k in entry if k not in SELECTOR_KEYS + _PRUNE_KEYS + tuple(extra_keys)]
    if unknown:
        raise ConfigError(index, str(unknown[0]), "unknown key")
    selector = parse_selector(index, entry)
    check_op_types(index, selector, allowed_op_types)
    if selector.exclude and (given := [k for k in _PRUNE_KEYS if k in entry]):
        raise ConfigError(index, "exclude", f"exclude=True removes the selected modules, so {given} would be "
                          "ignored; drop them, or drop 'exclude'")
    if "sparsity" in entry and "sparsity_per_layer" in entry:
        raise ConfigError(index, "sparsity", "'sparsity' and 'sparsity_per_layer' mean the same; set one")
    per_layer = entry.get("sparsity", entry.get("sparsity_per_layer"))
    key = "sparsity" if "sparsity" in entry else "sparsity_per_layer"
    kwargs: dict[str, object] = {"selector": selector}
    if per_layer is not None:
        kwargs["sparsity_per_layer"] = _sparsity(index, key, per_layer)
    if "total_sparsity" in entry:
        kwargs["total_sparsity"] = _sparsity(index, "total_sparsity", entry["total_sparsity"])
    if per_layer is not None and "total_sparsity" in entry:
        raise ConfigError(index, "total_sparsity", f"set either {key!r} (each layer) or 'total_sparsity' (the "
                          "selected layers together), not both")
    if "max_sparsity_per_layer" in entry:
        if "total_sparsity" not in entry:
            hint = f"with {key!r} each layer gets exactly that" if per_layer is not None else "add total_sparsity"
            raise ConfigError(index, "max_sparsity_per_layer", f"caps layers under 'total_sparsity' only ({hint})")
        cap = entry["max_sparsity_per_layer"]
        if isinstance(cap, Mapping) and (not cap or not all(isinstance(k, str) for k in cap)):
            raise ConfigError(index, "max_sparsity_per_layer", f"must be a float, or a non-empty dict of module "
                              f"names to floats, got {cap!r}")
        caps = cap.values() if isinstance(cap, Mapping) else (cap,)
        for value in caps:
            if _sparsity(index, "max_sparsity_per_layer", value, upper_inclusive=True) == 0.0:
                raise ConfigError(index, "max_sparsity_per_layer", "must be in (0, 1]: a cap of 0.0 prunes nothing "
                                  "(leave the layer out, or use 'exclude')")
        kwargs["max_sparsity_per_layer"] = {str(k): v for k, v in cap.items()} if isinstance(cap, Mapping) else cap
    if "sparse_pattern" in entry:
        n_m = parse_n_m(entry["sparse_pattern"], index=index)
        implied = n_m_sparsity(*n_m)
        if "total_sparsity" in entry:
            raise ConfigError(index, "sparse_pattern", "N:M is per layer: use it without 'total_sparsity'")
        if per_layer is not None and kwargs["sparsity_per_layer"] != implied:
            raise ConfigError(index, "sparse_pattern", f"{entry['sparse_pattern']!r} prunes {implied} of each "
                              f"layer, not {key!r} {per_layer!r}: drop {key!r} or make it {implied}")
        kwargs["n_m"] = n_m
        kwargs.setdefault("sparsity_per_layer", implied)
    if require_sparsity and not selector.exclude and "sparsity_per_layer" not in kwargs \
            and "total_sparsity" not in kwargs:
        raise ConfigError(index, None, "needs 'sparsity' (or 'sparsity_per_layer') or 'total_sparsity'")
    kwargs["options"] = {k: entry[k] for k in extra_keys if k in entry}
    return PruneConfig(**kwargs)  # type: ignore[arg-type]



def from_config_list(
    config_list: Sequence[Mapping[str, object]],
    *,
    extra_keys: Sequence[str] = (),
    allowed_op_types: Sequence[str] | None = None,
    require_sparsity: bool = True,
) -> tuple[PruneConfig, ...]:
    """Parse an NNI pruning ``config_list`` into :class:`PruneConfig` records.

    Args:
        config_list: NNI dicts, e.g. ``[{'sparsity': 0.5, 'op_types': ['Conv2d']}]``.
        extra_keys: algorithm-specific keys to accept into ``options`` (e.g. ``('rho',)``).
        allowed_op_types: the op types this algorithm supports; others are rejected.
        require_sparsity: every entry but exclusions must give a sparsity (False: an entry may only
            select modules, its sparsity is None; NNI's base ``Pruner`` takes such entries).

    Raises:
        ConfigError: naming the entry index, the key and the reason.

    >>> from_config_list([{'sparsity': 0.5, 'op_types': ['Conv2d']}])[0].sparsity_per_layer
    0.5
    >>> from_config_list([{'sparsity': 1.5, 'op_types': ['Conv2d']}])
    Traceback (most recent call last):
    ...
    purecompress.selectors.ConfigError: config_list[0]['sparsity']: must be in [0, 1), got 1.5
    """
    if not isinstance(config_list, (list, tuple)):
        raise ConfigError(None, None, f"config_list must be a list of dicts, got {type(config_list).__name__}")
    return tuple(_prune_entry(i, e, extra_keys, allowed_op_types, require_sparsity) for i, e in enumerate(config_list))
