"""How channel dim 1 flows through each op, for the dependency analyses.

:class:`Kind` names the ways an op can pass its inputs' channels to its output, ``_KINDS`` maps
op names (function, method or module class along the MRO) to a kind, and :func:`_kind` looks a
node up (unknown ops are RESHAPE, NNI's behaviour). Per kind, ``_FLOW`` gives the inputs whose
channels reach the output (element-wise ops: those not broadcast along the channel dim; views and
reductions: those with as many channels as the output) and ``_JOINS`` the operands whose channels
meet and so must agree. :func:`~purecompress.graph.dependency.channel_dependency` walks the graph
with them.
"""

from __future__ import annotations

import enum
import logging
from collections.abc import Callable

import torch.fx as fx
from torch import nn
from torch.fx.passes.shape_prop import TensorMetadata

__all__ = ["Kind"]

# The dependency analyses' logger: its records keep the name they had before this module split off.
log = logging.getLogger("purecompress.graph.dependency")


class Kind(enum.Enum):
    """How an op passes the channel dim (dim 1) of its inputs to its output."""

    KEEP = "keep"  # element-wise or channel-wise: output channel i comes from input channel i
    MERGE = "merge"  # KEEP, and its operands' channels must agree (add, mul, ...)
    RESHAPE = "reshape"  # passes channels when dim 1 keeps its size (views, reductions)
    FIRST = "first"  # RESHAPE of the first argument; the others give a shape or dtype
    CAT = "cat"  # RESHAPE, and a dependency when it joins off the channel dim
    STACK = "stack"  # a dependency always (stacked tensors have one shape)
    MIX = "mix"  # every output channel mixes input channels: the search stops


def _table(kind: Kind, names: str) -> dict[str, Kind]:
    return dict.fromkeys(names.split(), kind)


# Keys: function __name__ (torch.*, F.*, operator.*), method name, or module class name (the
# first hit along the class's MRO). Anything else is RESHAPE, NNI's behaviour for unknown ops.
_KINDS: dict[str, Kind] = {
    **_table(Kind.KEEP, """
        relu relu_ relu6 leaky_relu leaky_relu_ elu elu_ selu celu gelu silu mish hardtanh
        hardtanh_ hardswish hardsigmoid sigmoid sigmoid_ tanh tanh_ softplus softsign logsigmoid
        prelu rrelu threshold softmax log_softmax abs neg exp log sqrt rsqrt square pow clamp
        clamp_ clip sign reciprocal pos contiguous clone detach float half
        dropout dropout1d dropout2d dropout3d alpha_dropout feature_alpha_dropout
        batch_norm instance_norm group_norm layer_norm local_response_norm normalize
        max_pool1d max_pool2d max_pool3d avg_pool1d avg_pool2d avg_pool3d lp_pool2d
        adaptive_avg_pool1d adaptive_avg_pool2d adaptive_avg_pool3d adaptive_max_pool1d
        adaptive_max_pool2d adaptive_max_pool3d interpolate upsample pad
        ReLU ReLU6 LeakyReLU PReLU ELU SELU CELU GELU SiLU Mish Hardtanh Hardswish Hardsigmoid
        Sigmoid Tanh Softplus Softsign LogSigmoid RReLU Threshold Softmax LogSoftmax Softmax2d
        Identity _DropoutNd AlphaDropout _NormBase GroupNorm LayerNorm LocalResponseNorm
        _MaxPoolNd _AvgPoolNd _AdaptiveAvgPoolNd _AdaptiveMaxPoolNd LPPool2d Upsample
        _ConstantPadNd _ReflectionPadNd _ReplicationPadNd _CircularPadNd
    """),
    **_table(Kind.MERGE, """
        add add_ iadd radd sub sub_ isub rsub subtract mul mul_ imul multiply div div_ itruediv
        truediv divide true_divide floordiv floor_divide addcmul addcmul_ addcdiv addcdiv_
        maximum minimum where logical_and logical_or logical_xor
    """),
    **_table(Kind.RESHAPE, """
        view reshape flatten squeeze unsqueeze permute transpose expand getitem mean sum amax
        amin split chunk pixel_shuffle Flatten Unflatten
    """),
    **_table(Kind.FIRST, "to type_as expand_as view_as reshape_as"),
    "cat": Kind.CAT, "concat": Kind.CAT, "concatenate": Kind.CAT, "stack": Kind.STACK,
    **_table(Kind.MIX, "linear conv1d conv2d conv3d matmul mm bmm einsum bilinear Bilinear"),
}  # fmt: skip


