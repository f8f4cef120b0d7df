"""Movement pruning (Sanh et al. 2020) as an optax-shaped stateful transform.

Each target weight has a score tensor. The forward uses ``W * mask(S)`` where the mask's
gradient passes straight through to the scores, so ``dL/dS = dL/dW_eff * W``: weights moving
toward zero lose score. Scores are trained with Adam (lr 1e-2, NNI's choice); after each step the
sparsity follows the cubic schedule and the masks are recomputed from the scores: ``'hard'``
keeps the top scores of each layer, ``'soft'`` keeps ``sigmoid(S) > sparsity`` (the configured
sparsity acts as a threshold) and a regularizer pushes scores down.

Use inside any training loop::

    tx = movement(names, 0.8, warm_up=0, cool_down=100)
    state = tx.init(params)
    for x, y in data:
        masked = apply_masks(params, state.masks)
        g = torch.func.grad(loss)(masked, x, y)        # gradient w.r.t. the masked weights
        params = my_optimizer(params, {k: v * ... })   # your weight update
        _, state = tx.update(params, state, grads=g)
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Literal

import torch
from torch import Tensor

from purecompress._pytree import record, static
from purecompress.pruning._allocators import allocate_per_layer, allocate_threshold
from purecompress.pruning._params import apply_masks
from purecompress.pruning._records import Block, Mask, Masks, Metric, Metrics, expand_blocks
from purecompress.selectors import Plan
from purecompress.transform import Transform

__all__ = [
    "MovementState",
    "apply_movement",
    "cubic_sparsity",
    "movement",
    "movement_masks",
    "movement_regularizer",
    "movement_scores",
    "straight_through",
]



@record
class MovementState:
    """What movement pruning carries between steps.

    Attributes:
        scores: parameter name -> score tensor (the weight's shape).
        masks: parameter name -> current mask.
        mu: Adam first moments of the scores.
        nu: Adam second moments of the scores.
        step: the schedule's step (optimizer steps done, unless the caller says otherwise).
        updates: Adam updates done (for bias correction).
        shapes: ``(name, weight shape)`` pairs of the targets whose scores are at block
            granularity (one score per block: NNI's ``Scaling``); the others' scores have the
            weight's shape.
    """

    scores: dict[str, Tensor]
    masks: dict[str, Mask]
    mu: dict[str, Tensor]
    nu: dict[str, Tensor]
    step: int = static(default=0)
    updates: int = static(default=0)
    shapes: tuple[tuple[str, tuple[int, ...]], ...] = static(default=(), converter=tuple)



def cubic_sparsity(step: int, final: float, *, warm_up: int, cool_down: int) -> float:
    """``final * (1 - (1 - (step - warm_up) / (cool_down - warm_up))**3)``, 0 before ``warm_up``,
    ``final`` after ``cool_down`` (NNI's movement schedule).

    >>> [round(cubic_sparsity(s, 0.8, warm_up=0, cool_down=4), 4) for s in range(6)]
    [0.0, 0.4625, 0.7, 0.7875, 0.8, 0.8]
    """
    if warm_up >= cool_down:
        raise ValueError(f"warm_up ({warm_up}) must be smaller than cool_down ({cool_down})")
    if step < warm_up:
        return 0.0
    if step > cool_down:
        return final
    return final * (1 - (1 - (step - warm_up) / (cool_down - warm_up)) ** 3)



def straight_through(score: Tensor, mask: Tensor) -> Tensor:
    """``mask`` in the forward, identity gradient to ``score`` in the backward (torch.func safe).

    >>> s = torch.tensor([0.3, -1.], requires_grad=True)
    >>> out = straight_through(s, torch.tensor([1., 0.]))
    >>> out.tolist(), torch.autograd.grad(out.sum(), s)[0].tolist()
    ([1.0, 0.0], [1.0, 1.0])
    """
    return mask.to(score.dtype) + (score - score.detach())



def movement_masks(scores: Mapping[str, Tensor], sparsity: float | Mapping[str, float], *,
                   mode: Literal["hard", "soft"] = "hard",
                   shapes: Mapping[str, tuple[int, ...]] | None = None) -> Masks:
    """Masks from scores: top ``1 - sparsity`` per layer (hard) or ``sigmoid(S) > sparsity`` (soft).

    ``shapes`` gives the weight shape of a score at block granularity (its masks keep whole blocks;
    the sparsity counts blocks); a score not in it has the weight's shape.

    >>> movement_masks({'w': torch.tensor([[0.5, -1., 2., 0.]])}, 0.5)['w'].keep
    tensor([[ True, False,  True, False]])
    >>> movement_masks({'w': torch.tensor([[0.5], [-1.]])}, 0.5, shapes={'w': (2, 3)})['w'].to_dense()
    tensor([[1., 1., 1.],
            [0., 0., 0.]])
    """
    shapes = shapes or {}
    metrics = {name: Metric(s.detach(), tuple(shapes.get(name, s.shape))) for name, s in scores.items()}
    if mode == "hard":
        return allocate_per_layer(metrics, sparsity)
    if mode == "soft":
        return allocate_threshold(metrics, sparsity, squash="sigmoid")
    raise ValueError(f"movement mode must be 'hard' or 'soft', got {mode!r}")



def movement_regularizer(scores: Mapping[str, Tensor], scale: float) -> Tensor:
    """``scale * mean over layers of mean(sigmoid(S))``: NNI's soft-mode loss term (before the
    cubic factor it multiplies by)."""
    if not scores:
        return torch.zeros(())
    return scale * torch.stack([torch.sigmoid(s).sum() / s.numel() for s in scores.values()]).mean()



def movement_scores(state: MovementState) -> Metrics:
    """The scores as metrics (NNI's StraightMetricsCalculator): element granularity, or one per
    block where the transform was given blocks."""
    shapes = dict(state.shapes)
    return {name: Metric(s.detach(), tuple(shapes.get(name, s.shape))) for name, s in state.scores.items()}



def movement(
    targets: Plan | Iterable[str],
    sparsity: float | Mapping[str, float],
    *,
    warm_up: int,
    cool_down: int,
    mode: Literal["hard", "soft"] = "hard",
    regular_scale: float | None = None,
    lr: float = 1e-2,
    betas: tuple[float, float] = (0.9, 0.999),
    eps: float = 1e-8,
    block: Block | Mapping[str, Block] | None = None,
) -> Transform:
    """Movement pruning of the ``targets`` weights.

    Args:
        targets: a Plan (its modules' weights) or parameter names (``'fc1.weight'``).
        sparsity: final sparsity (hard) or threshold (soft), one value or per name.
        warm_up: steps before pruning starts (NNI ``warm_up_step``).
        cool_down: step at which sparsity stops growing (NNI ``cool_down_beginning_step``).
        mode: ``'hard'`` (exact top-k per layer) or ``'soft'`` (threshold on ``sigmoid(S)``).
        lr: learning rate of the Adam update of the scores.
        betas: Adam's moment coefficients for the scores.
        eps: Adam's epsilon for the scores.
        regular_scale: weight of :func:`movement_regularizer` (times the cubic factor) in the
            scores' gradient; None adds nothing.
        lr, betas, eps: Adam on the scores.
        block: one score per block instead of per element (NNI's ``Scaling``, as its
            ``sparse_granularity='auto'`` uses for attention weights; ``Block((head_dim, -1))``
            gives a query weight one score per head): one for every target, or per name (a name
            missing is element-wise). A block's score moves by the sum of ``-grad * w`` over its entries,
            and the masks keep whole blocks.

    Returns:
        ``Transform(init, update)``: ``init(params) -> MovementState``;
        ``update(params, state, *, step=None, grads) -> (masked params, state)`` where ``grads``
        are the loss gradients w.r.t. the masked weights (the tensors the forward used) and
        ``step`` (default ``state.step + 1``) is the number of optimizer steps done.
    """
    names = list(targets.targets()) if isinstance(targets, Plan) else list(targets)
    if mode not in ("hard", "soft"):
        raise ValueError(f"movement mode must be 'hard' or 'soft', got {mode!r}")
    final = sparsity
    cubic_sparsity(0, 0.0, warm_up=warm_up, cool_down=cool_down)  # validates the schedule

    def at(step: int) -> float | dict[str, float]:
        if isinstance(final, Mapping):
            return {n: cubic_sparsity(step, float(final[n]), warm_up=warm_up, cool_down=cool_down) for n in names}
        return cubic_sparsity(step, float(final), warm_up=warm_up, cool_down=cool_down)

    def block_of(name: str) -> Block | None:
        return block.get(name) if isinstance(block, Mapping) else block

    def init(params: Mapping[str, Tensor]) -> MovementState:
        zeros, shapes = {}, []
        for n in names:
            blk = block_of(n)
            if blk is None:
                zeros[n] = torch.zeros_like(params[n], dtype=torch.float32)
            else:
                shape = tuple(params[n].shape)
                zeros[n] = torch.zeros(blk.grid(shape), dtype=torch.float32, device=params[n].device)
                shapes.append((n, shape))
        return MovementState(zeros, {}, dict(zeros), dict(zeros), 0, 0, tuple(shapes))

    def update(params: Mapping[str, Tensor], state: MovementState, *, step: int | None = None,
               grads: Mapping[str, Tensor] | None = None) -> tuple[dict[str, Tensor], MovementState]:
        if grads is None:
            raise ValueError("movement update needs grads (loss gradients w.r.t. the masked weights)")
        step = state.step + 1 if step is None else step
        factor = cubic_sparsity(state.step, 1.0, warm_up=warm_up, cool_down=cool_down)
        t = state.updates + 1
        scores, mu, nu = {}, {}, {}
        for n in names:
            s = state.scores[n]
            g = (grads[n].detach() * params[n].detach()).to(s.dtype)
            blk = block_of(n)
            if blk is not None:  # a block's score moves with the sum over its entries
                g = blk.reduce(g, lambda b: b.sum(-1))
            if regular_scale is not None:
                sig = torch.sigmoid(s)
                g = g + regular_scale * factor / len(names) * sig * (1 - sig) / s.numel()
            mu[n] = betas[0] * state.mu[n] + (1 - betas[0]) * g
            nu[n] = betas[1] * state.nu[n] + (1 - betas[1]) * g * g
            denom = (nu[n] / (1 - betas[1] ** t)).sqrt() + eps
            scores[n] = s - lr / (1 - betas[0] ** t) * mu[n] / denom
        shapes = dict(state.shapes)
        masks = movement_masks(scores, at(step), mode=mode, shapes=shapes) if step > warm_up else dict(state.masks)
        new = MovementState(scores, masks, mu, nu, step, t, state.shapes)
        return apply_masks(params, masks), new

    return Transform(init, update)



def apply_movement(params: Mapping[str, Tensor], state: MovementState) -> dict[str, Tensor]:
    """Params with ``W * straight_through(S, mask)``: differentiate w.r.t. ``state.scores`` directly."""
    out = dict(params)
    for name, mask in state.masks.items():
        score = expand_blocks(state.scores[name], mask.shape)  # a block score reaches all its entries
        out[name] = params[name] * straight_through(score, mask.to_dense(score.dtype))
    return out
