"""Sparsity reports: per layer, per config group (NNI's ``compute_sparsity_mask2compact``), total."""

from __future__ import annotations

import math
from collections.abc import Mapping

import attrs
from torch import Tensor

from purecompress.pruning._records import Mask
from purecompress.selectors import Plan

__all__ = [
    "LayerSparsity",
    "SparsityReport",
    "sparsity_report",
]



@attrs.frozen
class LayerSparsity:
    """Attributes: name (parameter), numel, kept (elements), sparsity (fraction removed)."""

    name: str
    numel: int
    kept: int

    @property
    def sparsity(self) -> float:
        """Fraction of elements removed."""
        return 1.0 - self.kept / self.numel if self.numel else 0.0



@attrs.frozen
class SparsityReport:
    """Attributes: layers (each masked target), groups (config index -> sparsity of its
    targets together), total (over all reported layers), params_total / params_kept (over every
    parameter given, masked or not), tied (a reported layer's params key -> the other names of
    that one tensor, e.g. ``{'transformer.wte.weight': ('lm_head.weight',)}``: its mask acts at
    every use)."""

    layers: tuple[LayerSparsity, ...]
    groups: Mapping[int, float]
    total: float
    params_total: int
    params_kept: int
    tied: Mapping[str, tuple[str, ...]] = attrs.field(factory=dict)

    def table(self) -> str:
        """A plain-text table, one row per layer plus the total; a tied layer's row names its other
        names (``transformer.wte.weight = lm_head.weight``)."""
        names = [" = ".join((lay.name, *self.tied.get(lay.name, ()))) for lay in self.layers]
        width = max([len(n) for n in names] + [5])
        rows = [f"{'layer':<{width}}  {'params':>10}  {'kept':>10}  sparsity"]
        rows += [f"{name:<{width}}  {lay.numel:>10}  {lay.kept:>10}  {lay.sparsity:8.2%}"
                 for name, lay in zip(names, self.layers)]
        rows.append(f"{'total':<{width}}  {self.params_total:>10}  {self.params_kept:>10}  "
                    f"{1 - self.params_kept / max(self.params_total, 1):8.2%}")
        return "\n".join(rows)



def sparsity_report(params: Mapping[str, Tensor], masks: Mapping[str, Mask],
                    plan: Plan | None = None, *, tied: Mapping[str, str] | None = None) -> SparsityReport:
    """Measure ``masks`` against ``params`` (``params_total`` counts every floating tensor given,
    float buffers such as BN running stats included: pass ``params_of(model, buffers=False)`` to
    count parameters only).

    ``total`` is the sparsity over the masked targets' weights; ``groups`` gives NNI's
    per-config-group sparsity of the plan's ``weight`` targets. A tied tensor is counted once.

    Args:
        params: name -> tensor (from :func:`~purecompress.params_of`).
        masks: name -> mask.
        plan: the plan the masks were made for (config groups; its tied names).
        tied: other name -> params key (:func:`~purecompress.tied_params`), where no plan is
            given; the report's ``tied`` lists the other names of each masked tensor.

    >>> import torch, purecompress as pc
    >>> w = torch.ones(4, 2)
    >>> r = sparsity_report({'w': w}, {'w': pc.Mask(torch.tensor([[True], [False], [True], [False]]), (4, 2))})
    >>> r.layers[0].sparsity, r.total
    (0.5, 0.5)
    """
    layers = []
    kept_of: dict[str, int] = {}
    for name, mask in masks.items():
        if name not in params:
            raise KeyError(f"mask for {name!r}, which is not in params")
        kept = int(mask.kept())
        kept_of[name] = kept
        layers.append(LayerSparsity(name, math.prod(mask.shape), kept))
    weights = [lay for lay in layers if not lay.name.endswith("bias")] or layers
    numel = sum(lay.numel for lay in weights)
    total = 1.0 - sum(lay.kept for lay in weights) / numel if numel else 0.0
    groups: dict[int, float] = {}
    if plan is not None:
        by_group: dict[int, list[str]] = {}
        for name, entry in plan.targets().items():
            by_group.setdefault(entry.index, []).append(name)
        for index, names in by_group.items():
            n = sum(params[k].numel() for k in names)
            kept = sum(kept_of.get(k, params[k].numel()) for k in names)
            groups[index] = 1.0 - kept / n if n else 0.0
    params_total = sum(t.numel() for t in params.values() if t.is_floating_point())
    params_kept = params_total - sum(lay.numel - lay.kept for lay in layers)
    aliases: dict[str, list[str]] = {}
    for alias, key in (tied if tied is not None else plan.tied if plan is not None else {}).items():
        if key in masks:
            aliases.setdefault(key, []).append(alias)
    return SparsityReport(tuple(layers), groups, total, params_total, params_kept,
                          {key: tuple(names) for key, names in aliases.items()})
