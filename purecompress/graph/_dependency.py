"""How channel dim 1 flows through each op, for the dependency analyses.

:class:`Kind` names the ways an op can pass its inputs' channels to its output, ``_KINDS`` maps
op names (function, method or module class along the MRO) to a kind, and :func:`_kind` looks a
node up (unknown ops are RESHAPE, NNI's behaviour). Per kind, ``_FLOW`` gives the inputs whose
channels reach the output (element-wise ops: those not broadcast along the channel dim; views and
reductions: those with as many channels as the output) and ``_JOINS`` the operands whose channels
meet and so must agree. :func:`~purecompress.graph.channel_dependency` walks the graph
with them.
"""

from __future__ import annotations

import enum
import logging
import math
from collections.abc import Callable, Iterable
from typing import Any

import torch.fx as fx
from torch import nn
from torch.fx.passes.shape_prop import TensorMetadata

from purecompress.graph._capture import PRODUCER_TYPES, Method, capture, is_captured, is_depthwise

__all__ = [
    "Kind",
    "attention_dependency",
    "channel_dependency",
    "group_constraints",
    "group_dependency",
    "input_channel_dependency",
]


# The dependency analyses' logger: its records keep the name they had before this module split off.
log = logging.getLogger("purecompress.graph")



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
    # Conv1D: Hugging Face's GPT-2 projection (a leaf of the graph, not yet a producer)
    **_table(Kind.MIX, "linear conv1d conv2d conv3d matmul mm bmm einsum bilinear Bilinear Conv1D"),
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



def _graph(model: nn.Module, example_inputs: Any, leaf_modules: Iterable[Any], method: Method) -> fx.GraphModule:
    if example_inputs is not None:
        return capture(model, example_inputs, leaf_modules=leaf_modules, method=method)
    if is_captured(model):
        return model  # type: ignore[return-value]
    raise TypeError("example_inputs is required unless model is a graph returned by capture()")



