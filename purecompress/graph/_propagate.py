"""Channel analysis on a captured graph, and :func:`propagate`: which channels of a masked model are
dead, and the masks (and compact-model plan) that follow from them.

A reference run records every op of the model on the example input; each op kind says how channels
flow through it (elementwise, structural reshapes, reductions, joins); the liveness pass marks a
channel dead when the masks zero it everywhere it is read; :func:`propagate` masks every such
channel (BN, consumers' inputs) and :func:`channel_plan` records, per layer, which channels a
compact model keeps and the constants of pruned channels to fold into the next bias.
"""

from __future__ import annotations

import copy
import math
import operator
from collections.abc import Callable, Iterable, Mapping
from typing import Any

import attrs
import optree
import torch
import torch.fx as fx
import torch.nn.functional as F
from torch import Tensor, nn

from purecompress.graph._capture import SIZE_ARGS, Method, bind_inputs, capture, is_depthwise
from purecompress.graph._replace import ChannelSlice, Replacement, composite_of, replacement_for
from purecompress.pruning import ChannelRange, Mask, Masks, ShuffleChain, channel_keep, params_of

__all__ = [
    "Analysis",
    "Call",
    "ChannelPlan",
    "Classes",
    "EXACT_TOL",
    "EmptyLayerError",
    "FIRST_ONLY",
    "Liveness",
    "Propagated",
    "ShrinkError",
    "Track",
    "UnbalancedGroupsError",
    "analyse",
    "channel_plan",
    "channel_ranges",
    "kind_of",
    "liveness",
    "op_name",
    "propagate",
    "shuffle_chains",
    "trace_channels",
]



def _table(kind: str, names: str) -> dict[str, str]:
    return dict.fromkeys(names.split(), kind)



# Keys: function __name__, method name, or a module class name along the MRO. stochastic_depth
# (torchvision's, an fx leaf function) and drop_path are the identity in eval, a per-sample scale in training.
_KINDS: dict[str, str] = {
    **_table("elementwise", """
        relu relu_ relu6 leaky_relu leaky_relu_ elu elu_ selu celu gelu silu mish hardtanh
        hardtanh_ hardswish hardsigmoid sigmoid sigmoid_ tanh tanh_ softplus softsign logsigmoid
        rrelu threshold abs neg exp log sqrt rsqrt square pow clamp clamp_ clip sign reciprocal
        contiguous clone detach float half double to type_as dropout dropout1d dropout2d dropout3d
        alpha_dropout feature_alpha_dropout add add_ iadd radd sub sub_ isub rsub subtract mul
        mul_ imul multiply div div_ itruediv truediv divide true_divide floordiv floor_divide
        addcmul addcdiv maximum minimum where gt lt ge le eq ne sin cos erf stochastic_depth drop_path
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
        view view_as reshape reshape_as flatten unflatten squeeze unsqueeze permute transpose t movedim expand
        expand_as repeat getitem split chunk unbind narrow select flip roll pixel_shuffle
        pixel_unshuffle Flatten Unflatten PixelShuffle PixelUnshuffle cat concat concatenate stack
    """),
    **_table("reduce", "mean sum amax amin nansum nanmean logsumexp"),
    **_table("functional_layer", "linear conv1d conv2d conv3d conv_transpose1d conv_transpose2d"),
}  # fmt: skip


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
        entry = replacement_for(module, extra)
        if named in ("batchnorm", "instancenorm", "groupnorm") or (
            named == "layernorm" and entry is replacement_for(module)  # the table's entry, not the user's
        ):
            return named
        if entry is not None:
            return entry.kind
    else:
        names = [op_name(node)]
    return next((_KINDS[n] for n in names if n in _KINDS), "unknown")



def op_name(node: fx.Node) -> str:
    """Function or method name of a call node."""
    return str(node.target) if node.op == "call_method" else getattr(node.target, "__name__", "")




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
    if kind == "layernorm" and _own_forward(module):
        return lambda x: _any_over(x, list(range(1, ndim)), shape)  # e.g. LayerNorm2d: assume every element mixes
    if kind == "layernorm":
        k = len(module.normalized_shape)
        weight = getattr(module, "weight", None)
        gamma = (weight.detach() != 0).float() if weight is not None else 1.0
        return lambda x: _any_over(x, list(range(ndim - k, ndim)), shape) * gamma
    dim = module.dim if module.dim is not None else 1
    return lambda x: _any_over(x, [dim % ndim], shape)



@attrs.frozen
class Track:
    """Attributes: cd, the channel dim; ids, ``[C]`` class ids (-1: no class), or, between the
    views of a channel shuffle (``view(n, g, C // g, ...)``, ``transpose``), ``[g, C // g]`` ids
    spanning the dims from ``cd`` on."""

    cd: int
    ids: Tensor



class Classes:
    """Union-find over channel classes with a blocked flag per root, and why it was blocked.

    Attributes:
        reason: what the next :meth:`block` records as the reason (set by the pass that blocks).
        params: (``prune_norms``) parameter or buffer name -> ``(dim, ids)``: a tensor of the model
            read by the graph (``get_attr``: a layer scale, a traced ``LayerNorm2d``'s weight) that
            spans channels along ``dim`` and is sliced with their classes.
        norm_owners: the modules whose weight a functional ``layer_norm`` reads among ``params``.
    """

    def __init__(self, *, couple_shuffles: bool = True) -> None:
        self.params: dict[str, tuple[int, Tensor]] = {}
        self.norm_owners: set[str] = set()
        self.parent: list[int] = []
        self.blocked: list[bool] = []
        self.reasons: dict[int, str] = {}
        self.reason = "kept"
        #: pieces of a channel split whose kept counts must be equal (``chunk``; a composite's
        #: ``split`` by one size), with the reason blocking records when they are not
        self.balanced: list[tuple[str, tuple[Tensor, ...]]] = []
        #: whether a channel shuffle joins channel ``j`` of each group into one class (True, the
        #: sufficient rule :func:`channel_ranges` gives the allocator) or only asks the groups'
        #: kept channels to interleave (False, what :func:`shrink` needs: :meth:`close_shuffles`)
        self.couple_shuffles = couple_shuffles
        #: the ``[g, C // g]`` grids a channel view cut (``couple_shuffles`` False), each with
        #: where, and whether it is joined back only by shuffles (None: not joined yet)
        self.shuffles: list[tuple[Tensor, str, bool | None]] = []
        #: the groups of each channel shuffle (rows of its grid) whose kept channels must
        #: interleave, with the reason blocking records when they do not
        self.interleaved: list[tuple[str, Tensor]] = []

    def new(self, n: int) -> Tensor:
        start = len(self.parent)
        self.parent.extend(range(start, start + n))
        self.blocked.extend([False] * n)
        return torch.arange(start, start + n)

    def why(self, i: int) -> str | None:
        """The reason class ``i`` is blocked (None: it is not)."""
        root = self.find(i)
        return self.reasons.get(root, self.reason) if self.blocked[root] else None

    def find(self, i: int) -> int:
        while self.parent[i] != i:
            self.parent[i] = self.parent[self.parent[i]]
            i = self.parent[i]
        return i

    def block(self, ids: Tensor) -> None:
        for i in ids.flatten().tolist():
            if i >= 0:
                root = self.find(i)
                if not self.blocked[root]:
                    self.reasons[root] = self.reason
                self.blocked[root] = True

    def union(self, a: Tensor, b: Tensor) -> None:
        for x, y in zip(a.flatten().tolist(), b.flatten().tolist()):
            if x < 0 or y < 0:
                self.block(torch.tensor([x, y]))
                continue
            rx, ry = self.find(x), self.find(y)
            if rx != ry:
                self.parent[ry] = rx
                if self.blocked[ry] and not self.blocked[rx]:
                    self.reasons[rx] = self.reasons.get(ry, self.reason)
                self.blocked[rx] = self.blocked[rx] or self.blocked[ry]

    def slice_param(self, name: str, dim: int, ids: Tensor) -> None:
        """Slice the model tensor ``name`` along ``dim`` with the classes ``ids`` (one decision for every use)."""
        before = self.params.get(name)
        if before is None:
            self.params[name] = (dim, ids)
        elif before[0] == dim and before[1].numel() == ids.numel():
            self.union(before[1], ids)
        else:
            self.reason = f"model tensor {name!r} is read along different channel dims"
            self.block(torch.cat([before[1], ids]))

    def removed(self, ids: Tensor) -> Tensor:
        """``[C]`` bool: the channels whose class is removed (not blocked)."""
        flat = [i >= 0 and not self.blocked[self.find(i)] for i in ids.flatten().tolist()]
        return torch.tensor(flat, dtype=torch.bool).reshape(ids.shape)

    def joined(self, ids: Tensor) -> None:
        """A channel view's grid of classes joined back into one channel dim, in the order ``ids``:
        a shuffle's grid (joined in its transposed order) keeps that; any other order couples."""
        for k, (grid, where, shuffled) in enumerate(self.shuffles):
            if shuffled is not False and torch.equal(ids.sort().values, grid.flatten().sort().values):
                self.shuffles[k] = (grid, where, torch.equal(ids, grid.T.flatten()))

    def close_shuffles(self) -> None:
        """Decide the channel views once every op is traced: a grid only ever joined back by a
        channel shuffle (``view(n, g, C // g, ...)``, ``transpose(1, 2)``, ``view(n, C, ...)``)
        asks its groups to interleave; any other use (or none) joins channel ``j`` of each group."""
        for grid, where, shuffled in self.shuffles:
            if shuffled is True:
                self.interleaved.append((
                    f"interleaved groups: the channel shuffle at {where} needs each of its {grid.shape[0]} groups "
                    "to keep as many channels, the r-th kept channel of each group in the groups' order (the "
                    "compact model's view cuts its fewer channels into groups of one size); channels were kept "
                    "back to align them", grid))
            else:
                for row in grid[1:]:
                    self.union(grid[0], row)
        self.shuffles = []



@attrs.define
class Call:
    """A call of a module from the replacement table (the first call, for reused modules)."""

    node: fx.Node
    kind: str
    tin: Track | None
    tout: Track | None
    c_in: int
    c_out: int
    cd_in: int
    cd_out: int
    depthwise: bool = False



def _binary(tree: Any) -> Any:
    return optree.tree_map(lambda v: (v != 0).float() if _is_tensor(v) else v, tree)



