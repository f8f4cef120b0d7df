"""Which elements of every tensor in a captured graph vary with the input, and which are used.

For every node the graph is re-run on *indicators* (float 0/1 tensors of the node's shape)
through a **structural map**: a linear map with non-negative coefficients whose output is
non-zero exactly where the op's output depends on a non-zero input element. A conv becomes the
same conv with weights ``w != 0`` and no bias, a max pool an average pool, an element-wise op the
sum of its broadcast operands, a BatchNorm a product with ``gamma != 0``, a view the same view.
Then

- ``varies[n]`` (forward): the element depends on the model's input; elsewhere it is a constant
  the same for every input (a pruned channel's bias, BatchNorm beta through ReLU, ...);
- ``used[n]`` (backward, the vector-Jacobian product of the structural maps): the element can
  change the model's output.

Ops without a rule are treated as mixing everything: each output element depends on every input
element (never wrong, only less precise). ``kind_of`` is the op table that
:mod:`purecompress.graph.propagate` also reads; it lives in :mod:`~purecompress.graph.kinds`
and the structural maps in :mod:`~purecompress.graph.structural`.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import optree
import torch
import torch.fx as fx
from torch import Tensor, nn

from .kinds import FIRST_ONLY as FIRST_ONLY
from .kinds import kind_of
from .kinds import op_name as op_name
from .replace import Replacement
from .structural import _is_tensor, _structural

__all__ = ["Liveness", "kind_of", "liveness"]


def _binary(tree: Any) -> Any:
    return optree.tree_map(lambda v: (v != 0).float() if _is_tensor(v) else v, tree)


class Liveness:
    """``varies`` and ``used`` indicators (float 0/1, the shape of each node's value).

    Attributes:
        values: node -> value in the reference run (tensors, tuples of tensors, python values).
        varies: node -> where the value depends on the model's input.
        used: node -> where the value can change the model's output.
        kinds: node -> op kind (see :func:`kind_of`).
    """

    def __init__(self, values: dict, varies: dict, used: dict, kinds: dict) -> None:
        self.values, self.varies, self.used, self.kinds = values, varies, used, kinds

    def dead(self, node: fx.Node, dim: int) -> Tensor:
        """``[C]`` bool: channels of ``node`` along ``dim`` that are constant or unused everywhere."""
        live = (self.varies[node] * self.used[node]) != 0
        dims = [d for d in range(live.dim()) if d != dim % live.dim()]
        return ~live.any(dim=dims) if dims else ~live


def liveness(
    gm: fx.GraphModule, values: dict[fx.Node, Any], extra: Mapping[type[nn.Module], Replacement] | None = None
) -> Liveness:
    """Run the forward (varies) and backward (used) passes over a graph and its reference values.

    Args:
        gm: a graph from :func:`~purecompress.graph.capture`; its modules hold the weights
            (masked) whose zeros are structural.
        values: every node's value on the example inputs.
        extra: extra replacement-table entries (they give the kinds of custom modules).
    """
    modules = dict(gm.named_modules())
    varies: dict[fx.Node, Any] = {}
    kinds: dict[fx.Node, str] = {}
    pullbacks: dict[fx.Node, tuple[list[fx.Node], Callable[..., Any]]] = {}
    outputs: list[fx.Node] = []
    for node in gm.graph.nodes:
        value = values.get(node)
        kinds[node] = kind = kind_of(node, modules, extra)
        if node.op == "output":
            fx.node.map_arg(node.args, outputs.append)
            continue
        if not optree.tree_leaves(value) or not any(_is_tensor(v) for v in optree.tree_leaves(value)):
            continue
        if node.op in ("placeholder", "get_attr"):
            fill = 1.0 if node.op == "placeholder" else 0.0
            varies[node] = optree.tree_map(
                lambda v, f=fill: torch.full(v.shape, f, device=v.device) if _is_tensor(v) else v, value)
            continue
        fn, inputs = _structural(node, kind, modules, values, varies)
        inputs = [n for n in inputs if n in varies]
        with torch.no_grad():
            if inputs:
                out, pullback = torch.func.vjp(fn, *(varies[n] for n in inputs))
                pullbacks[node] = (inputs, pullback)
            else:
                out = optree.tree_map(lambda v: torch.zeros(v.shape, device=v.device) if _is_tensor(v) else v, value)
        varies[node] = _binary(out)
    used = {n: optree.tree_map(lambda v: torch.zeros_like(v) if _is_tensor(v) else v, v) for n, v in varies.items()}
    for n in outputs:
        if n in used:
            used[n] = optree.tree_map(lambda v: torch.ones_like(v) if _is_tensor(v) else v, used[n])
    for node in reversed(gm.graph.nodes):
        if node not in pullbacks:
            continue
        inputs, pullback = pullbacks[node]
        if not any(bool(v.any()) for v in optree.tree_leaves(used[node]) if _is_tensor(v)):
            continue
        with torch.no_grad():
            grads = pullback(used[node])
        for n, g in zip(inputs, grads):
            used[n] = optree.tree_map(lambda u, d: ((u != 0) | (d != 0)).float() if _is_tensor(u) else u, used[n], g)
    return Liveness(values, varies, used, kinds)
