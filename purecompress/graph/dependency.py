"""Which layers' output channels must be pruned together, read from a captured graph.

Two analyses, both NNI 2.10's (``nni.compression.pytorch.utils.shape_dependency``) on a
``torch.fx`` graph instead of a ``torch.jit`` trace:

- :func:`channel_dependency`: layers whose outputs meet at an element-wise op (add, sub, mul, div,
  ... in any spelling: ``+``, ``+=``, ``torch.add``, ``Tensor.add_``) or at a ``cat``/``stack`` off
  the channel dim must share one channel mask. Each op's channels are traced back to the nearest
  producer layers (:data:`PRODUCER_TYPES`) through the ops of ``_KINDS``: element-wise and
  channel-wise ops pass channels on, views and reductions pass them when the channel dim (dim 1)
  keeps its size (NNI's rule for reshapes), ops that mix channels (``matmul``, ``F.linear``) stop.
- :func:`group_dependency`: grouped convs (and GroupNorm) require the producers feeding them to
  keep a channel count divisible by their number of groups; depthwise convs add nothing.

Differences from NNI, each on the safe or more exact side: all conv dims count (NNI: 2d only);
an operand broadcast along channels (a ``[N, 1, H, W]`` spatial attention map) adds no
dependency; ops that mix or drop the channel dim stop the search (NNI walks through every op but
reshapes); cat dims are normalised (``dim=-3`` on 4-d tensors is the channel dim); the search for
the producers of a grouped conv stops at Linear layers too. The op table and the rules for how
channels flow through each op live in :mod:`~purecompress.graph.channel_flow`.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import Any

import torch.fx as fx
from torch import nn

from .capture import PRODUCER_TYPES, capture, is_captured
from .channel_flow import _FLOW, _JOINS, _kind
from .channel_flow import Kind as Kind
from .channel_flow import log as log

__all__ = ["channel_dependency", "group_dependency"]


def _graph(model: nn.Module, example_inputs: Any, leaf_modules: Iterable[Any]) -> fx.GraphModule:
    if example_inputs is not None:
        return capture(model, example_inputs, leaf_modules=leaf_modules)
    if is_captured(model):
        return model  # type: ignore[return-value]
    raise TypeError("example_inputs is required unless model is a graph returned by capture()")


def _producer(node: fx.Node, modules: dict[str, nn.Module]) -> str | None:
    if node.op == "call_module" and isinstance(modules[node.target], PRODUCER_TYPES):
        return str(node.target)
    return None


def _find(parent: dict[str, str], x: str) -> str:
    while parent[x] != x:
        parent[x] = parent[parent[x]]
        x = parent[x]
    return x


def channel_dependency(
    model: nn.Module,
    example_inputs: Any = None,
    *,
    leaf_modules: Iterable[str | type[nn.Module]] = (),
) -> list[tuple[str, ...]]:
    """Sets of layers whose output channels must share one mask (NNI's ``ChannelDependency``).

    Args:
        model: the model (not modified), or a graph returned by :func:`capture`.
        example_inputs: inputs for :func:`capture` (a tensor such as ``[1, 3, H, W]``, a tuple
            or a dict); omit it when ``model`` is already a captured graph.
        leaf_modules: passed to :func:`capture`.

    Returns:
        A partition of the producer layers (Conv*, ConvTranspose*, Linear) called in the graph,
        by module name: a layer with no dependency is a 1-tuple, as in NNI's
        ``dependency_sets``. Sets are ordered by the graph position of their first member,
        members by graph position.

    >>> import torch
    >>> class Residual(nn.Module):
    ...     def __init__(self) -> None:
    ...         super().__init__()
    ...         self.a, self.b = nn.Conv2d(3, 4, 1), nn.Conv2d(4, 4, 1)
    ...     def forward(self, x):
    ...         y = self.a(x)
    ...         return y + self.b(y).relu()
    >>> channel_dependency(Residual(), torch.zeros(1, 3, 4, 4))
    [('a', 'b')]
    """
    gm = _graph(model, example_inputs, leaf_modules)
    modules = dict(gm.named_modules())
    parent: dict[str, str] = {}  # union-find over producer names; roots are earliest members
    rank: dict[str, int] = {}  # graph position of each producer's first call
    sources: dict[fx.Node, frozenset[str]] = {}  # nearest producers whose channels reach a node
    for node in gm.graph.nodes:
        name = _producer(node, modules)
        if name is not None:
            parent.setdefault(name, name)
            rank.setdefault(name, len(rank))
            sources[node] = frozenset((name,))
            continue
        kind = _kind(node, modules)
        sources[node] = frozenset().union(*(sources[x] for x in _FLOW[kind](node)))
        joins = _JOINS.get(kind)
        if joins is not None:
            met = frozenset().union(*(sources[x] for x in joins(node)))
            roots = sorted({_find(parent, x) for x in met}, key=rank.__getitem__)
            for root in roots[1:]:
                parent[root] = roots[0]
    groups: dict[str, list[str]] = {}
    for name in parent:
        groups.setdefault(_find(parent, name), []).append(name)
    return [tuple(members) for members in groups.values()]


_GROUPED = (*(t for t in PRODUCER_TYPES if t is not nn.Linear), nn.GroupNorm)


def _group_count(module: nn.Module) -> int:
    if isinstance(module, nn.GroupNorm):
        return module.num_groups
    if module.out_channels == module.groups:  # depthwise: no extra constraint (NNI)
        return 1
    return module.groups


def group_dependency(
    model: nn.Module,
    example_inputs: Any = None,
    *,
    leaf_modules: Iterable[str | type[nn.Module]] = (),
) -> dict[str, int]:
    """Per layer, the number its output channel count must stay divisible by (NNI's
    ``GroupDependency``).

    Every conv gets its own ``groups`` (1 when depthwise, i.e. ``groups == out_channels``); a
    grouped conv or GroupNorm with ``g > 1`` groups also requires ``g`` of the nearest producer
    layers feeding it, found through any op. A layer constrained several times gets the lcm.

    Args:
        model: the model (not modified), or a graph returned by :func:`capture`.
        example_inputs: inputs for :func:`capture`; omit when ``model`` is a captured graph.
        leaf_modules: passed to :func:`capture`.

    Returns:
        ``{module name: group count}`` for every conv and GroupNorm called in the graph and every
        producer a grouped layer constrains, in graph order.

    >>> import torch
    >>> net = nn.Sequential(nn.Conv2d(3, 8, 1), nn.ReLU(), nn.Conv2d(8, 8, 3, groups=4))
    >>> group_dependency(net, torch.zeros(1, 3, 4, 4))
    {'0': 4, '2': 4}
    """
    gm = _graph(model, example_inputs, leaf_modules)
    modules = dict(gm.named_modules())
    sources: dict[fx.Node, frozenset[str]] = {}
    counts: dict[str, list[int]] = {}
    for node in gm.graph.nodes:
        feeding = frozenset().union(*(sources[x] for x in node.all_input_nodes))
        name = _producer(node, modules)
        if name is not None:
            sources[node] = frozenset((name,))
        else:  # like NNI, through any op, but not through shape arithmetic (x.size(), ...)
            sources[node] = feeding if "tensor_meta" in node.meta else frozenset()
        if node.op != "call_module" or not isinstance(modules[node.target], _GROUPED):
            continue
        groups = _group_count(modules[node.target])
        counts.setdefault(str(node.target), []).append(groups)
        if groups > 1:
            for parent in sorted(feeding):
                counts.setdefault(parent, []).append(groups)
    return {name: math.lcm(*values) for name, values in counts.items()}
