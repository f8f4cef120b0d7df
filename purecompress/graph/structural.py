"""Structural maps: every op as a linear map on 0/1 indicators that tells what depends on what.

The structural map of a node (:func:`_structural`) has non-negative coefficients and is non-zero
exactly where the op's output depends on a non-zero input element: a conv becomes its pattern of
non-zero taps between channels, a max pool an average pool, an element-wise op the sum of its
broadcast operands (zeroed where a product has a structural zero factor), a norm a sum over the
elements it normalises together, a view the same view; an op without a rule mixes everything.
The helpers that re-run a node on substituted inputs (:func:`_substitute`, :func:`_call`,
:func:`_mean_dims`) live here too; :mod:`~purecompress.graph.channels` uses them as well.
"""

from __future__ import annotations

import operator
from collections.abc import Callable, Mapping
from typing import Any

import optree
import torch
import torch.fx as fx
import torch.nn.functional as F
from torch import Tensor, nn

from .kinds import FIRST_ONLY, op_name

__all__: list[str] = []

#: Element-wise ops whose output is zero wherever one of their factors is.
_ZERO_KILL = {"mul", "mul_", "imul", "multiply"}


def _is_tensor(value: Any) -> bool:
    return isinstance(value, Tensor)


def _broadcasts(a: torch.Size, b: torch.Size) -> bool:
    try:
        return torch.broadcast_shapes(a, b) == b
    except RuntimeError:
        return False


def _tensor_inputs(node: fx.Node, values: Mapping[fx.Node, Any]) -> list[fx.Node]:
    return [n for n in node.all_input_nodes if _is_tensor(values[n])]


def _call(node: fx.Node, modules: Mapping[str, nn.Module], args: tuple, kwargs: dict) -> Any:
    if node.op == "call_module":
        return modules[str(node.target)](*args, **kwargs)
    if node.op == "call_method":
        return getattr(args[0], str(node.target))(*args[1:], **kwargs)
    return node.target(*args, **kwargs)


def _substitute(node: fx.Node, values: Mapping[fx.Node, Any], env: Mapping[fx.Node, Any]) -> tuple:
    args = fx.node.map_arg(node.args, lambda n: env.get(n, values[n]))
    kwargs = fx.node.map_arg(node.kwargs, lambda n: env.get(n, values[n]))
    return args, kwargs


def _data_inputs(node: fx.Node, values: Mapping[fx.Node, Any]) -> list[fx.Node]:
    """The inputs whose elements flow to the output (the first argument; every cat operand)."""
    first = node.args[0] if node.args else next(iter(node.kwargs.values()), None)
    nodes: list[fx.Node] = []
    fx.node.map_arg(first, nodes.append)
    return [n for n in nodes if _is_tensor(values[n]) or isinstance(values[n], (tuple, list))]


def _mean_dims(node: fx.Node, args: tuple, kwargs: dict) -> Tensor:
    dim = args[1] if len(args) > 1 else kwargs.get("dim")
    keepdim = args[2] if len(args) > 2 and isinstance(args[2], bool) else kwargs.get("keepdim", False)
    if dim is None:
        return args[0].mean()
    return args[0].mean(dim, keepdim=bool(keepdim))


_POOL_ARGS = ("input", "kernel_size", "stride", "padding", "dilation", "ceil_mode", "return_indices")


def _avg_for_max(node: fx.Node, module: nn.Module | None, args: tuple, kwargs: dict) -> Tensor | None:
    """An average pool with the windows of a max pool (None when dilated or returning indices)."""
    x = args[0]
    if module is not None:
        if isinstance(module, nn.modules.pooling._AdaptiveMaxPoolNd):
            return getattr(F, f"adaptive_avg_pool{x.dim() - 2}d")(x, module.output_size)
        opts = dict(
            kernel_size=module.kernel_size,
            stride=module.stride,
            padding=module.padding,
            dilation=module.dilation,
            ceil_mode=module.ceil_mode,
            return_indices=module.return_indices,
        )
    else:
        name = op_name(node)
        if name.startswith("adaptive"):
            size = args[1] if len(args) > 1 else kwargs["output_size"]
            return getattr(F, f"adaptive_avg_pool{x.dim() - 2}d")(x, size)
        opts = {**dict(zip(_POOL_ARGS[1:], args[1:])), **kwargs}
    if opts.get("return_indices") or opts.get("dilation", 1) not in (1, (1,) * (x.dim() - 2), [1] * (x.dim() - 2)):
        return None
    pool = getattr(F, f"avg_pool{x.dim() - 2}d")
    return pool(
        x,
        opts["kernel_size"],
        opts.get("stride") or opts["kernel_size"],
        opts.get("padding", 0),
        ceil_mode=bool(opts.get("ceil_mode", False)),
        count_include_pad=True,
    )


def _any_over(x: Tensor, dims: list[int], shape: torch.Size) -> Tensor:
    return x.sum(dims, keepdim=True).expand(shape) if dims else x


def _gamma(module: nn.Module | None, shape: torch.Size, dim: int = 1) -> Tensor | float:
    weight = getattr(module, "weight", None) if module is not None else None
    if weight is None:
        return 1.0
    view = [1] * len(shape)
    view[dim] = -1
    return (weight.detach() != 0).float().reshape(view) if weight.dim() == 1 else (weight.detach() != 0).float()


