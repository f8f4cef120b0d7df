"""The reference run: the masked model, run once on the example inputs, every node's value kept.

:func:`_masked_copy` applies the masks (and optional parameter values) to a private eval-mode copy
of the model, :func:`_bind` binds the example inputs to its ``forward``, and :class:`_Recorder`
runs the captured graph and keeps the value of every node (a copy where an in-place op would
overwrite it later). :func:`_sizes` reads from those values, per called module, the positions its
weights are applied at and its per-sample input size. :func:`~purecompress.graph.propagate.analyse`
plans on this run and hands it on to :mod:`~purecompress.graph.shrink`.
"""

from __future__ import annotations

import copy
import inspect
import math
from collections.abc import Mapping
from typing import Any

import optree
import torch
import torch.fx as fx
from torch import Tensor, nn

from purecompress.params import params_of
from purecompress.records import Mask

from .kinds import op_name

__all__: list[str] = []


def _bind(model: nn.Module, example_inputs: Any) -> inspect.BoundArguments:
    if isinstance(example_inputs, Tensor):
        bound = inspect.signature(model.forward).bind(example_inputs)
    elif isinstance(example_inputs, Mapping):
        bound = inspect.signature(model.forward).bind(**example_inputs)
    else:
        bound = inspect.signature(model.forward).bind(*example_inputs)
    bound.apply_defaults()
    return bound


def _masked_copy(model: nn.Module, masks: Mapping[str, Mask], values: Mapping[str, Tensor] | None) -> nn.Module:
    work = copy.deepcopy(model).eval()
    params = params_of(work)
    unknown = sorted((set(masks) | set(values or {})) - set(params))
    if unknown:
        raise KeyError(f"masks or params for names that are not parameters or buffers of the model: {unknown}")
    with torch.no_grad():
        for name, value in (values or {}).items():
            params[name].copy_(value)
        for name, mask in masks.items():
            params[name].mul_(mask.broadcastable().to(params[name].device))
    return work


class _Recorder(fx.Interpreter):
    def __init__(self, gm: fx.GraphModule) -> None:
        super().__init__(gm)
        self.values: dict[fx.Node, Any] = {}

    def run_node(self, n: fx.Node) -> Any:
        out = super().run_node(n)
        if any(_in_place(u, self.module) for u in n.users):  # keep the value as it was produced
            out = optree.tree_map(lambda v: v.clone() if isinstance(v, Tensor) else v, out, none_is_leaf=True)
        self.values[n] = out
        return out


def _in_place(node: fx.Node, root: nn.Module) -> bool:
    """Whether ``node`` may write into its inputs (``x.relu_()``, ``x += y``, ``ReLU(inplace=True)``)."""
    if node.op == "call_module":
        return bool(getattr(root.get_submodule(str(node.target)), "inplace", False))
    name = op_name(node)
    return name.endswith("_") or name.startswith("__i") or name in _IN_PLACE or bool(node.kwargs.get("inplace"))


_IN_PLACE = {"iadd", "isub", "imul", "itruediv", "ifloordiv", "imod", "ipow", "iand", "ior", "ixor"}


def _sizes(gm: fx.GraphModule, values: Mapping[fx.Node, Any]) -> dict[str, tuple[int, int]]:
    sizes: dict[str, tuple[int, int]] = {}
    for node in gm.graph.nodes:
        out = values.get(node)
        if node.op != "call_module" or not isinstance(out, Tensor) or not node.args:
            continue
        x = values.get(node.args[0]) if isinstance(node.args[0], fx.Node) else None
        module = gm.get_submodule(str(node.target))
        linear = isinstance(module, nn.Linear)
        positions = math.prod(out.shape[1:-1] if linear else out.shape[2:])
        before = sizes.get(str(node.target), (0, 0))
        numel = x[0].numel() if isinstance(x, Tensor) and x.dim() > 0 else 0
        sizes[str(node.target)] = (before[0] + positions, before[1] + numel)
    return sizes