class Liveness:
    """``varies`` and ``used`` indicators (float 0/1, the shape of each node's value).

    Attributes:
        values: node -> value in the reference run (tensors, tuples of tensors, python values).
        varies: node -> where the value depends on the model's input.
        used: node -> where the value can change the model's output.
        kinds: node -> op kind (see :func:`kind_of`).
        prune_norms: whether LayerNorm / GroupNorm modules pass channels on one by one (their
            statistics then leave out the removed channels; see :func:`analyse`).
    """

    def __init__(self, values: dict, varies: dict, used: dict, kinds: dict, prune_norms: bool = False) -> None:
        self.values, self.varies, self.used, self.kinds = values, varies, used, kinds
        self.prune_norms = prune_norms

    def dead(self, node: fx.Node, dim: int) -> Tensor:
        """``[C]`` bool: channels of ``node`` along ``dim`` that are constant or unused everywhere."""
        live = (self.varies[node] * self.used[node]) != 0
        dims = [d for d in range(live.dim()) if d != dim % live.dim()]
        return ~live.any(dim=dims) if dims else ~live



def _tensors_only(fn: Callable[..., Any]) -> Callable[..., Any]:
    """``fn`` with every non-tensor leaf of its output (the None of ``MultiheadAttention``'s
    ``(out, None)`` when ``need_weights=False``) a 0-dim zero: ``vjp`` takes tensor outputs only."""

    def wrapped(*xs: Tensor) -> Any:
        device = next((v.device for v in optree.tree_leaves(xs) if _is_tensor(v)), None)
        return optree.tree_map(lambda v: v if _is_tensor(v) else torch.zeros((), device=device), fn(*xs),
                               none_is_leaf=True)

    return wrapped


def liveness(
    gm: fx.GraphModule, values: dict[fx.Node, Any], extra: Mapping[type[nn.Module], Replacement] | None = None,
    *, prune_norms: bool = False,
) -> Liveness:
    """Run the forward (varies) and backward (used) passes over a graph and its reference values.

    With ``prune_norms``, a LayerNorm (over one dim) or GroupNorm module maps each channel to
    itself, as BatchNorm does, instead of to its whole normalised group.

    Args:
        gm: a graph from :func:`~purecompress.graph`; its modules hold the weights
            (masked) whose zeros are structural.
        values: every node's value on the example inputs.
        extra: extra replacement-table entries (they give the kinds of custom modules).
        prune_norms: the norms' channel map described above.
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
        norm = _prunable_norm(node, modules, kind) if prune_norms else None
        if norm is not None:
            fn, inputs = _norm_channels(norm, values[node].shape), _data_inputs(node, values)[:1]
        elif prune_norms and _functional_norm(node):
            affine = _norm_affine(node)
            gamma = (values[affine[0]] != 0).float() if affine and node.args[2:3] == (affine[0],) else 1.0
            fn, inputs = (lambda x, g=gamma: x * g), _data_inputs(node, values)[:1]
        else:
            fn, inputs = _structural(node, kind, modules, values, varies)
        inputs = [n for n in inputs if n in varies]
        with torch.no_grad():
            if inputs:
                out, pullback = torch.func.vjp(_tensors_only(fn), *(varies[n] for n in inputs))
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
    return Liveness(values, varies, used, kinds, prune_norms)


def _own_forward(module: nn.Module) -> bool:
    """Whether a norm subclass replaces its torch base's forward (``LayerNorm2d`` permutes inside it)."""
    base = next((c for c in type(module).__mro__ if c.__module__.startswith("torch.nn")), nn.Module)
    return type(module).forward is not getattr(base, "forward", None)


def _prunable_norm(node: fx.Node, modules: Mapping[str, nn.Module], kind: str) -> nn.Module | None:
    """The LayerNorm (over its last dim only) or GroupNorm module ``node`` calls, else None.

    Subclasses with a forward of their own (timm's and torchvision's ``LayerNorm2d`` permute
    inside it) are not known to normalise the dim their parameters suggest: None.
    """
    if node.op != "call_module" or kind not in ("layernorm", "groupnorm"):
        return None
    module = modules[str(node.target)]
    if _own_forward(module):
        return None
    if isinstance(module, nn.GroupNorm) or (isinstance(module, nn.LayerNorm) and len(module.normalized_shape) == 1):
        return module
    return None


def _functional_norm(node: fx.Node) -> bool:
    """Whether ``node`` is ``F.layer_norm`` over the last dim only (a traced ``LayerNorm2d``'s body),
    its weight and bias (if any) read from the model."""
    if node.op != "call_function" or op_name(node) != "layer_norm":
        return False
    shape = node.args[1] if len(node.args) > 1 else node.kwargs.get("normalized_shape")
    affine = [*node.args[2:4], node.kwargs.get("weight"), node.kwargs.get("bias")]
    nodes = [a for a in affine if isinstance(a, fx.Node)]
    return isinstance(shape, (tuple, list)) and len(shape) == 1 and all(a.op == "get_attr" for a in nodes)


def _norm_affine(node: fx.Node) -> list[fx.Node]:
    return [a for a in (*node.args[2:4], node.kwargs.get("weight"), node.kwargs.get("bias")) if isinstance(a, fx.Node)]


def _norm_owner(node: fx.Node) -> str | None:
    """The module holding a functional norm's weight (``'features.0.1'``), when :func:`_functional_norm`."""
    affine = _norm_affine(node) if _functional_norm(node) else []
    return str(affine[0].target).rpartition(".")[0] if affine else None


def _norm_channels(module: nn.Module, shape: torch.Size) -> Callable[[Tensor], Tensor]:
    """A norm that maps each channel to itself (times ``weight != 0``): dim 1 for GroupNorm, -1 for LayerNorm."""
    weight = getattr(module, "weight", None)
    if weight is None:
        return lambda x: x
    gamma = _gamma(module, shape) if isinstance(module, nn.GroupNorm) else (weight.detach() != 0).float()
    return lambda x: x * gamma



def _tracks_in(arg: Any, tracks: Mapping[fx.Node, Any]) -> list[Track]:
    found: list[Track] = []

    def visit(n: fx.Node) -> None:
        t = tracks.get(n)
        stack = [t]
        while stack:
            x = stack.pop()
            if isinstance(x, Track):
                found.append(x)
            elif isinstance(x, (tuple, list)):
                stack.extend(x)

    fx.node.map_arg(arg, visit)
    return found



_LITERAL_SHAPE_OPS = {"view", "reshape", "unflatten", "expand", "repeat", "Unflatten"}



def _literals(args: Any) -> set[int]:
    out: set[int] = set()
    stack = [args]
    while stack:
        x = stack.pop()
        if isinstance(x, (tuple, list)):
            stack.extend(x)
        elif isinstance(x, dict):
            stack.extend(x.values())
        elif isinstance(x, int) and not isinstance(x, bool):
            out.add(x)
    return out



def _follow(result: Tensor, track: Track, node: fx.Node, *, pieces: bool = False) -> Track | None:
    """Where the channel indices went in ``result`` (None: not traceable in order). ``pieces``: a
    split of the channels into contiguous pieces is followed too (inside a :data:`COMPOSITES` layer,
    which stores its split sizes and has them set again after shrinking)."""
    varying = [
        d for d in range(result.dim()) if result.shape[d] > 1 and not bool((result == result.narrow(d, 0, 1)).all())
    ]
    if len(varying) != 1:
        return None
    d = varying[0]
    index = [0] * result.dim()
    index[d] = slice(None)
    vals = result[tuple(index)]
    if not bool((vals == vals.round()).all()):
        return None
    vals = vals.long()
    if track.ids.dim() > 1:
        return None  # a shuffle's channels: see _reorder
    if pieces and vals.min() >= 0 and bool((vals[1:] == vals[:-1] + 1).all()):
        return Track(d, track.ids[vals])
    counts = torch.bincount(vals, minlength=track.ids.numel()) if vals.min() >= 0 else None
    if counts is None or counts.numel() != track.ids.numel() or not bool((counts == counts[0]).all()):
        return None
    if not bool((vals[1:] >= vals[:-1]).all()):
        return None
    literals = (_literals(node.args[1:]) | _literals(node.kwargs)) - node.meta.get(SIZE_ARGS, frozenset())
    if op_name(node) in _LITERAL_SHAPE_OPS and result.shape[d] in literals:
        return None
    return Track(d, track.ids[vals])



_SHAPE_VIEWS = {"view", "reshape"}
_REORDERS = {"view", "reshape", "flatten", "transpose", "permute", "movedim", "swapaxes", "contiguous"}


def _shape_arg(node: fx.Node, dim: int) -> Any:
    """The size ``view`` / ``reshape`` is given for output dim ``dim`` (an int, or a node when computed)."""
    sizes = list(node.args[1:])
    if len(sizes) == 1 and isinstance(sizes[0], (tuple, list)):
        sizes = list(sizes[0])
    return sizes[dim] if dim < len(sizes) else None


def _fixed(node: fx.Node, dim: int) -> bool | None:
    """Whether the forward writes the size of output dim ``dim`` as a literal (True), computes it
    from a tensor's size (False), or it is not known (None)."""
    arg = _shape_arg(node, dim)
    if isinstance(arg, fx.Node) or arg == -1:
        return False
    if isinstance(arg, int) and not isinstance(arg, bool):
        return arg not in node.meta.get(SIZE_ARGS, frozenset())
    return None


