"""Sensitivity analysis: how a score (loss, accuracy) changes as each layer alone is pruned.

For every target layer and every candidate sparsity the layer is pruned (by a metric and the
per-layer allocator; a channel mask prunes the pruned channels' biases too, NNI's rule) while the
rest of the model stays dense, and ``evaluate`` scores the result.
The K candidates of a layer run as **one** ``torch.func.vmap``-ped evaluation over a tensor of
sparsities (the allocators accept one, see :func:`~purecompress.allocate_per_layer`) instead of K
evaluations; where the evaluation cannot be vmapped (a BatchNorm in train mode writes its running
statistics, data-dependent control flow, ``.item()``), that layer falls back to a loop, and the
result says so and why.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence

import attrs
import torch
from torch import Tensor
from torch.func import vmap

from purecompress.pruning._allocators import allocate_per_layer, bias_masks
from purecompress.pruning._metrics import l1_norm
from purecompress.pruning._params import apply_masks
from purecompress.pruning._records import Metrics
from purecompress.selectors import Plan
from purecompress.transform import Params

__all__ = ["Sensitivity", "sensitivity"]

MetricFn = Callable[[Mapping[str, Tensor], "Plan | Iterable[str]"], Metrics]


@attrs.frozen
class Sensitivity:
    """The scores of a sensitivity analysis.

    Attributes:
        layers: the pruned parameters, in target order.
        sparsities: the candidate sparsities, in the order given.
        scores: ``[len(layers), len(sparsities)]`` float tensor: ``evaluate`` with only that layer
            pruned to that sparsity.
        looped: parameter name -> why its candidates ran as a loop instead of one vmapped call
            (empty when every layer was vmapped).
    """

    layers: tuple[str, ...]
    sparsities: tuple[float, ...]
    scores: Tensor
    looped: Mapping[str, str] = attrs.field(factory=dict)

    def as_dict(self) -> dict[str, dict[float, float]]:
        """``{layer: {sparsity: score}}`` (NNI's ``SensitivityAnalysis.analysis()`` format)."""
        return {layer: dict(zip(self.sparsities, row.tolist())) for layer, row in zip(self.layers, self.scores)}


def sensitivity(
    params: Params,
    targets: Plan | Iterable[str],
    sparsities: Sequence[float],
    evaluate: Callable[[Params], Tensor],
    *,
    metric: MetricFn = l1_norm,
    vmapped: bool = True,
) -> Sensitivity:
    """Score ``evaluate`` with each target layer pruned, alone, to each candidate sparsity.

    Args:
        params: the model's params (:func:`~purecompress.params_of`); not modified.
        targets: a :class:`~purecompress.Plan` or parameter names (``'<module>.weight'``): the
            layers analysed, one at a time.
        sparsities: K candidate sparsities in ``[0, 1]``.
        evaluate: ``params -> 0-dim tensor``, e.g.
            ``lambda p: loss_fn(functional_call(model, p, (x,)), y)``; must be a pure function of
            ``params`` for the vmapped path (the model in eval mode).
        metric: ``(params, targets) -> Metrics``, default :func:`~purecompress.l1_norm` (NNI's
            ``prune_type='l1'``).
        vmapped: evaluate the K candidates of a layer in one vmapped call (falling back to a loop
            where that fails); ``False`` always loops.

    Returns:
        A :class:`Sensitivity` record.

    >>> import torch, purecompress as pc
    >>> from torch.func import functional_call
    >>> model = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.ReLU(), torch.nn.Linear(8, 2)).eval()
    >>> x = torch.randn(16, 4)
    >>> ref = model(x).detach()
    >>> err = lambda p: (functional_call(model, p, (x,)) - ref).pow(2).mean()
    >>> result = pc.sensitivity(pc.params_of(model), ['0.weight', '2.weight'], [0.0, 0.5, 0.9], err)
    >>> result.scores.shape, (result.scores[:, 0] < 1e-12).tolist(), dict(result.looped)
    (torch.Size([2, 3]), [True, True], {})
    """
    values = tuple(float(s) for s in sparsities)
    if not values:
        raise ValueError("sensitivity needs at least one candidate sparsity")
    bad = [s for s in values if not 0.0 <= s <= 1.0]
    if bad:
        raise ValueError(f"candidate sparsities must be in [0, 1], got {bad}")
    metrics = metric(params, targets)
    candidates = torch.tensor(values, dtype=torch.float64)
    rows, looped = [], {}
    shapes = {k: tuple(v.shape) for k, v in params.items()}
    for name in metrics:
        def at(s: Tensor | float, one: Metrics = {name: metrics[name]}) -> Tensor:  # noqa: B006 - read only
            return evaluate(apply_masks(params, bias_masks(allocate_per_layer(one, s), shapes)))

        row = None
        if vmapped:
            try:
                row = vmap(at)(candidates)
            except Exception as err:  # noqa: BLE001 - any failure to vmap means: loop instead
                looped[name] = f"{type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}"
        else:
            looped[name] = "vmapped=False"
        if row is None:
            row = torch.stack([torch.as_tensor(at(s)) for s in values])
        rows.append(row.detach().to(torch.float64))
    scores = torch.stack(rows) if rows else torch.empty(0, len(values), dtype=torch.float64)
    return Sensitivity(tuple(metrics), values, scores, looped)
