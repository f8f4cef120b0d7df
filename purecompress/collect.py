"""Data collection as functions: activation and gradient statistics over batches the caller gives.

Nothing here trains: the functions run the model with :func:`torch.func.functional_call` on the
params they are given and return new records. Forward hooks exist only inside
:func:`collect_activations` and are removed before it returns; buffers are cloned so that a model
in train mode does not update its BatchNorm statistics.

Counting: ``samples`` is what NNI calls the batch number of an output: the product of the dims
before the channel dim (``N`` for ``[N, C, H, W]``, ``N*T`` for a Linear on ``[N, T, C]``).
``max_batches`` counts batches exactly; NNI's habit of comparing *samples* with
``training_steps`` lives in ``purecompress.compat`` only.

Distributed: with ``sync='auto'`` (the default) the collectors sum their statistics over the
ranks when ``torch.distributed`` is initialised (:func:`purecompress.distributed.all_reduce_stats`),
so every rank returns what one process would collect on the union of the ranks' batches.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from typing import Any

import torch
from torch import Tensor, nn
from torch.func import functional_call, grad, vmap

from purecompress._pytree import record, static
from purecompress.distributed import Sync, all_reduce_stats, resolve_sync
from purecompress.selection import Plan

__all__ = [
    "ActivationStats",
    "TaylorStats",
    "activation_fn",
    "batch_activation_stats",
    "channel_dim_of",
    "collect_activations",
    "collect_taylor",
    "taylor_accumulate",
    "taylor_term",
]

Activation = str | Callable[[Tensor], Tensor]
_ACTIVATIONS: dict[str, Callable[[Tensor], Tensor]] = {
    "relu": torch.nn.functional.relu,
    "gelu": torch.nn.functional.gelu,
    "relu6": torch.nn.functional.relu6,
}


@record
class ActivationStats:
    """Per-channel statistics of ``activation(output)`` of one layer.

    Attributes:
        zeros: ``[C]`` float64, how many entries were exactly 0 (APoZ).
        total: ``[C]`` float64, sum of the entries (mean rank).
        samples: number of outputs counted (product of the dims before the channel dim).
        positions: entries per channel per sample (``H*W`` for Conv2d, 1 for Linear).
        batches: number of forward calls counted.
    """

    zeros: Tensor
    total: Tensor
    samples: int = static()
    positions: int = static()
    batches: int = static()

    def __add__(self, other: ActivationStats) -> ActivationStats:
        if self.positions != other.positions or self.zeros.shape != other.zeros.shape:
            raise ValueError("cannot add activation statistics of differently shaped outputs")
        return ActivationStats(self.zeros + other.zeros, self.total + other.total,
                               self.samples + other.samples, self.positions, self.batches + other.batches)

    def zero_fraction(self) -> Tensor:
        """``[C]``: fraction of entries that were zero (the APoZ of each channel)."""
        return self.zeros / max(self.samples * self.positions, 1)

    def mean(self) -> Tensor:
        """``[C]``: mean activation of each channel."""
        return self.total / max(self.samples * self.positions, 1)


@record
class TaylorStats:
    """First-order Taylor statistics of one parameter.

    Attributes:
        score: the parameter's shape: sum over steps of ``(w * grad)**2``.
        steps: number of gradients accumulated.
    """

    score: Tensor
    steps: int = static()


def activation_fn(activation: Activation) -> Callable[[Tensor], Tensor]:
    """``'relu'``, ``'gelu'``, ``'relu6'`` (NNI's choices) or any callable."""
    if callable(activation):
        return activation
    if activation not in _ACTIVATIONS:
        raise ValueError(f"unsupported activation {activation!r}; use one of {sorted(_ACTIVATIONS)} or a callable")
    return _ACTIVATIONS[activation]


def channel_dim_of(module: nn.Module) -> int:
    """The (negative) channel dim of a layer's output: -1 for Linear, ``-(d+1)`` for ConvNd.

    >>> channel_dim_of(nn.Conv2d(1, 2, 3)), channel_dim_of(nn.Linear(2, 3))
    (-3, -1)
    """
    if isinstance(module, (nn.Linear, nn.Bilinear)):
        return -1
    for dims, types in ((1, (nn.Conv1d, nn.ConvTranspose1d)), (2, (nn.Conv2d, nn.ConvTranspose2d)),
                        (3, (nn.Conv3d, nn.ConvTranspose3d))):
        if isinstance(module, types):
            return -(dims + 1)
    raise TypeError(f"activation statistics support Conv1d/2d/3d, ConvTranspose and Linear layers, "
                    f"not {type(module).__name__}")


def batch_activation_stats(output: Tensor, channel_dim: int, activation: Activation = "relu") -> ActivationStats:
    """Statistics of one output tensor (one forward call).

    Args:
        output: the layer's output, e.g. ``[N, C, H, W]`` (channel dim ``-3``) or ``[N, C]`` (``-1``).
        channel_dim: negative index of the channel dim (:func:`channel_dim_of`).
        activation: applied to ``output`` before counting.

    >>> s = batch_activation_stats(torch.tensor([[1., -2.], [0., 3.]]), -1)
    >>> s.zeros.tolist(), s.total.tolist(), s.samples
    ([1.0, 1.0], [1.0, 3.0], 2)
    """
    act = activation_fn(activation)(output.detach())
    cdim = act.dim() + channel_dim
    dims = [d for d in range(act.dim()) if d != cdim]
    samples, positions = 1, 1
    for d, n in enumerate(act.shape):
        if d < cdim:
            samples *= int(n)
        elif d > cdim:
            positions *= int(n)
    if not dims:
        return ActivationStats((act == 0).double(), act.double(), samples, positions, 1)
    # Reduce in place of a channel-first copy; counts are exact integers, sums accumulate in the
    # activation's dtype (as NNI's float32 buffers do) and are stored as float64.
    return ActivationStats((act == 0).sum(dims).double(), act.sum(dims).double(), samples, positions, 1)


def _module_names(targets: Plan | Iterable[str]) -> list[str]:
    return list(targets.modules) if isinstance(targets, Plan) else list(targets)


def _default_inputs(batch: Any) -> tuple[Any, ...]:
    return (batch[0],) if isinstance(batch, (tuple, list)) else (batch,)


def _call_params(model: nn.Module, params: Mapping[str, Tensor]) -> dict[str, Tensor]:
    buffers = {name for name, _ in model.named_buffers()}
    return {k: v.clone() if k in buffers else v for k, v in params.items()}


def collect_activations(
    model: nn.Module,
    params: Mapping[str, Tensor],
    batches: Iterable[Any],
    targets: Plan | Iterable[str],
    *,
    activation: Activation = "relu",
    max_batches: int | None = None,
    inputs: Callable[[Any], tuple[Any, ...]] = _default_inputs,
    sync: Sync = "auto",
) -> dict[str, ActivationStats]:
    """Activation statistics of the target layers' outputs over ``batches``.

    Args:
        model: the architecture; not modified (hooks are removed before returning).
        params: parameters and buffers for ``functional_call`` (e.g. ``params_of(model)``).
        batches: any iterable; each batch is an input tensor or ``(input, target, ...)``.
        targets: a Plan or module names (Conv*/Linear layers).
        activation: applied to each output before counting (NNI's ``activation``).
        max_batches: stop after this many batches (all when None).
        inputs: maps a batch to the model's positional inputs.
        sync: sum the statistics over the ranks of ``torch.distributed``: ``'auto'`` when a
            process group is initialised, True, False (rank-local), or a ``ProcessGroup``. Every
            rank must then call this, and see at least one batch.

    Returns:
        ``{module name: ActivationStats}``, the same on every rank when synced.
    """
    reduce, group = resolve_sync(sync)
    names = _module_names(targets)
    dims = {name: channel_dim_of(model.get_submodule(name)) for name in names}
    stats: dict[str, ActivationStats] = {}

    def hook_for(name: str) -> Callable[[nn.Module, Any, Tensor], None]:
        def hook(module: nn.Module, args: Any, output: Tensor) -> None:
            del module, args
            new = batch_activation_stats(output, dims[name], activation)
            stats[name] = stats[name] + new if name in stats else new
        return hook

    handles = [model.get_submodule(n).register_forward_hook(hook_for(n)) for n in names]
    try:
        with torch.no_grad():
            for i, batch in enumerate(batches):
                if max_batches is not None and i >= max_batches:
                    break
                functional_call(model, _call_params(model, params), inputs(batch))
    finally:
        for handle in handles:
            handle.remove()
    return all_reduce_stats(stats, group=group) if reduce else stats


def taylor_term(weight: Tensor, gradient: Tensor) -> Tensor:
    """``(w * g)**2``: one step's first-order Taylor importance of each weight."""
    return (weight.detach() * gradient.detach()).pow(2)


def taylor_accumulate(stats: Mapping[str, TaylorStats], params: Mapping[str, Tensor],
                      grads: Mapping[str, Tensor]) -> dict[str, TaylorStats]:
    """Add one step's ``(w * g)**2`` to ``stats`` (a new dict; names missing from ``stats`` start at 0).

    Call it inside a training loop with the gradients of each step. Under DDP, sum the result over
    the ranks with :func:`purecompress.distributed.all_reduce_stats` before computing metrics.

    >>> w, g = {'w': torch.tensor([1., 2.])}, {'w': torch.tensor([3., 1.])}
    >>> taylor_accumulate({}, w, g)['w'].score
    tensor([9., 4.])
    """
    out = dict(stats)
    for name, g in grads.items():
        term = taylor_term(params[name], g)
        old = stats.get(name)
        out[name] = TaylorStats(term, 1) if old is None else TaylorStats(old.score + term, old.steps + 1)
    return out


def _batch_grad(loss_of: Callable[..., Tensor], weights: dict[str, Tensor], x: Any, y: Any) -> dict[str, Tensor]:
    """``torch.func.grad(loss_of)(weights, x, y)``; in eager mode through ``torch.autograd.grad`` on
    detached leaves instead: the same values without the transform's per-op overhead (~20% of a
    forward+backward on a small CNN)."""
    if torch.compiler.is_compiling() or torch._C._are_functorch_transforms_active():
        return grad(loss_of)(weights, x, y)
    leaves = {k: v.detach().requires_grad_() for k, v in weights.items()}
    with torch.enable_grad():
        loss = loss_of(leaves, x, y)
    if not loss.requires_grad:  # the loss does not reach the weights at all
        return {k: torch.zeros_like(v) for k, v in weights.items()}
    grads = torch.autograd.grad(loss, list(leaves.values()), allow_unused=True, materialize_grads=True)
    return dict(zip(leaves, grads, strict=True))


def collect_taylor(
    model: nn.Module,
    params: Mapping[str, Tensor],
    batches: Iterable[Any],
    loss_fn: Callable[[Any, Any], Tensor],
    targets: Plan | Iterable[str],
    *,
    max_batches: int | None = None,
    per_sample: bool = False,
    sync: Sync = "auto",
) -> dict[str, TaylorStats]:
    """Sum over batches of ``(w * grad)**2`` for each target weight, at fixed ``params``.

    Args:
        model: the architecture (not modified).
        params: parameters and buffers.
        batches: ``(input, target)`` pairs.
        loss_fn: ``loss_fn(output, target) -> scalar`` (e.g. ``F.cross_entropy``).
        targets: a Plan (its modules' weights) or parameter names.
        max_batches: stop after this many batches.
        per_sample: sum ``(w * g_i)**2`` over the samples of each batch, with ``g_i`` each
            sample's gradient (``vmap`` over the batch) instead of the batch gradient.
        sync: sum over the ranks of ``torch.distributed`` (as in :func:`collect_activations`).

    Returns:
        ``{parameter name: TaylorStats}``; ``steps`` counts batches (or samples with ``per_sample``),
        over all ranks when synced.
    """
    reduce, group = resolve_sync(sync)
    names = list(targets.targets()) if isinstance(targets, Plan) else list(targets)
    weights = {n: params[n].detach() for n in names}

    def loss_of(w: dict[str, Tensor], x: Any, y: Any) -> Tensor:
        # Buffers are cloned inside the transformed function: a train-mode BatchNorm may update them.
        return loss_fn(functional_call(model, {**_call_params(model, params), **w}, (x,)), y)

    def one(w: dict[str, Tensor], x: Any, y: Any) -> dict[str, Tensor]:
        return grad(loss_of)(w, x.unsqueeze(0), y.unsqueeze(0))

    stats: dict[str, TaylorStats] = {}
    for i, (x, y, *_) in enumerate(batches):
        if max_batches is not None and i >= max_batches:
            break
        if not per_sample:
            stats = taylor_accumulate(stats, weights, _batch_grad(loss_of, weights, x, y))
            continue
        per = vmap(one, in_dims=(None, 0, 0))(weights, x, y)
        for name, g in per.items():
            term = (weights[name] * g).pow(2).sum(0)
            old = stats.get(name)
            stats[name] = TaylorStats(term, g.shape[0]) if old is None else \
                TaylorStats(old.score + term, old.steps + g.shape[0])
    if not reduce:
        return stats
    # A rank that saw no batch still takes part, with zeros.
    return all_reduce_stats({n: stats.get(n, TaylorStats(torch.zeros_like(weights[n]), 0)) for n in names},
                            group=group)