def _reorder(result: Tensor, track: Track, node: fx.Node, classes: Classes) -> Track | None:
    """A channel shuffle, step by step: ``view(n, g, C // g, ...)`` cuts the channel dim in two,
    ``transpose`` swaps the two, ``view(n, C, ...)`` joins them (None: not such a step).

    The compact model repeats the views on its fewer channels, so where the group count ``g`` is
    written in the forward every group must keep as many channels: a shuffle's groups (the grid
    joined back transposed) must interleave (:func:`_interleave`), any other grid's keep the same
    channels (channel ``j`` of each group is one class; always so with ``classes.couple_shuffles``);
    where the group size is written, whole groups go (a group is one class).
    """
    name = op_name(node)
    varying = [d for d in range(result.dim())
               if result.shape[d] > 1 and not bool((result == result.narrow(d, 0, 1)).all())]
    if name not in _REORDERS or not varying or varying != list(range(varying[0], varying[0] + len(varying))):
        return None
    index = [slice(None) if d in varying else 0 for d in range(result.dim())]
    vals = result[tuple(index)]
    n = track.ids.numel()
    if not bool((vals == vals.round()).all()) or vals.numel() != n:
        return None
    vals = vals.long()
    if not torch.equal(vals.flatten().sort().values, torch.arange(n)):
        return None  # not a permutation of the channels
    ids = track.ids.flatten()[vals]
    if track.ids.dim() == 1:  # the channel dim cut in two
        if name not in _SHAPE_VIEWS or len(varying) != 2 or not torch.equal(vals.flatten(), torch.arange(n)):
            return None
        fixed = (_fixed(node, varying[0]), _fixed(node, varying[1]))
        where = f"the channel view at node {node.name!r} ({tuple(ids.shape)})"
        if fixed == (True, False):  # g groups written in the forward: each keeps as many (close_shuffles)
            if classes.couple_shuffles:
                for row in ids[1:]:
                    classes.union(ids[0], row)
            else:
                classes.shuffles.append((ids, where, None))
        elif fixed == (False, True):  # groups of a written size: whole groups go
            for col in ids.T[1:]:
                classes.union(ids[:, 0], col)
        else:
            classes.reason = (f"blocked by {where}: which of its two sizes the forward writes as a literal (kept "
                              "in the compact model) and which it computes from the input is not known")
            return None
    elif len(varying) == 1 and name in _LITERAL_SHAPE_OPS and _fixed(node, varying[0]):
        classes.reason = (f"blocked by op {name!r} at node {node.name!r}: it joins the channel dims into "
                          f"{ids.numel()} channels written as a literal in the forward")
        return None
    elif len(varying) == 1:
        classes.joined(ids)
    return Track(varying[0], ids)


def _split_size(node: fx.Node) -> Any:
    if len(node.args) > 1:
        return node.args[1]
    return next((node.kwargs[k] for k in ("split_size_or_sections", "split_size", "chunks", "sections")
                 if k in node.kwargs), None)


def _pieces(node: fx.Node, outs: list[Track], track: Track, classes: Classes) -> bool:
    """Whether the compact model's split (or chunk) of fewer channels gives the same pieces; the
    rule for each kind of size (registered with ``classes``). ``outs``: the pieces' tracks."""
    if all(t.ids.numel() == track.ids.numel() for t in outs):
        return True  # not a split of the channels
    name, size = op_name(node), _split_size(node)
    where = f"{name} at node {node.name!r}"
    composite = _in_composite(node)
    if name == "chunk" or (name == "split" and isinstance(size, int) and composite):
        sizes = [t.ids.numel() for t in outs]
        if len(set(sizes)) != 1:
            classes.reason = (f"blocked by {where}: it cuts the channels into pieces of different sizes {sizes}, "
                              "which the compact model's fewer channels would not keep")
            return False
        why = "the composite layer's stored size is set again" if composite else "the forward computes them"
        classes.balanced.append((f"balanced pieces: {where} cuts the channels into {len(outs)} pieces of one size "
                                 f"({why} from the kept channels); channels were kept back to balance them",
                                 tuple(t.ids for t in outs)))
        return True
    if name == "split" and composite:
        return True  # the composite layer stores the sizes and has them set again after shrinking
    if name == "split" and isinstance(size, int):
        classes.reason = (f"blocked by {where}: its size {size} is fixed in the forward, so every piece but the "
                          "last keeps all its channels")
        for t in outs[:-1]:
            classes.block(t.ids)
        return True
    classes.reason = (f"blocked by {where}: its sizes {size} are fixed in the forward (only a COMPOSITES layer has "
                      "them set again)")
    return False


def _merge(node: fx.Node, value: Tensor, values: Mapping, tracks: Mapping, classes: Classes,
           slice_params: bool = False) -> Track | None:
    r = value.dim()
    tensors = [n for n in node.all_input_nodes if isinstance(values[n], Tensor)]
    if op_name(node) in FIRST_ONLY:
        tensors = tensors[:1]
    tracked = [(n, tracks[n]) for n in tensors if isinstance(tracks.get(n), Track)]
    if not tracked:
        return None
    cds = {t.cd + r - values[n].dim() for n, t in tracked}
    sizes = {values[n].shape[t.cd] for n, t in tracked}
    if len(cds) != 1 or sizes != {value.shape[next(iter(cds))]} or len({tuple(t.ids.shape) for _, t in tracked}) != 1:
        for _, t in tracked:
            classes.block(t.ids)
        return None
    cd = cds.pop()
    out = Track(cd, tracked[0][1].ids.clone())
    for _, t in tracked[1:]:
        classes.union(out.ids, t.ids)
    for n in tensors:
        if isinstance(tracks.get(n), Track):
            continue
        pos = cd - (r - values[n].dim())
        if slice_params and n.op == "get_attr" and pos >= 0 and values[n].shape[pos] == value.shape[cd]:
            classes.slice_param(str(n.target), pos, out.ids)  # a layer scale: sliced with the channels
            continue
        if pos >= 0 and values[n].shape[pos] != 1:  # a full-channel operand that has no class
            classes.reason += f" (its operand {n.name!r} spans the channels and comes from no layer shrink slices)"
            classes.block(out.ids)
    return out



def _cat(node: fx.Node, value: Tensor, values: Mapping, tracks: Mapping, classes: Classes) -> Track | None:
    parts = node.args[0] if node.args else node.kwargs["tensors"]
    dim = node.args[1] if len(node.args) > 1 else node.kwargs.get("dim", 0)
    dim %= value.dim()
    ts = [tracks.get(n) if isinstance(tracks.get(n), Track) else None for n in parts]
    if any(t is not None and t.ids.dim() > 1 for t in ts):
        return _block_all(node, tracks, classes)
    if all(t is not None and t.cd == dim for t in ts if t is not None) and any(t is not None for t in ts):
        ids = [t.ids if t is not None else torch.full((values[n].shape[dim],), -1) for t, n in zip(ts, parts)]
        return Track(dim, torch.cat(ids))
    return _merge(node, value, values, tracks, classes) if None not in ts else _block_all(node, tracks, classes)



def _block_all(node: fx.Node, tracks: Mapping, classes: Classes) -> None:
    for t in _tracks_in((node.args, node.kwargs), tracks):
        classes.block(t.ids)
    return None



def _index(node: fx.Node, modules: Mapping, live: Liveness, tracks: Mapping, classes: Classes) -> Any:
    values = live.values
    first = node.args[0] if node.args else None
    if isinstance(first, fx.Node) and isinstance(values[first], (tuple, list)):  # getitem of a split
        t = tracks.get(first)
        return t[node.args[1]] if isinstance(t, (tuple, list)) and isinstance(node.args[1], int) else None
    if op_name(node) in ("cat", "concat", "concatenate"):
        return _cat(node, values[node], values, tracks, classes)
    track = tracks.get(first) if isinstance(first, fx.Node) else None
    if not isinstance(track, Track):
        return _block_all(node, tracks, classes)
    x = values[first]
    k = track.ids.dim()
    if tuple(x.shape[track.cd: track.cd + k]) != tuple(track.ids.shape):
        classes.block(track.ids)
        return None
    view = [1] * x.dim()
    view[track.cd: track.cd + k] = track.ids.shape
    probe = torch.arange(track.ids.numel(), dtype=torch.float32, device=x.device).reshape(view)
    probe = probe.expand(x.shape).contiguous()
    args, kwargs = _substitute(node, values, {first: probe})
    with torch.no_grad():
        result = _mean_dims(node, args, kwargs) if live.kinds[node] == "reduce" else _call(node, modules, args, kwargs)
    result = optree.tree_map(lambda r: r.cpu() if isinstance(r, Tensor) else r, result)
    name = op_name(node)
    split = name in ("split", "chunk")
    results = result if isinstance(result, (tuple, list)) else [result]
    outs = [
        (_follow(r, track, node, pieces=split) or _reorder(r, track, node, classes)) if isinstance(r, Tensor) else None
        for r in results
    ]
    if any(o is None for o in outs) or (split and not _pieces(node, outs, track, classes)):  # type: ignore[arg-type]
        if name == "getitem" and classes.reason.startswith("blocked by op"):
            classes.reason += (": it takes a part of the channels at bounds fixed in the forward, which the compact "
                               "model's fewer channels would not keep")
        classes.block(track.ids)
        return None
    return tuple(outs) if isinstance(result, (tuple, list)) else outs[0]



def _in_composite(node: fx.Node) -> bool:
    """Whether ``node`` runs in the forward of a :data:`COMPOSITES` layer."""
    stack = node.meta.get("nn_module_stack") or {}
    cls = next(reversed(stack.values()), ("", None))[1]  # the class: a graph module holds plain containers
    return isinstance(cls, type) and composite_of(cls) is not None


