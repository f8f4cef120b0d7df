"""The one-shot pruning pipeline driven by a :class:`~purecompress.Plan`.

``allocate`` reads each target's sparsity from the config that won it and dispatches to the
allocator of the chosen *distribution*; ``prune`` runs metric -> allocate for a model.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Literal

from torch import Tensor

from purecompress.pruning._allocators import allocate_balanced, allocate_global, allocate_per_layer, bias_masks
from purecompress.pruning._config import PruneConfig
from purecompress.pruning._n_m import allocate_n_m
from purecompress.pruning._records import Masks, Metrics
from purecompress.selectors import ConfigError, Plan

__all__ = [
    "allocate",
    "prune",
]


Distribution = Literal["per_layer", "global", "balanced"]



def _sparsities(metrics: Metrics, plan: Plan[PruneConfig]) -> dict[str, float]:
    targets = plan.targets()
    unknown = [name for name in metrics if name not in targets]
    if unknown:
        raise KeyError(f"metrics for parameters the plan does not select: {unknown}")
    out = {}
    for name in metrics:
        sparsity = targets[name].config.sparsity
        if sparsity is None:
            raise ValueError(f"the config selecting {name!r} sets no sparsity")
        out[name] = sparsity
    return out



def allocate(
    metrics: Metrics,
    plan: Plan[PruneConfig],
    *,
    distribution: Distribution = "per_layer",
    balance_gran: Sequence[int] | None = None,
    prior: Masks | None = None,
    bias: bool = True,
) -> Masks:
    """Masks for ``metrics`` with the sparsities the plan's configs ask for.

    Args:
        metrics: from a metric function over the plan's targets.
        plan: from :func:`~purecompress.select`.
        distribution: ``'per_layer'`` (each layer its sparsity), ``'global'`` (each config group
            pooled, capped by ``max_sparsity_per_layer``) or ``'balanced'`` (``balance_gran``).
        balance_gran: bank shape for ``'balanced'``.
        prior: masks already applied (continuous masking: never un-prune).
        bias: also mask biases of pruned output channels (NNI's rule, see ``bias_masks``).
    """
    sparsity = _sparsities(metrics, plan)
    targets = plan.targets()
    n_m: dict[str, tuple[int, int]] = {}
    for name in metrics:
        if (pattern := targets[name].config.n_m) is not None:
            n_m[name] = pattern
    if n_m and distribution != "per_layer":
        raise ValueError(f"N:M configs ('sparse_pattern') are per layer; distribution={distribution!r} cannot "
                         f"apply them (layers {sorted(n_m)})")
    if n_m:
        masks = {}
        for name, (n, m) in n_m.items():
            masks.update(allocate_n_m({name: metrics[name]}, n, m, prior=prior))
        rest = {name: metric for name, metric in metrics.items() if name not in n_m}
        masks.update(allocate_per_layer(rest, {k: sparsity[k] for k in rest}, prior=prior) if rest else {})
        masks = {name: masks[name] for name in metrics}
    elif distribution == "per_layer":
        masks = allocate_per_layer(metrics, sparsity, prior=prior)
    elif distribution == "balanced":
        if balance_gran is None:
            raise ValueError("distribution='balanced' needs balance_gran, e.g. [5]")
        masks = allocate_balanced(metrics, sparsity, gran=balance_gran, prior=prior)
    elif distribution == "global":
        masks = {}
        groups: dict[int, Metrics] = {}  # config index -> its targets' metrics, pooled together
        for name, metric in metrics.items():
            groups.setdefault(targets[name].index, {})[name] = metric
        for group in groups.values():
            first = next(iter(group))
            caps = {n: targets[first].config.cap_for(targets[n].module) for n in group}
            masks.update(allocate_global(group, sparsity[first], max_sparsity=caps, prior=prior))
    else:
        raise ValueError(f"unknown distribution {distribution!r}; use 'per_layer', 'global' or 'balanced'")
    if bias:
        shapes = {k: v for entry in plan for k, v in entry.params.items()}
        masks = bias_masks(masks, shapes)
    return masks



def prune(
    params: Mapping[str, Tensor],
    plan: Plan[PruneConfig],
    metric: Callable[[Mapping[str, Tensor], Plan[PruneConfig]], Metrics],
    *,
    distribution: Distribution = "per_layer",
    balance_gran: Sequence[int] | None = None,
    prior: Masks | None = None,
) -> Masks:
    """``allocate(metric(params, plan), plan, ...)``: one-shot masks for a model's params.

    >>> import torch, purecompress as pc
    >>> model = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.ReLU(), torch.nn.Linear(8, 2))
    >>> plan = pc.select(model, pc.from_config_list([{'sparsity': 0.5, 'op_names': ['0']}]))
    >>> masks = prune(pc.params_of(model), plan, pc.l1_norm)
    >>> sorted(masks), masks['0.weight'].sparsity()
    (['0.bias', '0.weight'], 0.5)
    """
    if not isinstance(plan, Plan):
        raise ConfigError(None, None, f"plan must be a Plan, got {type(plan).__name__}; pass "
                          "pc.select(model, pc.from_config_list(config_list))")
    return allocate(metric(params, plan), plan, distribution=distribution, balance_gran=balance_gran,
                    prior=prior)
