"""NNI's pruning utilities (``nni.algorithms.compression.v2.pytorch.utils``) that need no speedup.

``config_list_canonical`` rewrites a user's ``config_list`` into NNI's internal per-group form
(the form stored on each wrapper), built from the core's :func:`purecompress.select`; the
``compute_sparsity*`` helpers measure masks per config group with the core's mask records.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping, Sequence
from typing import Any

from torch import Tensor, nn

from purecompress.pruning import Mask, PruneConfig, from_config_list
from purecompress.selectors import DEFAULT_OP_TYPES, Selector, select

__all__ = [
    "compute_sparsity",
    "compute_sparsity_compact2origin",
    "compute_sparsity_mask2compact",
    "config_list_canonical",
    "get_model_weights_numel",
    "get_module_by_name",
]

Config = dict[str, Any]
NniMasks = Mapping[str, Mapping[str, Tensor | None]]


def _expand_types(types: Sequence[str]) -> list[str]:
    # NNI's order: the named types first, then 'default' expanded at the end.
    return [t for t in types if t != "default"] + (list(DEFAULT_OP_TYPES) if "default" in types else [])


def canonical_from(model: nn.Module, config_list: Sequence[Mapping[str, Any]],
                   configs: Sequence[PruneConfig]) -> list[Config]:
    """:func:`config_list_canonical` for configs already parsed (``configs[i]`` from ``config_list[i]``)."""
    groups = select(model, configs, warn=False).groups()
    out: list[Config] = []
    for index, (entry, config) in enumerate(zip(config_list, configs)):
        if config.selector.exclude:
            continue
        names = sorted(groups.get(index, ()))
        base = {k: copy.deepcopy(v) for k, v in entry.items()
                if k not in ("sparsity", "sparsity_per_layer", "op_names", "op_partial_names", "exclude")}
        if "op_types" in base:
            base["op_types"] = _expand_types(base["op_types"])
        if config.sparsity_per_layer is not None:
            base.pop("total_sparsity", None)
            out += [{**copy.deepcopy(base), "op_names": [name], "total_sparsity": config.sparsity_per_layer}
                    for name in names]
            continue
        base["op_names"] = names
        cap = base.get("max_sparsity_per_layer")
        if isinstance(cap, float):
            base["max_sparsity_per_layer"] = {name: cap for name in names}
        out.append(base)
    return out


def config_list_canonical(model: nn.Module, config_list: Sequence[Mapping[str, Any]]) -> list[Config]:
    """NNI's canonical form: one ``{'op_names': [name], 'total_sparsity': s}`` per layer of a
    ``sparsity`` config, one group per ``total_sparsity`` config, ``'default'`` and partial names
    expanded, excluded modules removed, ``max_sparsity_per_layer`` as ``{name: cap}``.

    >>> m = nn.Sequential(nn.Conv2d(1, 2, 1), nn.Linear(2, 2))
    >>> config_list_canonical(m, [{'sparsity': 0.5, 'op_types': ['Conv2d', 'Linear']}])
    [{'op_types': ['Conv2d', 'Linear'], 'op_names': ['0'], 'total_sparsity': 0.5}, \
{'op_types': ['Conv2d', 'Linear'], 'op_names': ['1'], 'total_sparsity': 0.5}]
    """
    return canonical_from(model, config_list, from_config_list(config_list))


def _selector(config: Mapping[str, Any]) -> Selector:
    # NNI's matching in these helpers: op_types and op_names only (configs are canonical).
    return Selector(op_types=tuple(config["op_types"]) if "op_types" in config else None,
                    op_names=tuple(config["op_names"]) if "op_names" in config else None)


def _matched(model: nn.Module, config: Mapping[str, Any]) -> list[tuple[str, nn.Module]]:
    if "op_types" not in config and "op_names" not in config:
        return [(n, m) for n, m in model.named_modules()]
    sel = _selector(config)
    return [(n, m) for n, m in model.named_modules() if sel.matches(n, type(m).__name__)]


def _weight_numel(module: nn.Module) -> int:
    return module.weight.numel()  # type: ignore[union-attr]


def compute_sparsity_compact2origin(origin_model: nn.Module, compact_model: nn.Module,
                                    config_list: Sequence[Mapping[str, Any]]) -> list[Config]:
    """Per config: ``1 - (weights left in compact_model) / (weights in origin_model)``."""
    out = []
    for config in config_list:
        total = sum(_weight_numel(m) for _, m in _matched(origin_model, config))
        left = sum(_weight_numel(m) for _, m in _matched(compact_model, config))
        # a group whose layers all went to later configs has no weights: nothing of it is pruned
        out.append({**copy.deepcopy(dict(config)), "total_sparsity": 1 - left / total if total else 0.0})
    return out


def compute_sparsity_mask2compact(compact_model: nn.Module, compact_model_masks: NniMasks,
                                  config_list: Sequence[Mapping[str, Any]]) -> list[Config]:
    """Per config: the fraction of its layers' weights that the masks zero."""
    out = []
    for config in config_list:
        total = left = 0
        for name, module in _matched(compact_model, config):
            numel = _weight_numel(module)
            total += numel
            mask = compact_model_masks.get(name, {}).get("weight")
            left += numel if mask is None else int(Mask.from_dense(mask).kept())
        out.append({**copy.deepcopy(dict(config)), "total_sparsity": 1 - left / total if total else 0.0})
    return out


def compute_sparsity(origin_model: nn.Module, compact_model: nn.Module, compact_model_masks: NniMasks,
                     config_list: Sequence[Mapping[str, Any]]) -> tuple[list[Config], list[Config], list[Config]]:
    """``(current2origin, compact2origin, mask2compact)`` sparsity per config, as NNI."""
    c2o = compute_sparsity_compact2origin(origin_model, compact_model, config_list)
    m2c = compute_sparsity_mask2compact(compact_model, compact_model_masks, config_list)
    current = [{**copy.deepcopy(dict(config)),
                "total_sparsity": 1 - (1 - a["total_sparsity"]) * (1 - b["total_sparsity"])}
               for a, b, config in zip(c2o, m2c, config_list)]
    return current, c2o, m2c


def get_model_weights_numel(model: nn.Module, config_list: Sequence[Mapping[str, Any]],
                            masks: NniMasks | None = None) -> tuple[dict[str, int], dict[str, float]]:
    """Kept weight count per selected layer, and the masked rate of the layers that have masks."""
    masks = masks or {}
    numel: dict[str, int] = {}
    rate: dict[str, float] = {}
    for config in config_list:
        for name, module in _matched(model, config):
            mask = masks.get(name, {}).get("weight")
            if isinstance(mask, Tensor):
                kept = int(Mask.from_dense(mask).kept())
                rate[name] = 1 - kept / mask.numel()
                numel[name] = kept
            else:
                numel[name] = _weight_numel(module)
    return numel, rate


def get_module_by_name(model: nn.Module, module_name: str) -> tuple[nn.Module | None, nn.Module | None]:
    """``(parent, module)`` for a qualified name, ``(None, None)`` if it does not exist."""
    *path, leaf = module_name.split(".")
    parent: nn.Module = model
    for part in path:
        child = parent._modules.get(part)
        if child is None:
            return None, None
        parent = child
    module = parent._modules.get(leaf)
    return (parent, module) if module is not None else (None, None)
