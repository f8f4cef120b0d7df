"""Channel classes: which channels of which tensors are one channel, and where they are blocked.

Each producer output channel starts a class (an id); :func:`trace_channels` walks the captured
graph and gives every tensor a :class:`Track` (its channel dim and the class id of each channel,
``-1`` for channels that belong to no class). Element-wise ops merge the classes of their
operands (union-find), cat concatenates tracks, views that keep the channel dim traceable move
it, and every op that would break a shape (see :mod:`~purecompress.graph.propagate`) blocks the
classes that reach it. Views are handled by pushing a tensor holding each element's channel
index through the op: the output tells where the channel dim went, and whether every channel
still appears, in order (flatten repeats each channel ``H * W`` times). The records these walks
fill (:class:`Track`, :class:`Classes`, :class:`Call`) live in :mod:`~purecompress.graph.tracks`.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import optree
import torch
import torch.fx as fx
from torch import Tensor, nn

from .kinds import FIRST_ONLY, op_name
from .liveness import Liveness
from .replace import Replacement, replacement_for
from .structural import _call, _mean_dims, _substitute
from .tracks import Call, Classes, Track

__all__ = ["Call", "Classes", "Track", "trace_channels"]


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


def _follow(result: Tensor, track: Track, node: fx.Node) -> Track | None:
    """Where the channel indices went in ``result`` (None: not traceable in order)."""
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
    counts = torch.bincount(vals, minlength=track.ids.numel()) if vals.min() >= 0 else None
    if counts is None or counts.numel() != track.ids.numel() or not bool((counts == counts[0]).all()):
        return None
    if not bool((vals[1:] >= vals[:-1]).all()):
        return None
    if op_name(node) in _LITERAL_SHAPE_OPS and result.shape[d] in _literals(node.args[1:]) | _literals(node.kwargs):
        return None
    return Track(d, track.ids[vals])


def _merge(node: fx.Node, value: Tensor, values: Mapping, tracks: Mapping, classes: Classes) -> Track | None:
    r = value.dim()
    tensors = [n for n in node.all_input_nodes if isinstance(values[n], Tensor)]
    if op_name(node) in FIRST_ONLY:
        tensors = tensors[:1]
    tracked = [(n, tracks[n]) for n in tensors if isinstance(tracks.get(n), Track)]
    if not tracked:
        return None
    cds = {t.cd + r - values[n].dim() for n, t in tracked}
    sizes = {values[n].shape[t.cd] for n, t in tracked}
    if len(cds) != 1 or sizes != {value.shape[next(iter(cds))]}:
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
        if pos >= 0 and values[n].shape[pos] != 1:  # a full-channel operand that has no class
            classes.block(out.ids)
    return out


def _cat(node: fx.Node, value: Tensor, values: Mapping, tracks: Mapping, classes: Classes) -> Track | None:
    parts = node.args[0] if node.args else node.kwargs["tensors"]
    dim = node.args[1] if len(node.args) > 1 else node.kwargs.get("dim", 0)
    dim %= value.dim()
    ts = [tracks.get(n) if isinstance(tracks.get(n), Track) else None for n in parts]
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
    view = [1] * x.dim()
    view[track.cd] = -1
    probe = torch.arange(x.shape[track.cd], dtype=torch.float32, device=x.device).reshape(view)
    probe = probe.expand(x.shape).contiguous()
    args, kwargs = _substitute(node, values, {first: probe})
    with torch.no_grad():
        result = _mean_dims(node, args, kwargs) if live.kinds[node] == "reduce" else _call(node, modules, args, kwargs)
    result = optree.tree_map(lambda r: r.cpu() if isinstance(r, Tensor) else r, result)
    outs = [
        _follow(r, track, node) if isinstance(r, Tensor) else None
        for r in (result if isinstance(result, (tuple, list)) else [result])
    ]
    if any(o is None for o in outs):
        classes.block(track.ids)
        return None
    return tuple(outs) if isinstance(result, (tuple, list)) else outs[0]


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


def trace_channels(
    gm: fx.GraphModule, live: Liveness, extra: Mapping[type[nn.Module], Replacement] | None = None
) -> tuple[Classes, dict[str, Call], list[tuple[fx.Node, int, Track | None]]]:
    """Tracks for every node; returns the classes, the table modules' calls and the consumers.

    Consumers are ``(input node, channel dim, track)`` for every producer layer input.
    """
    modules = dict(gm.named_modules())
    classes = Classes()
    tracks: dict[fx.Node, Any] = {}
    calls: dict[str, Call] = {}
    consumers: list[tuple[fx.Node, int, Track | None]] = []
    values = live.values
    for node in gm.graph.nodes:
        kind = live.kinds[node]
        value = values.get(node)
        if node.op == "output":
            _block_all(node, tracks, classes)
            continue
        if node.op in ("placeholder", "get_attr") or node not in live.varies:
            continue
        module = modules[str(node.target)] if node.op == "call_module" else None
        entry = replacement_for(module, extra) if module is not None else None
        first = node.args[0] if node.args and isinstance(node.args[0], fx.Node) else None
        tin = tracks.get(first) if first is not None and isinstance(tracks.get(first), Track) else None
        if entry is not None and isinstance(value, Tensor) and first is not None:
            x = values[first]
            cd_in, cd_out = entry.channel_dim % x.dim(), entry.channel_dim % value.dim()
            if tin is not None and tin.cd != cd_in:
                classes.block(tin.ids)
                tin = None
            depthwise = (
                isinstance(module, nn.Conv1d | nn.Conv2d | nn.Conv3d)
                and module.groups > 1
                and module.groups == module.in_channels == module.out_channels
            )
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
            tracks[node] = _merge(node, value, values, tracks, classes) if isinstance(value, Tensor) else None
        elif (
            kind in ("spatial", "layernorm", "softmax", "batchnorm", "instancenorm")
            and tin is not None
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
    return classes, calls, consumers