def _producer(node: fx.Node, modules: dict[str, nn.Module],
              types: tuple[type[nn.Module], ...] = PRODUCER_TYPES) -> str | None:
    if node.op == "call_module" and isinstance(modules[node.target], types):
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
    capture_method: Method = "auto",
    producer_types: tuple[type[nn.Module], ...] = PRODUCER_TYPES,
    couple_depthwise: bool = True,
    through_norms: bool = False,
) -> list[tuple[str, ...]]:
    """Sets of layers whose output channels must share one mask (NNI's ``ChannelDependency``).

    Args:
        model: the model (not modified), or a graph returned by :func:`capture`.
        example_inputs: inputs for :func:`capture` (a tensor such as ``[1, 3, H, W]``, a tuple
            or a dict); omit it when ``model`` is already a captured graph.
        leaf_modules: passed to :func:`capture`.
        capture_method: passed to :func:`capture` as ``method`` (``"auto"``: torch.fx, or a
            recording of the run when fx cannot trace the forward).
        producer_types: the layers whose channels are pruned (default :data:`PRODUCER_TYPES`;
            ``(nn.BatchNorm2d,)`` for channels pruned at the norms, NNI's ``prune_type='Batchnorm'``).
        couple_depthwise: put every depthwise conv (``groups == in_channels == out_channels``)
            in the set of the layers that produce its input (the default), since its channel
            ``i`` is computed from input channel ``i`` alone: the dependency-aware allocator keeps
            the same channels in both and a pointwise -> depthwise -> pointwise block keeps what
            was asked. False is NNI 2.10's rule (its ``ChannelDependency``; compat passes it): the
            two are chosen independently and shrinking removes their union, so 50% asked removes
            up to 75% of the block (MobileNetV2: 0.15 of its MACs left instead of 0.29).
        through_norms: follow the channels to whichever dim holds them (a Linear's last dim, a
            ``permute`` moving them; other views pass them only when the dims up to theirs keep
            their sizes), so that channels-last LayerNorms (ConvNeXt's ``permute -> LayerNorm ->
            Linear``, torchvision's ``LayerNorm2d``) and layer scales pass them and a residual
            stream's producers (stem, every block's last Linear) share one set. Pair it with
            ``prune_norms=True`` in :func:`~purecompress.shrink`, which removes those channels
            through the norms. False (the default) is NNI's rule: channels at dim 1 only.

    Returns:
        A partition of the producer layers called in the graph, by module name: a layer with no
        dependency is a 1-tuple, as in NNI's ``dependency_sets``. Sets are ordered by the graph
        position of their first member, members by graph position.

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
    gm = _graph(model, example_inputs, leaf_modules, capture_method)
    modules = dict(gm.named_modules())
    if through_norms:
        return _axis_dependency(gm, modules, producer_types, couple_depthwise)
    parent: dict[str, str] = {}  # union-find over producer names; roots are earliest members
    rank: dict[str, int] = {}  # graph position of each producer's first call
    sources: dict[fx.Node, frozenset[str]] = {}  # nearest producers whose channels reach a node
    for node in gm.graph.nodes:
        name = _producer(node, modules, producer_types)
        if name is not None:
            parent.setdefault(name, name)
            rank.setdefault(name, len(rank))
            sources[node] = frozenset((name,))
            if couple_depthwise and is_depthwise(modules[str(node.target)]) and node.args:
                feeding = node.args[0]
                _union(parent, rank, {name} | set(sources.get(feeding, ())) if isinstance(feeding, fx.Node) else {name})
            continue
        kind = _kind(node, modules)
        sources[node] = frozenset().union(*(sources[x] for x in _FLOW[kind](node)))
        joins = _JOINS.get(kind)
        if joins is not None:
            _union(parent, rank, frozenset().union(*(sources[x] for x in joins(node))))
    return _partition(parent)


def _shape(node: Any) -> tuple[int, ...] | None:
    meta = node.meta.get("tensor_meta") if isinstance(node, fx.Node) else None
    return tuple(meta.shape) if isinstance(meta, TensorMetadata) else None


_MOVES = {"permute", "transpose", "swapaxes", "movedim"}


def _moved(node: fx.Node, axis: int, ndim: int) -> int | None:
    """Where ``permute`` / ``transpose`` / ``movedim`` put dim ``axis`` of their input."""
    name = node.target if node.op == "call_method" else getattr(node.target, "__name__", "")
    rest = list(node.args[1:])
    try:
        if name == "permute":
            dims = [int(d) % ndim for d in (rest[0] if len(rest) == 1 and isinstance(rest[0], (list, tuple))
                                            else rest)]
            return dims.index(axis)
        if name in ("transpose", "swapaxes"):
            a, b = (int(d) % ndim for d in rest[:2])
            return b if axis == a else a if axis == b else axis
        dims = list(range(ndim))
        dims.insert(int(rest[1]) % ndim, dims.pop(int(rest[0]) % ndim))
        return dims.index(axis)
    except (ValueError, TypeError, IndexError):  # sizes or dims that are not literals
        return None


def _axis_flow(node: fx.Node, kind: Kind, sources: dict[fx.Node, frozenset[str]], axes: dict[fx.Node, int]
               ) -> tuple[frozenset[str], int | None, list[fx.Node]]:
    """``through_norms``: the producers whose channels reach ``node``, the dim they sit at, and the
    inputs whose channels meet there."""
    out = _shape(node)
    tracked = [x for x in node.all_input_nodes if sources.get(x) and x in axes]
    if out is None or not tracked or kind is Kind.MIX:
        return frozenset(), None, []
    name = node.target if node.op == "call_method" else getattr(node.target, "__name__", "")
    if name in _MOVES:
        x = tracked[0]
        axis = _moved(node, axes[x], len(out)) if x is node.args[0] else None
        return (sources[x], axis, []) if axis is not None else (frozenset(), None, [])
    if kind in (Kind.KEEP, Kind.MERGE):  # element-wise: right-aligned dims, not broadcast along the channels
        placed: dict[int, list[fx.Node]] = {}
        for x in tracked:
            shape = _shape(x)
            axis = axes[x] + len(out) - len(shape) if shape is not None else -1
            if axis >= 0 and shape is not None and shape[axes[x]] == out[axis]:
                placed.setdefault(axis, []).append(x)
        if not placed:
            return frozenset(), None, []
        axis, met = next(iter(placed.items()))
        return frozenset().union(*(sources[x] for x in met)), axis, met if kind is Kind.MERGE else []
    if kind is Kind.CAT:
        dim = _cat_dim(node)
        met = [x for x in tracked if axes[x] != dim]
        return frozenset().union(*(sources[x] for x in met)), (axes[met[0]] if met else None), met
    # views and reductions: channels stay when every dim up to theirs keeps its size
    kept = [x for x in tracked if (s := _shape(x)) is not None and len(out) > axes[x]
            and s[: axes[x] + 1] == out[: axes[x] + 1]]
    if not kept:
        return frozenset(), None, []
    axis = axes[kept[0]]
    kept = [x for x in kept if axes[x] == axis]
    return frozenset().union(*(sources[x] for x in kept)), axis, kept if kind is Kind.STACK else []


def _axis_dependency(gm: fx.GraphModule, modules: dict[str, nn.Module], producer_types: tuple[type[nn.Module], ...],
                     couple_depthwise: bool) -> list[tuple[str, ...]]:
    """:func:`channel_dependency` with ``through_norms``: each node's channels at a tracked dim."""
    parent: dict[str, str] = {}
    rank: dict[str, int] = {}
    sources: dict[fx.Node, frozenset[str]] = {}
    axes: dict[fx.Node, int] = {}
    for node in gm.graph.nodes:
        name = _producer(node, modules, producer_types)
        shape = _shape(node)
        if name is not None:
            parent.setdefault(name, name)
            rank.setdefault(name, len(rank))
            sources[node] = frozenset((name,))
            if shape is not None and len(shape) > 1:
                axes[node] = len(shape) - 1 if isinstance(modules[name], nn.Linear) else 1
            feeding = node.args[0] if node.args else None
            if couple_depthwise and is_depthwise(modules[name]) and isinstance(feeding, fx.Node) \
                    and axes.get(feeding) == 1:
                _union(parent, rank, {name} | set(sources.get(feeding, ())))
            continue
        found, axis, met = _axis_flow(node, _kind(node, modules), sources, axes)
        sources[node] = found
        if axis is not None:
            axes[node] = axis
        _union(parent, rank, frozenset().union(*(sources[x] for x in met)))
    return _partition(parent)


