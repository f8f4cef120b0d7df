"""ADMM pruning (Zhang et al. 2018) as an optax-shaped stateful transform.

ADMM alternates between training the weights ``W`` with the penalty
``rho/2 * ||W - Z + U||^2`` added to the loss (:func:`admm_penalty`), and an update that projects
``W + U`` onto the sparse set (``Z``) and moves the dual ``U``::

    tx = admm(names, 0.8, rho=1e-3)                       # fine-grained; block=Block.channel(): coarse
    state = tx.init(params)
    for iteration in range(iterations):
        params = train(params, extra_loss=lambda p: admm_penalty(p, state))   # your loop
        z, state = tx.update(params, state)
    masks = admm_masks(params, state)                      # final masks, from W (as NNI)
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from typing import Literal

import torch
from torch import Tensor

from purecompress._pytree import record, static
from purecompress.pruning._allocators import allocate_per_layer
from purecompress.pruning._metrics import l1_norm, level
from purecompress.pruning._records import Block, Masks, Metrics
from purecompress.selectors import Plan
from purecompress.transform import Transform

__all__ = [
    "AdmmState",
    "admm",
    "admm_masks",
    "admm_metric",
    "admm_penalty",
]



@record
class AdmmState:
    """What ADMM carries between iterations.

    Attributes:
        z: parameter name -> projected (sparse) copy of the weight.
        u: parameter name -> scaled dual variable.
        masks: the masks of the last projection.
        rho: parameter name -> penalty weight.
        sparsity: parameter name -> sparsity of the projection.
        block: granularity (element: fine-grained; channel: coarse-grained).
        iteration: projections done.
        metric: the projection's score ``(weights, names) -> Metrics``; None: :func:`admm_metric`.
    """

    z: dict[str, Tensor]
    u: dict[str, Tensor]
    masks: Masks
    rho: dict[str, float] = static()
    sparsity: dict[str, float] = static()
    block: Block = static()
    iteration: int = static(default=0)
    metric: Callable[[Mapping[str, Tensor], list[str]], Metrics] | None = static(default=None)



def admm_metric(weights: Mapping[str, Tensor], block: Block) -> Metrics:
    """L1 norm of each block (``|w|`` per element when fine-grained): NNI's ADMM metric."""
    if block == Block.element():
        return level(weights, list(weights))
    return l1_norm(weights, list(weights), block=block)



def _projection_metric(weights: Mapping[str, Tensor], state: AdmmState) -> Metrics:
    return admm_metric(weights, state.block) if state.metric is None else dict(state.metric(weights, list(weights)))


def admm_penalty(params: Mapping[str, Tensor], state: AdmmState, *,
                 form: Literal["squared", "nni"] = "squared") -> Tensor:
    """``sum rho/2 * ||W - Z + U||^2`` over the targets; differentiable in ``params``.

    ``form='nni'`` gives NNI 2.10's term ``rho/2 * sqrt(||W - Z + U||)`` (the compat layer uses it
    to train as NNI does; the paper's term is the squared norm), with a zero gradient where the
    distance is 0: NNI's gradient there is NaN, which turns every weight into NaN on the first step.
    """
    terms = []
    for name, z in state.z.items():
        diff = params[name] - z + state.u[name]
        squared = (diff * diff).sum()
        if form == "nni":
            # sqrt(||d||) = ||d||**2 ** 0.25; its gradient is 0 at d = 0 here, NaN in NNI (the first
            # training step of every ADMM run has W = Z, U = 0, and NNI's weights all become NaN).
            positive = squared > 0
            term = torch.where(positive, torch.where(positive, squared, 1.0) ** 0.25, 0.0)
        else:
            term = squared
        terms.append(state.rho[name] / 2 * term)
    return torch.stack(terms).sum() if terms else torch.zeros(())



def _per_name(value: float | Mapping[str, float], names: list[str], what: str) -> dict[str, float]:
    if isinstance(value, Mapping):
        missing = [n for n in names if n not in value]
        if missing:
            raise KeyError(f"no {what} given for {missing}")
        return {n: float(value[n]) for n in names}
    return dict.fromkeys(names, float(value))



def admm(targets: Plan | Iterable[str], sparsity: float | Mapping[str, float], *,
         rho: float | Mapping[str, float] = 1e-4, block: Block | None = None,
         metric: Callable[[Mapping[str, Tensor], list[str]], Metrics] | None = None) -> Transform:
    """ADMM pruning of the ``targets`` weights.

    Args:
        targets: a Plan (its modules' weights) or parameter names.
        sparsity: sparsity of the projection, one value or per name.
        rho: penalty weight, one value or per name (NNI's config key ``rho``, default 1e-4).
        block: ``None``/``Block.element()`` fine-grained, ``Block.channel()`` coarse-grained.
        metric: the projection's score instead of :func:`admm_metric` (NNI 1.x projects with its
            base algorithm: :func:`~purecompress.l2_norm` or :func:`~purecompress.fpgm` filters, say);
            ``block`` is then ignored.

    Returns:
        ``Transform(init, update)``: ``init(params) -> AdmmState`` (``Z = W``, ``U = 0``);
        ``update(params, state, *, step=None, grads=None) -> (Z, state)``: one projection with the
        trained ``params``: ``Z = prune(W + U)``, ``U = U + W - Z``.

    >>> import torch
    >>> tx = admm(['w'], 0.5)
    >>> p = {'w': torch.tensor([1., -3., 0.5, 2.])}
    >>> z, state = tx.update(p, tx.init(p))
    >>> z['w'].tolist(), state.u['w'].tolist()
    ([0.0, -3.0, 0.0, 2.0], [1.0, 0.0, 0.5, 0.0])
    """
    names = list(targets.targets()) if isinstance(targets, Plan) else list(targets)
    block = block or Block.element()
    sparsities = _per_name(sparsity, names, "sparsity")
    rhos = _per_name(rho, names, "rho")

    def init(params: Mapping[str, Tensor]) -> AdmmState:
        z = {n: params[n].detach().clone() for n in names}
        return AdmmState(z, {n: torch.zeros_like(v) for n, v in z.items()}, {}, rhos, sparsities, block, 0, metric)

    def update(params: Mapping[str, Tensor], state: AdmmState, *, step: int | None = None,
               grads: Mapping[str, Tensor] | None = None) -> tuple[dict[str, Tensor], AdmmState]:
        del step, grads
        w = {n: params[n].detach() for n in names}
        z = {n: w[n] + state.u[n] for n in names}
        masks = allocate_per_layer(_projection_metric(z, state), sparsities)
        z = {n: masks[n].apply(z[n]) for n in names}
        u = {n: state.u[n] + w[n] - z[n] for n in names}
        return z, AdmmState(z, u, masks, state.rho, state.sparsity, state.block, state.iteration + 1, state.metric)

    return Transform(init, update)



def admm_masks(params: Mapping[str, Tensor], state: AdmmState) -> Masks:
    """Final masks after the iterations: the metric of the trained weights ``W`` (NNI's choice)."""
    weights = {n: params[n].detach() for n in state.z}
    return allocate_per_layer(_projection_metric(weights, state), state.sparsity)