def _structural(
    node: fx.Node,
    kind: str,
    modules: Mapping[str, nn.Module],
    values: Mapping[fx.Node, Any],
    varies: Mapping[fx.Node, Any],
) -> tuple[Callable[..., Any], list[fx.Node]]:
    """The structural map of one node and the input nodes it takes (in order)."""
    out = values[node]
    module = modules[str(node.target)] if node.op == "call_module" else None
    shape = out.shape if _is_tensor(out) else None
    if kind in ("elementwise", "channelwise"):
        inputs = [n for n in _tensor_inputs(node, values) if _broadcasts(values[n].shape, shape)]
        if op_name(node) in FIRST_ONLY:
            inputs = inputs[:1]
        kill: Tensor | float = 1.0
        if op_name(node) in _ZERO_KILL or node.target is operator.mul:
            zero = torch.zeros(shape, dtype=torch.bool, device=out.device)
            for n in inputs:
                zero = zero | ((varies[n] == 0) & (values[n] == 0)).expand(shape)
            if any(isinstance(a, (int, float)) and a == 0 for a in node.args):
                zero = torch.ones(shape, dtype=torch.bool, device=out.device)
            kill = (~zero).float()

        def fn(*xs: Tensor) -> Tensor:
            total = torch.zeros(shape, device=out.device)
            for x in xs:
                total = total + x.expand(shape)
            return total * kill

        return fn, inputs
    inputs = _data_inputs(node, values)
    if kind == "producer" and isinstance(module, nn.modules.conv._ConvNd) and not module.transposed:
        return _conv_channels(module, shape), inputs[:1]
    if kind == "producer" and module is not None:
        binary = {k: (v.detach() != 0).float() for k, v in module.named_parameters(recurse=False)}
        if "bias" in binary:
            binary["bias"] = torch.zeros_like(binary["bias"])
        return lambda x: torch.func.functional_call(module, binary, (x,)), inputs[:1]
    if kind == "batchnorm" and module is not None:
        gamma = _gamma(module if module.affine else None, shape)
        return lambda x: x * gamma, inputs[:1]
    if kind in ("instancenorm", "groupnorm", "layernorm", "softmax") and module is not None:
        return _statistics(kind, module, node, shape), inputs[:1]
    if kind in ("index", "spatial", "reduce"):

        def fn(*xs: Tensor) -> Any:
            args, kwargs = _substitute(node, values, dict(zip(inputs, xs)))
            if kind == "reduce":
                return _mean_dims(node, args, kwargs)
            if "max" in op_name(node) or isinstance(
                module, (nn.modules.pooling._MaxPoolNd, nn.modules.pooling._AdaptiveMaxPoolNd)
            ):
                pooled = _avg_for_max(node, module, args, kwargs)
                if pooled is not None:
                    return pooled
                return args[0].sum(list(range(2, args[0].dim())), keepdim=True).expand(shape)
            return _call(node, modules, args, kwargs)

        return fn, inputs
    inputs = _tensor_inputs(node, values)

    def everything(*xs: Tensor) -> Any:
        total = sum((x.sum() for x in xs), torch.zeros((), device=xs[0].device if xs else None))
        return optree.tree_map(lambda v: torch.ones(v.shape, device=v.device) * total if _is_tensor(v) else v, out)

    return everything, inputs


def _conv_channels(module: nn.Module, shape: torch.Size) -> Callable[[Tensor], Tensor]:
    """A conv at channel level: output channel ``o`` depends on input channel ``c`` wherever the
    kernel ``w[o, c]`` has a non-zero tap. Conservative (a constant border or a pixel a stride
    skips counts as varying / used) and far cheaper than a structural conv."""
    taps = (module.weight.detach() != 0).flatten(2).any(-1).float()  # [O, C / groups]
    links = torch.block_diag(*taps.chunk(module.groups))  # [O, C]
    view = (shape[0], shape[1], *([1] * (len(shape) - 2)))

    def fn(x: Tensor) -> Tensor:
        channels = x.mean(list(range(2, x.dim()))) if x.dim() > 2 else x
        return (channels @ links.T).reshape(view).expand(shape)
    return fn


def _statistics(kind: str, module: nn.Module, node: fx.Node, shape: torch.Size) -> Callable[[Tensor], Tensor]:
    """Maps for ops that normalise over groups of elements: each depends on its whole group."""
    ndim = len(shape)
    if kind == "instancenorm":
        gamma = _gamma(module if module.affine else None, shape)
        return lambda x: _any_over(x, list(range(2, ndim)), shape) * gamma
    if kind == "groupnorm":
        gamma = _gamma(module if module.affine else None, shape)
        groups = module.num_groups
        return lambda x: (
            x.reshape(shape[0], groups, -1)
            .sum(-1, keepdim=True)
            .expand(shape[0], groups, x[0].numel() // groups)
            .reshape(shape)
            * gamma
        )
    if kind == "layernorm":
        k = len(module.normalized_shape)
        weight = getattr(module, "weight", None)
        gamma = (weight.detach() != 0).float() if weight is not None else 1.0
        return lambda x: _any_over(x, list(range(ndim - k, ndim)), shape) * gamma
    dim = module.dim if module.dim is not None else 1
    return lambda x: _any_over(x, [dim % ndim], shape)