def _union(parent: dict[str, str], rank: dict[str, int], met: Iterable[str]) -> None:
    """Merge the sets of ``met`` (the earliest member's root wins)."""
    roots = sorted({_find(parent, x) for x in met}, key=rank.__getitem__)
    for root in roots[1:]:
        parent[root] = roots[0]


def _partition(parent: dict[str, str]) -> list[tuple[str, ...]]:
    groups: dict[str, list[str]] = {}
    for name in parent:
        groups.setdefault(_find(parent, name), []).append(name)
    return [tuple(members) for members in groups.values()]



def input_channel_dependency(
    model: nn.Module,
    example_inputs: Any = None,
    *,
    leaf_modules: Iterable[str | type[nn.Module]] = (),
    capture_method: Method = "auto",
) -> list[tuple[str, ...]]:
    """Sets of layers whose *input* channels must share one mask (NNI's ``InputChannelDependency``).

    Layers that read the same tensor, directly or through ops that keep its channels (activations,
    norms, element-wise ops, views that keep dim 1), see the same input channels: pruning an input
    channel of one of them prunes it for all.

    Args:
        model: the model (not modified), or a graph returned by :func:`capture`.
        example_inputs: inputs for :func:`capture`; omit when ``model`` is a captured graph.
        leaf_modules: passed to :func:`capture`.
        capture_method: passed to :func:`capture` as ``method``.

    Returns:
        A partition of the producer layers (:data:`PRODUCER_TYPES`) called in the graph, as
        :func:`channel_dependency` returns it.

    >>> import torch
    >>> class Fork(nn.Module):
    ...     def __init__(self) -> None:
    ...         super().__init__()
    ...         self.stem, self.a, self.b = nn.Conv2d(3, 4, 1), nn.Conv2d(4, 2, 1), nn.Conv2d(4, 2, 1)
    ...     def forward(self, x):
    ...         y = self.stem(x).relu()
    ...         return self.a(y) + self.b(y)
    >>> input_channel_dependency(Fork(), torch.zeros(1, 3, 4, 4))
    [('stem',), ('a', 'b')]
    """
    gm = _graph(model, example_inputs, leaf_modules, capture_method)
    modules = dict(gm.named_modules())
    nodes = list(gm.graph.nodes)
    readers: dict[fx.Node, frozenset[str]] = {}  # nearest layers reading a node's channels
    for node in reversed(nodes):
        found: set[str] = set()
        for user in node.users:
            name = _producer(user, modules)
            if name is not None:
                if user.args and user.args[0] is node:
                    found.add(name)
            elif node in _FLOW[_kind(user, modules)](user):
                found |= readers[user]
        readers[node] = frozenset(found)
    parent: dict[str, str] = {}
    rank: dict[str, int] = {}
    for node in nodes:
        name = _producer(node, modules)
        if name is not None:
            parent.setdefault(name, name)
            rank.setdefault(name, len(rank))
    for node in nodes:
        _union(parent, rank, readers[node])
    return _partition(parent)



def _is_matmul(node: fx.Node) -> bool:
    if node.op == "call_method":
        return node.target == "matmul"
    return node.op == "call_function" and getattr(node.target, "__name__", "") == "matmul"



