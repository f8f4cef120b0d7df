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
:mod:`purecompress.graph.propagate` also reads.
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

from .replace import Replacement, replacement_for

__all__ = ["Liveness", "kind_of", "liveness"]


def _table(kind: str, names: str) -> dict[str, str]:
    return dict.fromkeys(names.split(), kind)


# Keys: function __name__, method name, or a module class name along the MRO.
_KINDS: dict[str, str] = {
    **_table("elementwise", """
        relu relu_ relu6 leaky_relu leaky_relu_ elu elu_ selu celu gelu silu mish hardtanh
        hardtanh_ hardswish hardsigmoid sigmoid sigmoid_ tanh tanh_ softplus softsign logsigmoid
        rrelu threshold abs neg exp log sqrt rsqrt square pow clamp clamp_ clip sign reciprocal
        contiguous clone detach float half double to type_as dropout dropout1d dropout2d dropout3d
        alpha_dropout feature_alpha_dropout add add_ iadd radd sub sub_ isub rsub subtract mul
        mul_ imul multiply div div_ itruediv truediv divide true_divide floordiv floor_divide
        addcmul addcdiv maximum minimum where gt lt ge le eq ne sin cos erf
        ReLU ReLU6 LeakyReLU ELU SELU CELU GELU SiLU Mish Hardtanh Hardswish Hardsigmoid
        Sigmoid Tanh Softplus Softsign LogSigmoid RReLU Threshold Identity _DropoutNd AlphaDropout
        Tanhshrink Softshrink Hardshrink PReLU
    """),
    **_table("batchnorm", "_BatchNorm batch_norm"),
    **_table("instancenorm", "_InstanceNorm instance_norm"),
    **_table("groupnorm", "GroupNorm group_norm"),
    **_table("layernorm", "LayerNorm layer_norm RMSNorm rms_norm"),
    **_table("softmax", "softmax log_softmax softmin normalize Softmax LogSoftmax Softmin"),
    **_table("spatial", """
        max_pool1d max_pool2d max_pool3d avg_pool1d avg_pool2d avg_pool3d adaptive_avg_pool1d
        adaptive_avg_pool2d adaptive_avg_pool3d adaptive_max_pool1d adaptive_max_pool2d
        adaptive_max_pool3d interpolate upsample pad _MaxPoolNd _AvgPoolNd _AdaptiveAvgPoolNd
        _AdaptiveMaxPoolNd Upsample _ConstantPadNd _ReflectionPadNd _ReplicationPadNd
        _CircularPadNd
    """),
    **_table("index", """
        view reshape flatten unflatten squeeze unsqueeze permute transpose t movedim expand
        expand_as repeat getitem split chunk unbind narrow select flip roll pixel_shuffle
        pixel_unshuffle Flatten Unflatten PixelShuffle PixelUnshuffle cat concat concatenate stack
    """),
    **_table("reduce", "mean sum amax amin nansum nanmean logsumexp"),
    **_table("functional_layer", "linear conv1d conv2d conv3d conv_transpose1d conv_transpose2d"),
}  # fmt: skip
_ZERO_KILL = {"mul", "mul_", "imul", "multiply"}
#: Element-wise ops whose later tensor arguments give only a dtype or device (no data).
FIRST_ONLY = {"type_as", "to"}


def kind_of(
    node: fx.Node, modules: Mapping[str, nn.Module], extra: Mapping[type[nn.Module], Replacement] | None = None
) -> str:
    """The op kind of ``node``: a key of the table above, ``'producer'``, ``'channelwise'``,
    ``'unknown'``, or the node's op for placeholders, get_attr and output."""
    if node.op in ("placeholder", "get_attr", "output"):
        return node.op
    if node.op == "call_module":
        module = modules[str(node.target)]
        names = [cls.__name__ for cls in type(module).__mro__]
        named = next((_KINDS[n] for n in names if n in _KINDS), None)
        if named in ("batchnorm", "instancenorm", "groupnorm"):
            return named
        entry = replacement_for(module, extra)
        if entry is not None:
            return entry.kind
    else:
        names = [op_name(node)]
    return next((_KINDS[n] for n in names if n in _KINDS), "unknown")


def op_name(node: fx.Node) -> str:
    """Function or method name of a call node."""
    return str(node.target) if node.op == "call_method" else getattr(node.target, "__name__", "")


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