def _keep_dim(node: fx.Node, module: nn.Module | None, value: Tensor, track: Track) -> bool:
    """Whether a spatial / norm / softmax op leaves the channel dim ``track.cd`` alone."""
    kind_dims: list[int] = []
    name = op_name(node)
    ndim = value.dim()
    if isinstance(module, nn.LayerNorm):
        kind_dims = list(range(ndim - len(module.normalized_shape), ndim))
    elif isinstance(module, (nn.Softmax, nn.LogSoftmax, nn.Softmin)):
        kind_dims = [(module.dim if module.dim is not None else 1) % ndim]
    elif module is not None and hasattr(module, "padding") and "Pad" in type(module).__name__:
        kind_dims = list(range(ndim - len(module.padding) // 2, ndim))
    elif name == "pad":
        pad = node.args[1] if len(node.args) > 1 else node.kwargs["pad"]
        kind_dims = list(range(ndim - len(pad) // 2, ndim))
    elif name in ("softmax", "log_softmax", "softmin", "normalize"):
        dim = node.args[1] if len(node.args) > 1 else node.kwargs.get("dim", 1)
        kind_dims = [dim % ndim]
    elif module is None and name in ("layer_norm", "group_norm", "batch_norm", "instance_norm"):
        return False
    return track.cd not in kind_dims



def _blocked_by(node: fx.Node, kind: str, modules: Mapping[str, nn.Module]) -> str:
    """Why a channel class blocked at ``node`` stays: the op it meets."""
    if node.op == "output":
        return "its channels reach the model's output"
    what = f"{type(modules[str(node.target)]).__name__} {node.target!r}" if node.op == "call_module" \
        else f"op {op_name(node) or node.target!r}"
    if kind == "layernorm":
        return f"its channels meet a LayerNorm-like normalisation ({what} at node {node.name!r})"
    if kind == "unknown":
        return f"blocked by {what} at node {node.name!r}, whose channel flow is not known"
    if op_name(node) in ("split", "chunk", "tensor_split"):
        return (f"blocked by {what} at node {node.name!r}: its sizes are fixed in the forward (only a COMPOSITES "
                "layer has them set again)")
    return f"blocked by {what} at node {node.name!r}"


def trace_channels(
    gm: fx.GraphModule, live: Liveness, extra: Mapping[type[nn.Module], Replacement] | None = None, *,
    couple_shuffles: bool = False,
) -> tuple[Classes, dict[str, Call], list[tuple[fx.Node, int, Track | None]]]:
    """Tracks for every node; returns the classes, the table modules' calls and the consumers.

    Consumers are ``(input node, channel dim, track)`` for every producer layer input.
    ``couple_shuffles``: see :attr:`Classes.couple_shuffles`.
    """
    modules = dict(gm.named_modules())
    classes = Classes(couple_shuffles=couple_shuffles)
    tracks: dict[fx.Node, Any] = {}
    calls: dict[str, Call] = {}
    consumers: list[tuple[fx.Node, int, Track | None]] = []
    values = live.values
    for node in gm.graph.nodes:
        kind = live.kinds[node]
        value = values.get(node)
        classes.reason = _blocked_by(node, kind, modules)
        if node.op == "output":
            _block_all(node, tracks, classes)
            continue
        if node.op in ("placeholder", "get_attr") or node not in live.varies:
            continue
        module = modules[str(node.target)] if node.op == "call_module" else None
        entry = replacement_for(module, extra) if module is not None else None
        first = node.args[0] if node.args and isinstance(node.args[0], fx.Node) else None
        tin = tracks.get(first) if first is not None and isinstance(tracks.get(first), Track) else None
        if kind == "layernorm" and not (live.prune_norms and _prunable_norm(node, modules, kind) is not None):
            entry = None  # its statistics mix the channels: the layernorm branch below
        if entry is not None and isinstance(value, Tensor) and first is not None:
            x = values[first]
            cd_in, cd_out = entry.channel_dim % x.dim(), entry.channel_dim % value.dim()
            if tin is not None and (tin.cd != cd_in or tin.ids.dim() > 1):
                classes.block(tin.ids)
                tin = None
            depthwise = is_depthwise(module)
            if entry.kind == "producer":
                consumers.append((first, cd_in, tin))
                tout = tin if depthwise else Track(cd_out, classes.new(value.shape[cd_out]))
            else:
                tout = tin
            call = Call(node, entry.kind, tin, tout, x.shape[cd_in], value.shape[cd_out], cd_in, cd_out, depthwise)
            name = str(node.target)
            if name in calls:  # a reused module: one decision for all its calls
                for a, b in ((calls[name].tin, tin), (calls[name].tout, tout)):
                    if a is not None and b is not None:
                        classes.union(a.ids, b.ids)
                    elif (a is None) != (b is None):
                        classes.block((a or b).ids)
            else:
                calls[name] = call
            tracks[node] = tout
        elif kind == "elementwise":
            tracks[node] = (_merge(node, value, values, tracks, classes, live.prune_norms)
                            if isinstance(value, Tensor) else None)
        elif live.prune_norms and _functional_norm(node) and tin is not None and isinstance(value, Tensor) \
                and tin.cd == value.dim() - 1:
            tracks[node] = tin  # a traced LayerNorm2d's channels-last layer_norm: its weight and bias sliced
            for arg in _norm_affine(node):
                classes.slice_param(str(arg.target), 0, tin.ids)
                classes.norm_owners.add(str(arg.target).rpartition(".")[0])
        elif (
            kind in ("spatial", "layernorm", "softmax", "batchnorm", "instancenorm")
            and tin is not None
            and tin.ids.dim() == 1
            and isinstance(value, Tensor)
            and value.dim() == values[first].dim()
            and value.shape[tin.cd] == values[first].shape[tin.cd]
            and _keep_dim(node, module, value, tin)
        ):
            tracks[node] = tin
        elif kind in ("index", "reduce"):
            tracks[node] = _index(node, modules, live, tracks, classes)
        else:
            _block_all(node, tracks, classes)
    classes.close_shuffles()
    return classes, calls, consumers



#: A fold deviating by more than this (absolute, on the example inputs) is inexact.
EXACT_TOL = 1e-5



def _fold(
    module: nn.Module, x: Tensor, removed: Tensor, cd: int, cd_out: int, used: Tensor, keep_out: Tensor
) -> tuple[Tensor, float]:
    """Contribution of the removed input channels (as a bias) and its max deviation."""
    view = [1] * x.dim()
    view[cd] = -1
    xr = x * removed.reshape(view).to(device=x.device, dtype=x.dtype)
    if not bool(xr.any()):  # the removed channels are zero (pruned row, BN masked): nothing to fold
        return None, 0.0
    with torch.no_grad():
        contrib = module(xr) - module(torch.zeros_like(xr))
    first = contrib[0].movedim(cd_out - 1, 0)
    centre = first[(slice(None), *(s // 2 for s in first.shape[1:]))]
    shape = [1] * contrib.dim()
    shape[cd_out] = -1
    deviation = (contrib - centre.reshape(shape)).abs() * used * keep_out.reshape(shape).to(used.device)
    return centre.cpu(), float(deviation.max()) if deviation.numel() else 0.0



def _keep_inexact(classes: Classes, calls: Mapping[str, Call], fold_error: Mapping[str, float],
                  values: Mapping[fx.Node, Any]) -> bool:
    """Block the removed non-zero inputs of every layer whose fold is inexact; whether any were."""
    blocked = False
    for name, error in fold_error.items():
        call = calls[name]
        if error <= EXACT_TOL or call.tin is None:
            continue
        x = values[call.node.args[0]]
        nonzero = (x != 0).any(dim=[d for d in range(x.dim()) if d != call.cd_in]).cpu()
        removed = classes.removed(call.tin.ids)
        classes.reason = f"its constant cannot be folded exactly into {name!r} (deviation {error:.1e}; exact=True)"
        classes.block(call.tin.ids[removed & nonzero])
        blocked = blocked or bool((removed & nonzero).any())
    return blocked





def _grid(module: nn.Module, keep_in: Tensor, keep_out: Tensor) -> Tensor:
    """``[out, in/groups]`` keep grid of a producer's weight (rows: outputs, cols: inputs)."""
    if isinstance(module, nn.Linear):
        return keep_out[:, None] & keep_in[None, :]
    g = module.groups
    if isinstance(module, nn.modules.conv._ConvTransposeNd):
        c_out = keep_out.numel() // g
        cols = keep_out.reshape(g, c_out).repeat_interleave(keep_in.numel() // g, 0)
        return keep_in[:, None] & cols
    rows = keep_in.reshape(g, -1).repeat_interleave(keep_out.numel() // g, 0)
    return keep_out[:, None] & rows



def _and(a: Mask | None, b: Mask) -> Mask:
    if a is None:
        return b
    b = Mask(b.keep.to(a.keep.device), b.shape)
    try:
        return a & b
    except ValueError:  # grids that do not nest: combine at element granularity
        return Mask.from_dense(a.to_dense() * b.to_dense())



def _propagated(
    model: nn.Module, masks: Mapping[str, Mask], slices: Mapping[str, ChannelSlice], calls: Mapping[str, Any]
) -> Masks:
    out: Masks = dict(masks)
    for name, sl in slices.items():
        module = model.get_submodule(name)
        prefix = f"{name}." if name else ""
        keep_in = sl.keep_in
        if calls[name].kind == "producer":
            keep_out = sl.keep_out
            w = module.weight
            grid = _grid(module, keep_in, keep_out)
            new = {"weight": Mask(grid.reshape(*grid.shape, *([1] * (w.dim() - 2))), tuple(w.shape))}
            if getattr(module, "bias", None) is not None:
                new["bias"] = Mask(keep_out, tuple(module.bias.shape))
        else:
            new = {
                k: Mask(keep_in, tuple(p.shape))
                for k, p in module.named_parameters(recurse=False)
                if p.dim() == 1 and p.numel() == keep_in.numel()
            }
        for k, mask in new.items():
            if not bool(mask.keep.all()):
                out[prefix + k] = _and(out.get(prefix + k), mask)
    return out





def _check_masks(params: Mapping[str, Tensor], masks: Mapping[str, Mask], values: Mapping[str, Tensor]) -> None:
    """Masks (and replacement values) that fit the model's parameters, before any graph work."""
    unknown = sorted((set(masks) | set(values)) - set(params))
    if unknown:
        raise ShrinkError(f"masks or params for names that are not parameters or buffers of the model: {unknown}")
    for name, mask in masks.items():
        shape = tuple(params[name].shape)
        if not isinstance(mask, Mask):
            raise ShrinkError(f"the mask for {name!r} is a {type(mask).__name__}, not a purecompress Mask "
                              "(convert NNI's dicts of 0/1 tensors with masks_from_nni)")
        if not isinstance(mask.keep, Tensor) or mask.keep.dtype != torch.bool:
            raise ShrinkError(f"the mask for {name!r} must hold bools (True = kept), got "
                              f"{getattr(mask.keep, 'dtype', type(mask.keep).__name__)}")
        grid = tuple(mask.keep.shape)
        if mask.shape != shape or len(grid) != len(shape) or any(g < 1 or n % g for n, g in zip(shape, grid)):
            raise ShrinkError(f"the mask for {name!r} (keep grid {grid}, shape {mask.shape}) does not fit the "
                              f"parameter's shape {shape}")
    for name, value in values.items():
        if tuple(value.shape) != tuple(params[name].shape):
            raise ShrinkError(f"the value given for {name!r} has shape {tuple(value.shape)}, the model's is "
                              f"{tuple(params[name].shape)}")



def masked_copy(model: nn.Module, masks: Mapping[str, Mask], values: Mapping[str, Tensor] | None) -> nn.Module:
    """A copy of ``model`` in eval mode holding ``values`` (default: its own), ``masks`` applied."""
    work = copy.deepcopy(model).eval()
    params = params_of(work)
    _check_masks(params, masks, values or {})
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



class ShrinkError(ValueError):
    """The masks cannot be turned into a compact model."""



class EmptyLayerError(ShrinkError):
    """Every output channel of a layer would be removed."""



class UnbalancedGroupsError(ShrinkError):
    """A grouped conv would keep different channel counts in its groups."""



@attrs.frozen
class ChannelPlan:
    """What shrinking removes.

    Attributes:
        slices: module name -> :class:`ChannelSlice` for every module that changes.
        fold_error: producer name -> max abs deviation of the folded constants over the output
            elements that are used (0.0: the fold is exact).
        masks, params, inexact: what :func:`propagate` returns (see :class:`Propagated`).
        norms: LayerNorm / GroupNorm module name -> what happened to its channels: removed
            (``prune_norms``; its statistics change, the compact model differs from the masked
            one) or kept although the masks prune them, and why.
        dense: every masked layer (its mask removes output channels) that keeps some of those
            channels, with the reason (the op that blocks them, a LayerNorm they meet,
            unbalanced groups, an inexact constant with ``exact=True``, no replacement for its
            class, ...).
        sliced: (``prune_norms``) model tensors read by the graph outside a layer call that lose
            channels: name -> ``(dim, keep)``, ``keep`` the ``[C]`` bool of what stays along
            ``dim`` (a layer scale ``[C, 1, 1]`` multiplied into the removed channels, a traced
            ``LayerNorm2d``'s weight and bias).
    """

    slices: dict[str, ChannelSlice]
    fold_error: dict[str, float]
    masks: Masks
    params: dict[str, Tensor]
    inexact: dict[str, float]
    norms: dict[str, str]
    dense: dict[str, str] = attrs.field(factory=dict)
    sliced: dict[str, tuple[int, Tensor]] = attrs.field(factory=dict)



@attrs.frozen
class Analysis:
    """A plan with what shrinking needs next: ``masked`` (a private copy of the model with the
    given masks applied, eval mode), its ``output`` on the example inputs, those inputs as
    ``(args, kwargs)`` to call ``forward`` with (as given: defaults not filled in), and
    ``sizes``: per called module, the per-sample positions its weights are applied at (output
    spatial size, summed over calls) and the per-sample input size (for norm layers)."""

    plan: ChannelPlan
    masked: nn.Module
    output: Any
    inputs: tuple[tuple[Any, ...], dict[str, Any]]
    sizes: dict[str, tuple[int, int]]



def _keep(classes: Classes, track: Track | None, size: int) -> Tensor:
    return torch.ones(size, dtype=torch.bool) if track is None else ~classes.removed(track.ids)



def _balanced(keep_in: Tensor, keep_out: Tensor, groups: int) -> bool:
    counts = {(int(i.sum()), int(o.sum())) for i, o in zip(keep_in.chunk(groups), keep_out.chunk(groups))}
    counts.discard((0, 0))
    return len(counts) == 1 and all(i > 0 and o > 0 for i, o in counts)



def _whole_groups(keep: Tensor, groups: int) -> bool:
    chunks = keep.reshape(groups, -1)
    return bool((chunks.all(1) | ~chunks.any(1)).all())



def channel_plan(
    model: nn.Module,
    masks: Mapping[str, Mask],
    example_inputs: Any,
    *,
    leaf_modules: Iterable[str | type[nn.Module]] = (),
    replacements: Mapping[type[nn.Module], Replacement] | None = None,
    strict: bool = False,
    exact: bool = False,
    prune_norms: bool = False,
    params: Mapping[str, Tensor] | None = None,
    capture_method: Method = "auto",
) -> ChannelPlan:
    """Decide which channels go (the rule in the module docstring). The model is not modified.

    Args:
        model: the dense model.
        masks: core masks keyed by parameter name (any granularity; channel masks shrink).
        example_inputs: a tensor, tuple or dict of inputs, e.g. ``[2, 3, 32, 32]``.
        leaf_modules: passed to :func:`~purecompress.graph`.
        replacements: extra replacement-table entries (custom channel-wise or producer modules).
        strict: raise :class:`UnbalancedGroupsError` for a grouped conv whose groups keep
            different channel counts, instead of keeping channels back until every group that
            keeps any keeps as many as the fullest (NNI 2.10's rule).
        exact: keep the channels whose constant cannot be folded exactly (behind zero-padded
            convs), so that the compact model equals the masked one everywhere.
        prune_norms: remove channels through LayerNorm (over its last dim: ``normalized_shape``,
            weight and bias sliced) and GroupNorm (the same count from every group that keeps
            any). That changes their statistics, so the compact model is *not* the masked one
            there; ``norms`` names them. Without it their channels are kept (whole GroupNorm
            groups still go, exactly) and ``norms`` names each norm that kept pruned channels.
        params: parameter (and buffer) values to use instead of the model's own, e.g. the
            fine-tuned :data:`~purecompress.Params` of a functional training loop.
        capture_method: ``method`` of :func:`~purecompress.graph.capture` (``"auto"``: torch.fx,
            or a recording of the run when fx cannot trace the forward).

    Raises:
        EmptyLayerError: a layer would lose all its output channels.
    """
    return analyse(model, masks, example_inputs, leaf_modules=leaf_modules, replacements=replacements,
                   strict=strict, exact=exact, prune_norms=prune_norms, params=params,
                   capture_method=capture_method).plan



def analyse(
    model: nn.Module,
    masks: Mapping[str, Mask],
    example_inputs: Any,
    *,
    leaf_modules: Iterable[str | type[nn.Module]] = (),
    replacements: Mapping[type[nn.Module], Replacement] | None = None,
    strict: bool = False,
    exact: bool = False,
    prune_norms: bool = False,
    params: Mapping[str, Tensor] | None = None,
    capture_method: Method = "auto",
) -> Analysis:
    """:func:`channel_plan` with the masked copy, its output and the bound inputs."""
    masked = masked_copy(model, masks, params)
    gm = capture(masked, example_inputs, leaf_modules=leaf_modules, method=capture_method)
    bound = bind_inputs(masked, example_inputs)
    given = (tuple(bound.args), dict(bound.kwargs))  # the forward is called with these, as given
    bound.apply_defaults()
    recorder = _Recorder(gm)
    with torch.no_grad(), torch.random.fork_rng(devices=[]):
        output = recorder.run(*bound.args, *bound.kwargs.values())
    live = liveness(gm, recorder.values, replacements, prune_norms=prune_norms)
    classes, calls, consumers = trace_channels(gm, live, replacements)
    for x, cd, track in consumers:  # the conflict rule: dead at every consumer
        classes.reason = (f"its channels are live at node {x.name!r}: another mask keeps channels they meet "
                          "(the masks of layers whose channels join do not agree)")
        if track is not None:
            classes.block(track.ids[~live.dead(x, cd)])
    modules = dict(gm.named_modules())
    _keep_constant_fed(classes, calls, live, masks, modules)
    while True:
        _resolve_groups(classes, calls, modules, strict, prune_norms)
        slices, fold_error = _slices(classes, calls, modules, recorder.values, live)
        # an inexact fold that propagate's params could not hold either: keep its channels in both
        _, homeless = _fold_targets(slices, calls, modules, masks)
        blocking = fold_error if exact else {n: fold_error[n] for n in homeless}
        if not _keep_inexact(classes, calls, blocking, recorder.values):
            break
    shrunk = dict(slices), dict(fold_error)  # the compact model's plan; the propagation may keep more
    sliced = _param_slices(classes)
    dense = _dense(model, masks, classes, calls, replacements)  # before the propagation blocks more
    norms = _norm_notes(gm, slices, live, _reshaped_norms(classes, calls, modules), sliced)
    prop_masks, prop_params, prop_error = _propagation(model, masks, params, classes, calls, modules,
                                                       recorder.values, live, strict, slices, fold_error)
    prop_masks.update(_param_masks(_param_slices(classes), prop_masks, params_of(model)))
    plan = ChannelPlan(*shrunk, prop_masks, prop_params,
                       {k: v for k, v in prop_error.items() if v > EXACT_TOL}, norms, dense, sliced)
    return Analysis(plan, masked, output, given, _sizes(gm, recorder.values))


def _param_slices(classes: Classes) -> dict[str, tuple[int, Tensor]]:
    out = {}
    for name, (dim, ids) in classes.params.items():
        keep = ~classes.removed(ids)
        if not bool(keep.all()):
            out[name] = (dim, keep)
    return out


def _param_masks(sliced: Mapping[str, tuple[int, Tensor]], masks: Mapping[str, Mask],
                 params: Mapping[str, Tensor]) -> Masks:
    """The masks zeroing the sliced model tensors' removed channels (for :func:`propagate`)."""
    out: Masks = {}
    for name, (dim, keep) in sliced.items():
        shape = tuple(params[name].shape)
        view = [1] * len(shape)
        view[dim] = -1
        out[name] = _and(masks.get(name), Mask(keep.reshape(view), shape))
    return out


FoldTarget = tuple[str, float, int]


def _cat_offset(node: fx.Node, part: fx.Node) -> int | None:
    """The channel offset of ``part`` in ``node`` when ``node`` concatenates along dim 1, else None."""
    if node.op != "call_function" or node.target is not torch.cat:
        return None
    parts = node.args[0] if node.args else node.kwargs.get("tensors")
    dim = node.args[1] if len(node.args) > 1 else node.kwargs.get("dim", 0)
    if dim != 1 or not isinstance(parts, (list, tuple)) or list(parts).count(part) != 1:
        return None
    offset = 0
    for p in parts:
        if p is part:
            return offset
        meta = p.meta.get("tensor_meta") if isinstance(p, fx.Node) else None
        if meta is None or not hasattr(meta, "shape"):
            return None
        offset += int(meta.shape[1])
    return None


def _fold_target(name: str, call: Call, modules: Mapping[str, nn.Module], sl: ChannelSlice,
                 masks: Mapping[str, Mask]) -> FoldTarget | None:
    """Where the dense model can hold a producer's folded constant: ``(param name, sign, offset)``.

    Its own bias (when no mask zeroes it at a kept output), else the running mean of a BatchNorm
    that alone reads its output (``bn(y + d) == bn'(y)`` with ``running_mean' = running_mean - d``,
    in eval mode; in training the batch mean removes ``d`` from both), directly or through a
    channel concatenation that only the BatchNorm reads (timm's ``MixedConv2d``: the producer's
    part of the running mean, from ``offset``). None: nowhere.
    """
    prefix = f"{name}." if name else ""
    module = modules[name]
    keep_out = sl.keep_out if sl.keep_out is not None else torch.ones(call.c_out, dtype=torch.bool)
    if getattr(module, "bias", None) is not None:
        mask = masks.get(prefix + "bias")
        if mask is None or bool(mask.to_dense().bool().cpu()[keep_out].all()):
            return prefix + "bias", 1.0, 0
        return None
    users = list(call.node.users)
    if len(users) != 1 or call.cd_out != 1:
        return None
    reader, offset = users[0], 0
    if reader.op == "call_function":
        cat_offset = _cat_offset(reader, call.node)
        if cat_offset is None or len(reader.users) != 1:
            return None
        reader, offset = next(iter(reader.users)), cat_offset
    if reader.op != "call_module":
        return None
    bn = modules[str(reader.target)]
    if isinstance(bn, nn.modules.batchnorm._BatchNorm) and bn.running_mean is not None:
        return f"{reader.target}.running_mean", -1.0, offset
    return None


def _fold_targets(slices: Mapping[str, ChannelSlice], calls: Mapping[str, Call], modules: Mapping[str, nn.Module],
                  masks: Mapping[str, Mask]) -> tuple[dict[str, FoldTarget], list[str]]:
    """Per producer with a folded constant, its place in the dense model's params; and the
    producers that have none."""
    targets: dict[str, FoldTarget] = {}
    homeless: list[str] = []
    for name, sl in slices.items():
        if sl.bias_delta is None or not bool(sl.bias_delta.ne(0).any()):
            continue
        target = _fold_target(name, calls[name], modules, sl, masks)
        if target is None:
            homeless.append(name)
        else:
            targets[name] = target
    return targets, homeless


def _propagation(
    model: nn.Module, masks: Mapping[str, Mask], params: Mapping[str, Tensor] | None, classes: Classes,
    calls: Mapping[str, Call], modules: Mapping[str, nn.Module], values: Mapping[fx.Node, Any], live: Liveness,
    strict: bool, slices: dict[str, ChannelSlice], fold_error: dict[str, float],
) -> tuple[Masks, dict[str, Tensor], dict[str, float]]:
    """The masks and params of :func:`propagate`: the removed channels zeroed, their constants
    moved into the dense model's biases / BatchNorm running means. A constant with no such place
    (a bias-free consumer not followed by a BatchNorm) keeps its channels in the masks (the
    compact model folds it into a new bias: :func:`analyse` already kept those whose fold is
    inexact). Blocks ``classes`` further."""
    while True:
        targets, homeless = _fold_targets(slices, calls, modules, masks)
        # _keep_inexact blocks the removed non-zero inputs of these
        if not homeless or not _keep_inexact(classes, calls, dict.fromkeys(homeless, math.inf), values):
            break
        _resolve_groups(classes, calls, modules, strict, live.prune_norms)
        slices, fold_error = _slices(classes, calls, modules, values, live)
    out = {**params_of(model), **(params or {})}
    for name, (key, sign, offset) in targets.items():
        delta = slices[name].bias_delta
        assert delta is not None
        moved = out[key].clone()
        moved[offset: offset + delta.numel()] += sign * delta.to(moved)
        out[key] = moved
    return _propagated(model, masks, slices, calls), out, fold_error



def _keep_constant_fed(classes: Classes, calls: Mapping[str, Call], live: Liveness, masks: Mapping[str, Mask],
                       modules: Mapping[str, nn.Module]) -> None:
    """A layer fed by constants only (swin v2's position-bias MLP on a buffer) has every output
    channel constant, so the liveness rule would remove them all: keep the ones its mask keeps."""
    for name, call in calls.items():
        varies = live.varies.get(call.node.args[0])
        if call.kind != "producer" or call.depthwise or call.tout is None or not _is_tensor(varies) \
                or bool(varies.any()) or not bool(classes.removed(call.tout.ids).all()):
            continue
        mask = masks.get(f"{name}.weight")
        asked = _removed_rows(modules[name], mask) if mask is not None else torch.zeros(call.c_out, dtype=torch.bool)
        classes.reason = f"{name!r} is fed by constants only: it keeps the channels its mask keeps"
        classes.block(call.tout.ids[~asked])


def _removed_rows(module: nn.Module, mask: Mask) -> Tensor:
    """``[C_out]`` bool: the output channels ``mask`` (on ``module.weight``) zeroes entirely."""
    if isinstance(module, nn.modules.conv._ConvTransposeNd):  # weight [C_in, C_out / groups, ...]
        return ~channel_keep(mask, 1).repeat(module.groups)
    return ~channel_keep(mask, 0)


def _dense(model: nn.Module, masks: Mapping[str, Mask], classes: Classes, calls: Mapping[str, Call],
           extra: Mapping[type[nn.Module], Replacement] | None) -> dict[str, str]:
    """The masked layers that keep output channels their masks remove, and why."""
    dense: dict[str, str] = {}
    for key, mask in masks.items():
        name, _, leaf = key.rpartition(".")
        module = model.get_submodule(name)
        entry = replacement_for(module, extra)
        if leaf != "weight" or mask.keep.dim() < 2 or entry is not None and entry.kind != "producer":
            continue
        asked = _removed_rows(module, mask)
        call = calls.get(name)
        if not bool(asked.any()):
            continue
        if entry is None:
            dense[name] = f"no replacement for its class {type(module).__name__}"
        elif call is None:
            dense[name] = (f"no call of {type(module).__name__} {name!r} in the graph: its weight is read by the "
                           "ops of an enclosing module's forward")
        elif call.tout is None:
            dense[name] = (f"a depthwise conv, its channels are its input's, and the channels of its input (node "
                           f"{call.node.args[0].name!r}) are not followed: an op before it blocks them")
        if name in dense or call is None or call.tout is None:
            continue
        left = (asked & ~classes.removed(call.tout.ids)).nonzero().flatten()
        if left.numel():
            why = classes.why(int(call.tout.ids[left[0]]))
            dense[name] = f"{left.numel()} of {int(asked.sum())} removed channels kept: " + (
                why or "its input has no channel track")
    return dense


def _resolve_groups(classes: Classes, calls: Mapping[str, Call], modules: Mapping[str, nn.Module],
                    strict: bool, prune_norms: bool = False) -> None:
    """Block channels until every grouped conv is balanced and every GroupNorm loses whole groups
    (``prune_norms``: the same number of channels from each group that keeps any)."""
    changed = True
    while changed:
        changed = _balance(classes) | _interleave(classes)
        for name, call in calls.items():
            module = modules[name]
            if isinstance(module, nn.GroupNorm) and call.tin is not None:
                keep = _keep(classes, call.tin, call.c_in)
                g = module.num_groups
                fits = _balanced(keep, keep, g) if prune_norms else _whole_groups(keep, g)
                if not (fits or keep.all()):
                    classes.reason = f"GroupNorm {name!r} would lose part of a group"
                    classes.block(call.tin.ids)  # a group's statistics need all of its channels
                    changed = True
                continue
            groups = getattr(module, "groups", 1)
            if call.depthwise or groups == 1:
                continue
            keep_in = _keep(classes, call.tin, call.c_in)
            keep_out = _keep(classes, call.tout, call.c_out)
            if not _balanced(keep_in, keep_out, groups) and not (keep_in.all() and keep_out.all()):
                if strict:
                    raise UnbalancedGroupsError(f"layer {name!r}: the channels kept in its {groups} groups differ")
                classes.reason = f"unbalanced groups: grouped conv {name!r} ({groups} groups) would keep different " \
                                 "channel counts in its groups; channels were kept back to balance them"
                if not _pad_groups(classes, call, keep_in, keep_out, groups):
                    for t in (call.tin, call.tout):  # nothing to pad (no group keeps an output): keep all
                        if t is not None:
                            classes.block(t.ids)
                changed = True


def _balance(classes: Classes) -> bool:
    """Keep channels back until the pieces of every balanced split keep equal counts (the first
    removed channels of the emptier pieces come back); whether any came back."""
    changed = False
    for reason, pieces in classes.balanced:
        keeps = [~classes.removed(ids) for ids in pieces]
        target = max(int(k.sum()) for k in keeps)
        back = [ids[(~k).nonzero().flatten()[: target - int(k.sum())]] for ids, k in zip(pieces, keeps)]
        if any(b.numel() for b in back):
            classes.reason = reason
            for b in back:
                classes.block(b)
            changed = True
    return changed


def _interleave(classes: Classes) -> bool:
    """Keep channels back until the groups of every channel shuffle interleave: read in the
    shuffled order (channel ``i`` of group ``h`` at ``i * g + h``), the kept channels come from
    groups ``0, 1, ..., g - 1, 0, ...`` and end with a whole round, so the compact view cuts them
    into the same groups and the compact shuffle keeps their order (the masks may keep different
    channels in each group). Where they do not, a channel kept in any group is kept in all of
    them; whether any came back."""
    changed = False
    for reason, grid in classes.interleaved:
        g = grid.shape[0]
        kept = (~classes.removed(grid.T.flatten())).nonzero().flatten()
        if kept.numel() % g == 0 and torch.equal(kept % g, torch.arange(kept.numel()) % g):
            continue
        columns = (~classes.removed(grid)).any(0)
        back = grid[:, columns][classes.removed(grid[:, columns])]
        if back.numel():
            classes.reason = reason
            classes.block(back)
            changed = True
    return changed


def _pad_groups(classes: Classes, call: Call, keep_in: Tensor, keep_out: Tensor, groups: int) -> bool:
    """Keep channels back until every group that keeps any keeps as many as the fullest one (NNI's rule).

    Groups that lose all their input and output channels go; in the others, the first removed
    channels of a group come back, input and output side alike.
    """
    ins, outs = keep_in.reshape(groups, -1), keep_out.reshape(groups, -1)
    live = ins.any(1) | outs.any(1)
    if not bool(live.any()):
        return False
    padded = False
    for track, chunks in ((call.tin, ins), (call.tout, outs)):
        if track is None:
            continue
        target = int(chunks[live].sum(1).max())
        width = chunks.shape[1]
        back = [g * width + int(i) for g in live.nonzero().flatten().tolist()
                for i in (~chunks[g]).nonzero().flatten()[: target - int(chunks[g].sum())]]
        classes.block(track.ids[torch.tensor(back, dtype=torch.long)])
        padded = padded or bool(back)
    return padded



def _slices(classes: Classes, calls: Mapping[str, Call], modules: Mapping[str, nn.Module],
            values: Mapping[fx.Node, Any], live: Any) -> tuple[dict[str, ChannelSlice], dict[str, float]]:
    """The slice of every module that changes, and the deviation of every fold."""
    slices: dict[str, ChannelSlice] = {}
    fold_error: dict[str, float] = {}
    reshaped = _reshaped_norms(classes, calls, modules)
    for name, call in calls.items():
        keep_in = _keep(classes, call.tin, call.c_in)
        keep_out = _keep(classes, call.tout, call.c_out) if call.kind == "producer" else keep_in
        if call.kind == "producer" and not keep_out.any():
            raise EmptyLayerError(f"all {call.c_out} output channels of layer {name!r} would be removed")
        delta = None
        # behind a norm whose statistics change the removed channels are not constants: dropped, not folded
        if (call.kind == "producer" and not call.depthwise and not keep_in.all()
                and not _behind(call.node.args[0], reshaped, live)):
            x = call.node.args[0]
            delta, fold_error[name] = _fold(modules[name], values[x], ~keep_in, call.cd_in, call.cd_out,
                                            live.used[call.node], keep_out)
        if not (keep_in.all() and keep_out.all()) or delta is not None:
            slices[name] = ChannelSlice(keep_in, keep_out if call.kind == "producer" else None, delta)
    return slices, fold_error


def _reshaped_norms(classes: Classes, calls: Mapping[str, Call], modules: Mapping[str, nn.Module]) -> set[str]:
    """The norm layers that lose channels and so change their statistics (``prune_norms``): every
    LayerNorm that loses any, every GroupNorm that loses part of a group."""
    out = set()
    for name, call in calls.items():
        module = modules[name]
        if not isinstance(module, (nn.LayerNorm, nn.GroupNorm)) or call.tin is None:
            continue
        keep = _keep(classes, call.tin, call.c_in)
        if not keep.all() and (isinstance(module, nn.LayerNorm) or not _whole_groups(keep, module.num_groups)):
            out.add(name)
    for param in _param_slices(classes):  # traced LayerNorm2d: its owner loses channels
        owner = param.rpartition(".")[0]
        if owner in classes.norm_owners:
            out.add(owner)
    return out


def _behind(node: Any, norms: set[str], live: Liveness) -> bool:
    """Whether ``node`` is one of ``norms``' outputs, through ops of one tensor input that keep channels."""
    while isinstance(node, fx.Node):
        if node.op == "call_module" and str(node.target) in norms or _norm_owner(node) in norms:
            return True
        if live.kinds.get(node) not in ("elementwise", "index", "spatial") or not node.args:
            return False
        inputs = _tensor_inputs(node, live.values)
        if len(inputs) != 1:
            return False
        node = inputs[0]
    return False


def _norm_notes(gm: fx.GraphModule, slices: Mapping[str, ChannelSlice], live: Liveness,
                reshaped: set[str], sliced: Mapping[str, tuple[int, Tensor]]) -> dict[str, str]:
    """Per LayerNorm / GroupNorm module: that it lost channels and changed its statistics, or that
    it kept channels the masks prune (constant at its input), and why."""
    notes: dict[str, str] = {}
    for param, (_, keep) in sliced.items():
        owner = param.rpartition(".")[0]
        if owner in reshaped and owner not in notes:
            notes[owner] = ("traced channels-last layer_norm: "
                            f"{int((~keep).sum())} channels removed (prune_norms): its statistics change, so the "
                            "compact model is not the masked one here (output_error)")
    for node in gm.graph.nodes:
        if node.op != "call_module" or live.kinds[node] not in ("layernorm", "groupnorm"):
            continue
        name, first = str(node.target), node.args[0] if node.args else None
        module = gm.get_submodule(name)
        if not isinstance(first, fx.Node) or not isinstance(live.values.get(first), Tensor) or name in notes:
            continue
        kind = type(module).__name__
        sl = slices.get(name)
        removed = 0 if sl is None or sl.keep_in is None else int((~sl.keep_in).sum())
        if name in reshaped:
            notes[name] = (f"{kind}: {removed} channels removed (prune_norms): its statistics change, so the "
                           "compact model is not the masked one here (output_error)")
            continue
        channels_last = isinstance(module, nn.LayerNorm) and not _own_forward(module)
        kept = int(live.dead(first, -1 if channels_last else 1).sum()) - removed
        if kept <= 0:
            continue
        if live.prune_norms and _own_forward(module):
            why = "its forward is its own, so which dims it normalises is not known"
        elif live.prune_norms and isinstance(module, nn.LayerNorm) and len(module.normalized_shape) > 1:
            why = "it normalises over more than the channel dim"
        elif live.prune_norms:
            why = "another use of the channels keeps them, or a GroupNorm's groups would keep different counts"
        elif isinstance(module, nn.GroupNorm):
            why = "only whole groups go without changing its statistics; prune_norms=True removes them"
        else:
            why = "it normalises over them; prune_norms=True removes them, changing its statistics"
        notes[name] = f"{kind}: keeps {kept} channels the masks prune (constant at its input): {why}"
    return notes




@attrs.frozen
class Propagated:
    """What :func:`propagate` returns: the masked model the compact one computes, as data.

    ``functional_call(model, apply_masks(params, masks), x)`` computes what the compact model of
    :func:`~purecompress.shrink` (same masks) computes, exactly and on every input: every channel
    that shrinking removes is zeroed by ``masks``, and the constant those channels still emitted
    in the user's masked model (a bias, BatchNorm's beta through ReLU) is added to the next layer's
    bias, or to the running mean of the BatchNorm after a bias-free conv, in ``params``.
    It equals the *user's* masked model (``apply_masks(params_of(model), user_masks)``) wherever
    those folds are exact: everywhere but at the borders of zero-padded convs (``inexact`` lists
    those layers with the deviation on the example inputs; ``exact=True`` keeps their channels).
    A constant the dense model has no bias (nor BatchNorm) for keeps its channels unmasked here
    (the user's masked model), and the compact model folds it into a new bias where that is
    exact and keeps those channels too where it is not, so the two still agree.

    Attributes:
        masks: the user's masks plus the masks of producers' output rows and biases, norm weights
            and biases, and consumers' input columns of the removed channels.
        params: every parameter and buffer of the model (or the ``params`` given), with the
            folded constants added; the tensors that do not change are the model's own.
        inexact: producer name -> max abs deviation of its fold from the user's masked model on
            the example inputs, for the folds above :data:`EXACT_TOL`.
        norms: see :class:`ChannelPlan` (with ``prune_norms`` the masked model keeps the removed
            channels in those norms' statistics, the compact model does not).
    """

    masks: Masks
    params: dict[str, Tensor]
    inexact: dict[str, float]
    norms: dict[str, str]


def propagate(
    model: nn.Module,
    masks: Mapping[str, Mask],
    example_inputs: Any,
    *,
    leaf_modules: Iterable[str | type[nn.Module]] = (),
    replacements: Mapping[type[nn.Module], Replacement] | None = None,
    exact: bool = False,
    prune_norms: bool = False,
    params: Mapping[str, Tensor] | None = None,
    capture_method: Method = "auto",
) -> Propagated:
    """The full masks implied by ``masks`` (every channel that shrinking removes, masked
    everywhere) and the params that keep the masked model's function.

    Fine-tune ``apply_masks(result.params, result.masks)``: it is the compact model's function
    exactly, and the user's masked model's up to ``result.inexact`` (see :class:`Propagated`);
    ``shrink(model, result.masks, x, params=result.params)`` then has nothing left to fold.

    Args:
        model: the dense model (not modified).
        masks: core masks keyed by parameter name.
        example_inputs: a tensor, tuple or dict of inputs.
        leaf_modules: passed to :func:`~purecompress.graph`.
        replacements: extra replacement-table entries.
        exact: keep the channels whose constants cannot be folded exactly (``inexact`` is then
            empty: the result equals the user's masked model everywhere).
        prune_norms: remove channels through LayerNorm / GroupNorm too (see :func:`channel_plan`;
            the masked model then differs from the compact one at those norms, ``norms``).
        params: values to use instead of the model's parameters and buffers.
        capture_method: passed to :func:`~purecompress.graph.capture` as ``method``.

    Returns:
        A :class:`Propagated` record (``masks``, ``params``, ``inexact``).

    >>> net = nn.Sequential(nn.Conv2d(3, 4, 1, bias=False), nn.BatchNorm2d(4), nn.ReLU(), nn.Conv2d(4, 2, 1))
    >>> keep = torch.tensor([True, False, True, True]).reshape(4, 1, 1, 1)
    >>> x = torch.randn(1, 3, 4, 4)
    >>> _ = torch.nn.init.constant_(net.eval()[1].bias, 0.5)  # channel 1 still emits relu(0.5)
    >>> out = propagate(net, {'0.weight': Mask(keep, (4, 3, 1, 1))}, x)
    >>> sorted(out.masks), out.masks['3.weight'].keep.flatten().tolist()
    (['0.weight', '1.bias', '1.weight', '3.weight'], [True, False, True, True, True, False, True, True])
    >>> torch.allclose(out.params['3.bias'], net[3].bias + 0.5 * net[3].weight[:, 1, 0, 0]), out.inexact
    (True, {})
    """
    plan = channel_plan(model, masks, example_inputs, leaf_modules=leaf_modules, replacements=replacements,
                        exact=exact, prune_norms=prune_norms, params=params, capture_method=capture_method)
    return Propagated(plan.masks, plan.params, plan.inexact, plan.norms)


def channel_ranges(
    model: nn.Module,
    example_inputs: Any,
    *,
    leaf_modules: Iterable[str | type[nn.Module]] = (),
    replacements: Mapping[type[nn.Module], Replacement] | None = None,
    capture_method: Method = "auto",
) -> list[tuple[ChannelRange, ...]]:
    """Dependency sets of channel *ranges*: the channels that :func:`~purecompress.shrink` removes
    together, as ranges of the layers' output channels.

    :func:`channel_dependency` joins whole layers; this follows each channel through the graph
    with the rules :func:`shrink` applies (the classes of :func:`trace_channels`): a channel
    concatenation, a slice, ``split`` / ``chunk`` pieces, a depthwise conv fed by a part of a
    concatenation, element-wise joins such as a residual add, and a channel shuffle
    (``view(n, g, C // g, ...)``, ``transpose``, ``view(n, C, ...)``: channel ``j`` of each group
    joins; that suffices, :func:`shrink` only needs the groups' kept channels to interleave: the
    ``r``-th kept channel of group ``h`` at or before that of group ``h + 1``). So GhostNet's
    ``cat([x1, x2])[:, :oup] + shortcut`` couples the shortcut's first half with ``x1``'s layer and
    its second half with ``x2``'s, instead of nothing.

    Args:
        model: the model (not modified).
        example_inputs: inputs for :func:`~purecompress.graph.capture` and one reference run.
        leaf_modules: passed to :func:`~purecompress.graph.capture`.
        replacements: extra replacement-table entries (custom producer or channel-wise modules).
        capture_method: passed to :func:`~purecompress.graph.capture` as ``method``.

    Returns:
        Sets of :class:`~purecompress.ChannelRange` of one length each, for every channel of every
        producer layer called in the graph (each exactly once): channel ``i`` of every range in a
        set is removed with channel ``i`` of the others. The channels of one class are grouped
        with the classes that join the same layers as often (so that each layer keeps the asked
        fraction of each range), and cut into ranges of one step. Pass them to
        :func:`~purecompress.allocate_dependency_aware` as ``channel_sets``. Channels that shrink
        keeps whatever the masks say (an op blocks them) form sets of their own, each range's
        ``blocked`` saying why (the allocator keeps them).

    >>> class Ghost(nn.Module):
    ...     def __init__(self) -> None:
    ...         super().__init__()
    ...         self.stem, self.a = nn.Conv2d(3, 4, 1), nn.Conv2d(4, 2, 1)
    ...         self.b = nn.Conv2d(2, 2, 3, padding=1, groups=2)
    ...     def forward(self, x):
    ...         s = self.stem(x)
    ...         y = self.a(s)
    ...         return torch.cat([y, self.b(y)], 1)[:, :4] + s
    >>> for members in channel_ranges(Ghost(), torch.zeros(1, 3, 4, 4)):
    ...     print([(r.name, r.start, r.stop) for r in members])
    [('stem', 0, 2), ('stem', 2, 4), ('a', 0, 2), ('b', 0, 2)]
    """
    classes, calls = _structure(model, example_inputs, leaf_modules, replacements, capture_method, True)
    return _range_sets(classes, calls)


def _structure(model: nn.Module, example_inputs: Any, leaf_modules: Iterable[str | type[nn.Module]],
               replacements: Mapping[type[nn.Module], Replacement] | None, capture_method: Method,
               couple_shuffles: bool) -> tuple[Classes, dict[str, Call]]:
    """The classes and calls of :func:`trace_channels` on a copy of the model, every channel
    varying (no masks)."""
    work = copy.deepcopy(model).eval()
    gm = capture(work, example_inputs, leaf_modules=leaf_modules, method=capture_method)
    bound = bind_inputs(work, example_inputs)
    bound.apply_defaults()
    recorder = _Recorder(gm)
    with torch.no_grad(), torch.random.fork_rng(devices=[]):
        recorder.run(*bound.args, *bound.kwargs.values())
    modules = dict(gm.named_modules())
    values = recorder.values
    kinds = {node: kind_of(node, modules, replacements) for node in gm.graph.nodes}
    tensors = {n: None for n, v in values.items() if any(_is_tensor(x) for x in optree.tree_leaves(v))}
    classes, calls, _ = trace_channels(gm, Liveness(values, tensors, {}, kinds), replacements,
                                       couple_shuffles=couple_shuffles)
    return classes, calls


def shuffle_chains(
    model: nn.Module,
    example_inputs: Any,
    *,
    leaf_modules: Iterable[str | type[nn.Module]] = (),
    replacements: Mapping[type[nn.Module], Replacement] | None = None,
    capture_method: Method = "auto",
) -> list[ShuffleChain]:
    """The chains of ShuffleNetV2 units in the graph (:class:`~purecompress.ShuffleChain`), for
    :func:`~purecompress.allocate_dependency_aware`'s ``shuffles``.

    :func:`channel_ranges` joins channel ``j`` of each group of a channel shuffle, which is enough
    for :func:`shrink` but doubles the channels joined at every unit: deep in a stage, a whole
    layer is one set. :func:`shrink` itself only needs the groups' kept channels to interleave and
    each ``chunk`` half to keep as many; a chain gives the allocator the layers to choose so. Only
    chains whose channels meet nothing else are given (no other layer, join or split, not blocked).

    Args:
        model: the model (not modified).
        example_inputs: inputs for :func:`~purecompress.graph.capture` and one reference run.
        leaf_modules: passed to :func:`~purecompress.graph.capture`.
        replacements: extra replacement-table entries (custom producer or channel-wise modules).
        capture_method: passed to :func:`~purecompress.graph.capture` as ``method``.

    Returns:
        One :class:`~purecompress.ShuffleChain` per chain, in graph order.
    """
    classes, calls = _structure(model, example_inputs, leaf_modules, replacements, capture_method, False)
    return _chains(classes, calls)


def _chains(classes: Classes, calls: Mapping[str, Call]) -> list[ShuffleChain]:
    def roots(ids: Tensor) -> tuple[int, ...]:
        return tuple(classes.find(i) if i >= 0 else -1 for i in ids.flatten().tolist())

    producers = {roots(c.tout.ids): name for name, c in calls.items()
                 if c.kind == "producer" and not c.depthwise and c.tout is not None and c.tout.ids.dim() == 1}
    grids = [grid for _, grid in classes.interleaved if grid.shape[0] == 2]
    halves = {roots(p[0]): roots(torch.cat(p)) for _, p in classes.balanced if len(p) == 2}
    by_output = {roots(grid.T.flatten()): k for k, grid in enumerate(grids)}
    after: dict[int, int] = {}  # grid -> the next unit's grid
    for k, grid in enumerate(grids):
        prev = by_output.get(halves.get(roots(grid[0]), ()))
        if prev is not None:
            after[prev] = k
    out = []
    for k, grid in enumerate(grids):
        if roots(grid[0]) not in producers or roots(grid[1]) not in producers:
            continue  # not a chain's first unit
        chain, rows = [k], [roots(grid[0]), roots(grid[1])]
        while chain[-1] in after:
            chain.append(after[chain[-1]])
            rows.append(roots(grids[chain[-1]][1]))
        last = roots(grids[chain[-1]].T.flatten())
        followers = tuple(name for name, c in calls.items() if c.depthwise and c.tin is not None
                          and roots(c.tin.ids) == last)
        if _isolated(classes, calls, [grids[j] for j in chain], rows, producers, followers, last):
            out.append(ShuffleChain(tuple(producers[r] for r in rows), int(grid.shape[1]), followers))
    return out


def _isolated(classes: Classes, calls: Mapping[str, Call], grids: list[Tensor], rows: list[tuple[int, ...]],
              producers: Mapping[tuple[int, ...], str], followers: tuple[str, ...], last: tuple[int, ...]) -> bool:
    """Whether a chain's channels meet only its own shuffles, chunks and followers: each row a
    whole layer of its own classes, none blocked, no other layer, shuffle or split on them."""
    own = {r for row in rows for r in row}
    if any(row not in producers for row in rows) or len(own) != sum(len(row) for row in rows) or -1 in own:
        return False
    if any(classes.blocked[r] for r in own):
        return False
    names = {producers[row] for row in rows} | set(followers)
    for name, c in calls.items():
        if name not in names and c.kind == "producer" and c.tout is not None \
                and own & {classes.find(i) for i in c.tout.ids.flatten().tolist() if i >= 0}:
            return False
    mine = {tuple(g.flatten().tolist()) for g in grids}
    for _, grid in classes.interleaved:
        if tuple(grid.flatten().tolist()) not in mine and own & {classes.find(i) for i in grid.flatten().tolist()}:
            return False
    outputs = [tuple(classes.find(i) for i in g.T.flatten().tolist()) for g in grids[:-1]]
    for _, pieces in classes.balanced:
        whole = tuple(classes.find(i) if i >= 0 else -1 for i in torch.cat(pieces).tolist())
        if whole not in outputs and own & set(whole):
            return False  # a split of the last output, or of anything else of theirs, is not followed
    return True


def _range_sets(classes: Classes, calls: Mapping[str, Call]) -> list[tuple[ChannelRange, ...]]:
    """The producers' channels grouped by class, classes by the layers they join (with counts),
    cut into runs of one step per member."""
    rank = {name: i for i, name in enumerate(calls)}
    members: dict[Any, list[tuple[str, int]]] = {}
    for name, call in calls.items():
        if call.kind != "producer":
            continue
        ids = call.tout.ids.tolist() if call.tout is not None else [-1] * call.c_out
        for c, i in enumerate(ids):
            key = classes.find(i) if i >= 0 else (name, c)  # a channel of no class: its own
            members.setdefault(key, []).append((name, c))
    groups: dict[tuple[tuple[str, ...], str | None], list[list[tuple[str, int]]]] = {}
    for key, found in members.items():
        found.sort(key=lambda m: (rank[m[0]], m[1]))
        blocked = classes.why(key) if isinstance(key, int) else "its input's channels are not followed"
        groups.setdefault((tuple(n for n, _ in found), blocked), []).append(found)
    out: list[tuple[ChannelRange, ...]] = []
    for (slots, blocked), group in groups.items():
        group.sort(key=lambda found: [(rank[n], c) for n, c in found])
        out.extend(_runs(slots, [[c for _, c in found] for found in group], blocked))
    return sorted(out, key=lambda s: (rank[s[0].name], s[0].start))


def _runs(slots: tuple[str, ...], rows: list[list[int]], blocked: str | None) -> list[tuple[ChannelRange, ...]]:
    """Cut ``rows`` (per class, its channel in each slot) into runs where every slot steps by one
    positive stride."""
    out: list[tuple[ChannelRange, ...]] = []
    begin = 0
    while begin < len(rows):
        end = begin + 1
        steps = None
        while end < len(rows):
            step = [b - a for a, b in zip(rows[end - 1], rows[end])]
            if any(d <= 0 for d in step) or (steps is not None and step != steps):
                break
            steps, end = step, end + 1
        steps = steps or [1] * len(slots)
        out.append(tuple(ChannelRange(name, rows[begin][j], rows[end - 1][j] + steps[j], steps[j], blocked)
                         for j, name in enumerate(slots)))
        begin = end
    return out