def _kind(node: fx.Node, modules: dict[str, nn.Module]) -> Kind:
    if node.op == "call_module":
        names = [cls.__name__ for cls in type(modules[node.target]).__mro__]
    elif node.op == "call_method":
        names = [node.target]
    elif node.op == "call_function":
        names = [getattr(node.target, "__name__", "")]
    else:  # placeholder, get_attr, output: no producer behind them
        return Kind.MIX
    kind = next((_KINDS[n] for n in names if n in _KINDS), None)
    if kind is None:
        log.debug("unknown op %s: channels pass when dim 1 keeps its size", names[0])
    return Kind.RESHAPE if kind is None else kind


def _channels(node: fx.Node) -> int | None:
    """Size of dim 1 of the node's tensor; for a multi-output op (split, max) its input's."""
    meta = node.meta.get("tensor_meta")
    if isinstance(meta, TensorMetadata):
        return meta.shape[1] if len(meta.shape) > 1 else None
    if meta is not None and node.all_input_nodes:
        return _channels(node.all_input_nodes[0])
    return None


def _keep(node: fx.Node) -> list[fx.Node]:
    """Tensor inputs whose channels reach the output: not broadcast along it, not resized."""
    out = node.meta.get("tensor_meta")
    if not isinstance(out, TensorMetadata) or len(out.shape) < 2:
        return node.all_input_nodes
    kept = []
    for x in node.all_input_nodes:
        meta = x.meta.get("tensor_meta")
        axis = len(meta.shape) - len(out.shape) + 1 if isinstance(meta, TensorMetadata) else -1
        if axis >= 0 and meta.shape[axis] == out.shape[1]:  # dim 1 of the output, right-aligned
            kept.append(x)
    return kept


def _reshape(node: fx.Node) -> list[fx.Node]:
    """Inputs with as many channels as the output (NNI's ``reshape_break_channel_dependency``)."""
    out = _channels(node)
    return [x for x in node.all_input_nodes if out is not None and _channels(x) == out]


def _first(node: fx.Node) -> list[fx.Node]:
    """The first argument, when it has as many channels as the output (``x.expand_as(y)``)."""
    return [x for x in _reshape(node) if node.args and x is node.args[0]]


def _cat_dim(node: fx.Node) -> int | None:
    """The normalised dim a cat joins on, or None when it has no known shape."""
    dim = node.args[1] if len(node.args) > 1 else node.kwargs.get("dim", 0)
    meta = node.meta.get("tensor_meta")
    if not isinstance(meta, TensorMetadata) or not isinstance(dim, int):
        return None
    return dim % len(meta.shape)


_FLOW: dict[Kind, Callable[[fx.Node], list[fx.Node]]] = {
    Kind.KEEP: _keep,
    Kind.MERGE: _keep,
    Kind.RESHAPE: _reshape,
    Kind.FIRST: _first,
    Kind.CAT: _reshape,
    Kind.STACK: _reshape,
    Kind.MIX: lambda node: [],
}
# The operands whose channels meet at an op and so must agree.
_JOINS: dict[Kind, Callable[[fx.Node], list[fx.Node]]] = {
    Kind.MERGE: _keep,
    Kind.CAT: lambda node: node.all_input_nodes if _cat_dim(node) != 1 else [],
    Kind.STACK: lambda node: node.all_input_nodes,
}
