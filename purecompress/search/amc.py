"""AMC (He et al. 2018): a DDPG agent picks one sparsity per layer under a FLOPs or params budget.

Each episode walks the prunable layers in order. For layer ``k`` the agent sees a 10-feature
embedding (index, type, input/output size, stride, kernel, params, reduced so far, rest, last
action; min-max normalised, NNI's features), proposes a sparsity, and the environment clamps it
so that the budget stays reachable (NNI's ``correct_action``): the layers after ``k`` can prune at
most their ``max_sparsity``, and no more than the budget is pruned. Costs are measured after
every layer through ``measure`` (so channel rounding is seen), and actions are rounded *up* to
whole channels, so the final allocation meets the budget. The episode's reward is
``evaluate(allocation) - 1`` (NNI), given to every step; the policy trains after ``warmup``.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable, Generator, Mapping, Sequence
from typing import Literal

import attrs
import torch
from torch import Tensor, nn

from purecompress.search.counting import Counts, count_flops_params
from purecompress.search.ddpg import DDPG, DDPGConfig

__all__ = ["AmcLayer", "AmcResult", "amc_episodes", "amc_layers", "amc_search", "correct_action", "layer_embeddings"]


@attrs.frozen
class AmcLayer:
    """A prunable layer as the agent sees it.

    Attributes:
        name: module name; index: position among the model's modules; type_name: class name.
        input_size / output_size: per-sample element counts; stride, kernel: geometric means.
        params: weight count; cost: its FLOPs or params (the budgeted quantity), unpruned.
        channels: output channels (actions are rounded up to whole channels).
        max_sparsity: the most this layer may be pruned.
    """

    name: str
    index: int
    type_name: str
    input_size: int
    output_size: int
    stride: float
    kernel: float
    params: int
    cost: float
    channels: int
    max_sparsity: float = 1.0


@attrs.frozen
class AmcResult:
    """Attributes: sparsities (best episode, by layer), score, history (allocation, score)."""

    sparsities: Mapping[str, float]
    score: float
    history: tuple[tuple[Mapping[str, float], float], ...]


def amc_layers(model: nn.Module, example_input: object, names: Sequence[str], *,
               target: Literal["flops", "params"] = "flops",
               max_sparsity: float | Mapping[str, float] = 1.0) -> tuple[list[AmcLayer], Counts]:
    """The :class:`AmcLayer` of each module in ``names`` (model order), and the model's counts.

    >>> m = nn.Sequential(nn.Conv2d(3, 8, 3), nn.ReLU(), nn.Conv2d(8, 4, 3))
    >>> layers, counts = amc_layers(m, torch.randn(1, 3, 8, 8), ['0', '2'])
    >>> [(la.name, la.channels, la.cost) for la in layers]
    [('0', 8, 7776.0), ('2', 4, 4608.0)]
    """
    if target not in ("flops", "params"):
        raise ValueError(f"target must be 'flops' or 'params', got {target!r}")
    counts = count_flops_params(model, example_input)
    order = [n for n, _ in model.named_modules()]
    missing = [n for n in names if n not in counts.layers]
    if missing:
        raise ValueError(f"AMC can only prune counted Conv/Linear modules; not counted: {missing}")
    layers = []
    for name in sorted(names, key=order.index):
        c = counts.layers[name]
        cap = max_sparsity.get(name, 1.0) if isinstance(max_sparsity, Mapping) else max_sparsity
        layers.append(AmcLayer(name, order.index(name), c.type_name, math.prod(c.input_shape),
                               math.prod(c.output_shape), c.stride, c.kernel, c.params,
                               float(c.flops if target == "flops" else c.params), c.output_shape[0], float(cap)))
    return layers, counts


def layer_embeddings(layers: Sequence[AmcLayer]) -> Tensor:
    """``[n_layers, 10]`` features, each column min-max normalised (constant columns kept)."""
    types = sorted({layer.type_name for layer in layers})
    rows = [[layer.index, types.index(layer.type_name), layer.input_size, layer.output_size, layer.stride,
             layer.kernel, layer.params, 0.0, 1.0, 0.0] for layer in layers]
    emb = torch.tensor(rows, dtype=torch.float64)
    low, high = emb.min(0).values, emb.max(0).values
    span = high - low
    return torch.where(span > 0, (emb - low) / torch.where(span > 0, span, 1), emb).float()


def correct_action(action: float, k: int, layers: Sequence[AmcLayer], current: Mapping[str, float],
                   total_sparsity: float) -> float:
    """Clamp layer ``k``'s action so the budget stays reachable and is not overshot (NNI's rule).

    Args:
        action: the proposed sparsity of layer ``k``.
        k: its position in ``layers``.
        layers: every prunable layer, in order.
        current: layer name -> its cost now (earlier layers already pruned).
        total_sparsity: fraction of the layers' total unpruned cost to remove.
    """
    origin = sum(layer.cost for layer in layers)
    expected = total_sparsity * origin
    pruned_before = origin - sum(current[layer.name] for layer in layers)
    rest_max = sum(current[layer.name] * layer.max_sparsity for layer in layers[k + 1:])
    layer = layers[k]
    now = current[layer.name]
    if now <= 0:
        return 0.0
    low = (expected - pruned_before - rest_max) / now
    high = min(layer.cost * layer.max_sparsity - (layer.cost - now), expected - pruned_before) / now
    if low > layer.max_sparsity:
        warnings.warn(f"[{layer.name}] the budget needs sparsity {low:.3f} > max {layer.max_sparsity}",
                      RuntimeWarning, stacklevel=2)
    return max(0.0, min(high, max(low, action)))


def _whole_channels(action: float, channels: int) -> float:
    """Round a sparsity up to whole channels: ``int(result * channels)`` is ``ceil(action * channels)``."""
    pruned = min(channels, math.ceil(action * channels - 1e-9))
    return min(1.0, (pruned + 1e-6) / channels) if pruned else 0.0


def amc_episodes(
    layers: Sequence[AmcLayer],
    measure: Callable[[dict[str, float]], Mapping[str, float]],
    *,
    total_sparsity: float,
    episodes: int,
    ddpg: DDPGConfig | None = None,
    seed: int = 0,
) -> Generator[dict[str, float], float, None]:
    """Ask/tell AMC: yields one allocation per episode and takes its score by ``send``.

    >>> layers = [AmcLayer('a', 0, 'Linear', 4, 8, 1., 1., 32, 32., 8, 0.9)]
    >>> measure = lambda alloc: {'a': 32. * (1 - int(alloc.get('a', 0) * 8) / 8)}
    >>> search = amc_episodes(layers, measure, total_sparsity=0.5, episodes=2)
    >>> alloc = next(search)
    >>> round(alloc['a'], 3), round(search.send(0.9)['a'], 3)
    (0.5, 0.5)
    """
    config = ddpg or DDPGConfig(warmup=episodes // 4)
    agent = DDPG(10, config, seed=seed)
    base = layer_embeddings(layers)
    origin = sum(la.cost for la in layers)
    for episode in range(episodes):
        emb = base.clone()
        observation = emb[0].clone()
        allocation: dict[str, float] = {}
        steps = []
        for k, layer in enumerate(layers):
            raw = agent.random_action() if episode <= config.warmup else agent.select_action(observation, episode)
            action = correct_action(raw, k, layers, measure(allocation), total_sparsity)
            allocation[layer.name] = _whole_channels(action, layer.channels)
            after = measure(allocation)
            emb[k, -3] = (origin - sum(after[la.name] for la in layers)) / origin
            emb[k, -2] = sum(after[la.name] for la in layers[k + 1:]) / origin
            emb[k, -1] = 1 - after[layer.name] / layer.cost if layer.cost else 0.0
            following = emb[k].clone()
            steps.append((observation, allocation[layer.name], following, k == len(layers) - 1))
            observation = following
        score = float((yield dict(allocation)))
        for state, action, following, done in steps:
            agent.observe(score - 1, state, action, following, done)
            if episode > config.warmup:
                agent.update_policy()


def amc_search(
    layers: Sequence[AmcLayer],
    evaluate: Callable[[dict[str, float]], float],
    measure: Callable[[dict[str, float]], Mapping[str, float]],
    *,
    total_sparsity: float,
    episodes: int,
    ddpg: DDPGConfig | None = None,
    seed: int = 0,
) -> AmcResult:
    """Search per-layer sparsities removing ``total_sparsity`` of the layers' cost.

    Args:
        layers: prunable layers in forward order (see :func:`amc_layers`).
        evaluate: allocation (layer -> sparsity) -> score, higher is better (e.g. accuracy).
        measure: allocation of the layers decided so far -> cost of *every* layer now.
        total_sparsity: fraction of ``sum(layer.cost)`` to remove.
        episodes: number of episodes; the first ``ddpg.warmup`` act at random.
        ddpg: agent options (NNI's ``ddpg_params``); default warmup is ``episodes // 4``.
        seed: seeds the agent's networks and exploration.
    """
    if episodes < 1:
        raise ValueError("amc_search needs episodes >= 1")
    search = amc_episodes(layers, measure, total_sparsity=total_sparsity, episodes=episodes, ddpg=ddpg, seed=seed)
    history: list[tuple[Mapping[str, float], float]] = []
    allocation = next(search)
    while True:
        score = float(evaluate(dict(allocation)))
        history.append((allocation, score))
        try:
            allocation = search.send(score)
        except StopIteration:
            break
    best = max(history, key=lambda h: h[1])
    return AmcResult(best[0], best[1], tuple(history))
