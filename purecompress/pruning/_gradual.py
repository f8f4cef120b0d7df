"""Gradual pruning as an optax-shaped transform, and lottery-ticket rewinding.

``gradual(schedule, targets)`` returns a :class:`Transform`: ``init(params) -> GradualState`` and
``update(params, state, *, step=None, metrics=None) -> (masked params, state)``. It runs inside
the caller's own training loop; nothing patches an optimizer::

    prune = pc.agp(0.8, plan, end=1000, every=100)
    state = prune.init(params)
    for step, batch in enumerate(batches):
        params = train_step(params, batch)             # the user's own step
        params, state = prune.update(params, state)    # masks follow the schedule

Masks are recomputed whenever the schedule's value rises, with the current masks as the
allocator's ``prior`` (continuous masking): a pruned entry never comes back.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterable, Mapping
from typing import Literal

from torch import Tensor

from purecompress._pytree import record, static
from purecompress.pruning._allocators import allocate_global, allocate_per_layer, bias_masks
from purecompress.pruning._metrics import level
from purecompress.pruning._params import apply_masks
from purecompress.pruning._records import Masks, Metrics
from purecompress.pruning._schedule import Schedule, agp_schedule, lottery_schedule
from purecompress.selectors import Plan
from purecompress.transform import Params, Transform

__all__ = [
    "GradualState",
    "agp",
    "gradual",
    "lottery_ticket",
    "rewind",
]


MetricFn = Callable[[Mapping[str, Tensor], "Plan | Iterable[str]"], Metrics]



@record
class GradualState:
    """What gradual pruning carries between steps.

    Attributes:
        masks: the current masks (targets, and their biases when ``bias=True``).
        step: the step the next ``update`` uses when none is given.
        sparsity: the sparsity the masks were allocated for (the highest scheduled so far).
    """

    masks: Masks
    step: int = static(default=0)
    sparsity: float = static(default=0.0)



def gradual(
    schedule: Schedule,
    targets: Plan | Iterable[str],
    *,
    metric: MetricFn = level,
    distribution: Literal["per_layer", "global"] = "per_layer",
    max_sparsity: float = 0.99,
    bias: bool = True,
) -> Transform:
    """Prune ``targets`` to ``schedule(step)`` at every step, never un-pruning.

    Args:
        schedule: ``step -> sparsity`` (see :mod:`purecompress.pruning`).
        targets: a :class:`~purecompress.Plan` (its ``weight`` targets) or parameter names.
        metric: ``(params, targets) -> Metrics`` used when ``update`` gets no ``metrics``.
        distribution: ``'per_layer'`` (each target prunes the scheduled fraction) or ``'global'``
            (all targets pooled, each capped at ``max_sparsity``).
        max_sparsity: per-layer cap of the global distribution.
        bias: also mask the biases of pruned output channels (NNI's rule).

    Returns:
        A :class:`Transform`. ``update(params, state, *, step=None, metrics=None)`` returns the
        params with the masks applied (new tensors) and the new :class:`GradualState`.

    >>> import torch
    >>> prune = gradual(lambda t: 0.25 * t, ['w'])
    >>> params = {'w': torch.arange(1., 9.).reshape(2, 4)}
    >>> state = prune.init(params)
    >>> for _ in range(3):
    ...     out, state = prune.update(params, state)
    >>> out['w'], state.sparsity
    (tensor([[0., 0., 0., 0.],
            [5., 6., 7., 8.]]), 0.5)
    """
    names = list(targets.targets()) if isinstance(targets, Plan) else list(targets)

    def init(params: Params, *, step: int = 0) -> GradualState:
        del params
        return GradualState(masks={}, step=step, sparsity=0.0)

    def update(params: Params, state: GradualState, *, step: int | None = None,
               metrics: Metrics | None = None) -> tuple[Params, GradualState]:
        step = state.step if step is None else step
        sparsity = schedule(step)
        masks, current = state.masks, state.sparsity
        if sparsity > current or (not masks and sparsity > 0.0):
            scores = metric(params, targets) if metrics is None else metrics
            scores = {name: scores[name] for name in names}
            if distribution == "global":
                masks = allocate_global(scores, sparsity, max_sparsity=max_sparsity, prior=masks)
            elif distribution == "per_layer":
                masks = allocate_per_layer(scores, sparsity, prior=masks)
            else:
                raise ValueError(f"unknown distribution {distribution!r}; use 'per_layer' or 'global'")
            if bias:
                masks = bias_masks(masks, {k: tuple(v.shape) for k, v in params.items()})
            current = sparsity
        return apply_masks(params, masks), GradualState(masks=masks, step=step + 1, sparsity=current)

    return Transform(init, update)



def agp(final: float, targets: Plan | Iterable[str], *, begin: int = 0, end: int, every: int = 1,
        initial: float = 0.0, **kwargs: object) -> Transform:
    """:func:`gradual` on :func:`~purecompress.agp_schedule` (Zhu & Gupta).

    >>> import torch
    >>> prune = agp(0.8, ['w'], end=4)
    >>> params = {'w': torch.randn(10, 10)}
    >>> state = prune.init(params)
    >>> for _ in range(2):
    ...     out, state = prune.update(params, state)
    >>> round(state.sparsity, 4), int((out['w'] == 0).sum())
    (0.4625, 46)
    """
    schedule = functools.partial(agp_schedule, final=final, begin=begin, end=end, every=every, initial=initial)
    return gradual(schedule, targets, **kwargs)  # type: ignore[arg-type]



def lottery_ticket(final: float, targets: Plan | Iterable[str], *, rounds: int, **kwargs: object) -> Transform:
    """Iterative magnitude pruning for lottery tickets: update ``k`` (from 0) prunes round ``k+1``.

    Round ``i`` of ``rounds`` reaches ``1 - (1 - final)^(i/rounds)`` (NNI's formula). Between
    rounds, train, then :func:`rewind` the weights to their initial values.
    """
    def schedule(step: int) -> float:
        return lottery_schedule(step + 1, final, end=rounds)

    return gradual(schedule, targets, **kwargs)  # type: ignore[arg-type]



def rewind(initial: Mapping[str, Tensor], masks: Masks, params: Mapping[str, Tensor] | None = None) -> Params:
    """Lottery-ticket rewinding: the saved ``initial`` values under the current ``masks``.

    Args:
        initial: params saved before training (e.g. ``{k: v.clone() for k, v in params.items()}``).
        masks: the masks to keep (e.g. ``state.masks``).
        params: current params; entries missing from ``initial`` are taken from here.

    >>> import torch
    >>> from purecompress import Mask
    >>> rewind({'w': torch.ones(2)}, {'w': Mask(torch.tensor([True, False]), (2,))})['w']
    tensor([1., 0.])
    """
    merged = {**(params or {}), **initial}
    return apply_masks(merged, masks)