def _nearest_linears(start: fx.Node, modules: dict[str, nn.Module], step: Callable[[fx.Node], Iterable[fx.Node]]
                     ) -> list[str]:
    """The Linear layers first met walking from ``start`` by ``step``; LayerNorm ends a path (NNI's rule)."""
    found: list[str] = []
    queue, seen = list(step(start)), set()
    while queue:
        node = queue.pop(0)
        if node in seen:
            continue
        seen.add(node)
        module = modules.get(str(node.target)) if node.op == "call_module" else None
        if isinstance(module, nn.Linear):
            if str(node.target) not in found:
                found.append(str(node.target))
            continue
        if isinstance(module, nn.LayerNorm):
            continue
        queue.extend(step(node))
    return found



def attention_dependency(
    model: nn.Module,
    example_inputs: Any = None,
    *,
    leaf_modules: Iterable[str | type[nn.Module]] = (),
    capture_method: Method = "auto",
) -> dict[str, tuple[str, ...]]:
    """The four Linear layers of each attention block (NNI's ``AttentionWeightDependency``).

    For every ``matmul`` in the graph, the nearest Linear layers before it (walking back through
    any op, stopping at LayerNorm) and after it; a matmul with three before (the Q, K and V
    projections, in walk order) and one after (the output projection) is an attention block.

    Args:
        model: the model (not modified), or a graph returned by :func:`capture`.
        example_inputs: inputs for :func:`capture`; omit when ``model`` is a captured graph.
        leaf_modules: passed to :func:`capture`.
        capture_method: passed to :func:`capture` as ``method``.

    Returns:
        ``{matmul node name: (q, k, v, out)}`` (in the walk's order), in graph order.

    >>> import torch
    >>> class Attention(nn.Module):
    ...     def __init__(self) -> None:
    ...         super().__init__()
    ...         self.q, self.k, self.v, self.o = (nn.Linear(8, 8) for _ in range(4))
    ...     def forward(self, x):
    ...         scores = torch.matmul(self.q(x), self.k(x).transpose(-1, -2)).softmax(-1)
    ...         return self.o(torch.matmul(scores, self.v(x)))
    >>> attention_dependency(Attention(), torch.zeros(1, 5, 8))
    {'matmul_1': ('v', 'q', 'k', 'o')}
    """
    gm = _graph(model, example_inputs, leaf_modules, capture_method)
    modules = dict(gm.named_modules())
    out: dict[str, tuple[str, ...]] = {}
    for node in gm.graph.nodes:
        if not _is_matmul(node):
            continue
        before = _nearest_linears(node, modules, lambda n: n.all_input_nodes)
        after = _nearest_linears(node, modules, lambda n: list(n.users))
        if len(before) == 3 and len(after) == 1:
            out[node.name] = (*before, *after)
    return out



_GROUPED = (*(t for t in PRODUCER_TYPES if t is not nn.Linear), nn.GroupNorm)



def _group_count(module: nn.Module) -> int:
    if isinstance(module, nn.GroupNorm):
        return module.num_groups
    if module.out_channels == module.groups:  # depthwise: no extra constraint (NNI)
        return 1
    return module.groups



def group_constraints(
    model: nn.Module,
    example_inputs: Any = None,
    *,
    leaf_modules: Iterable[str | type[nn.Module]] = (),
    capture_method: Method = "auto",
) -> dict[str, tuple[int, ...]]:
    """Per layer, every group count its output channels must stay divisible by (before the lcm
    :func:`group_dependency` takes); see there.

    >>> import torch
    >>> net = nn.Sequential(nn.Conv2d(3, 8, 1), nn.ReLU(), nn.Conv2d(8, 8, 3, groups=4))
    >>> group_constraints(net, torch.zeros(1, 3, 4, 4))
    {'0': (1, 4), '2': (4,)}
    """
    gm = _graph(model, example_inputs, leaf_modules, capture_method)
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
    return {name: tuple(values) for name, values in counts.items()}



def group_dependency(
    model: nn.Module,
    example_inputs: Any = None,
    *,
    leaf_modules: Iterable[str | type[nn.Module]] = (),
    capture_method: Method = "auto",
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
        capture_method: passed to :func:`capture` as ``method`` (``"auto"``: torch.fx, or a
            recording of the run when fx cannot trace the forward).

    Returns:
        ``{module name: group count}`` for every conv and GroupNorm called in the graph and every
        producer a grouped layer constrains, in graph order.

    >>> import torch
    >>> net = nn.Sequential(nn.Conv2d(3, 8, 1), nn.ReLU(), nn.Conv2d(8, 8, 3, groups=4))
    >>> group_dependency(net, torch.zeros(1, 3, 4, 4))
    {'0': 4, '2': 4}
    """
    constraints = group_constraints(model, example_inputs, leaf_modules=leaf_modules, capture_method=capture_method)
    return {name: math.lcm(*values) for name, values in constraints.items()}
