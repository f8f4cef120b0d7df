"""The module replacement table: how a layer is rebuilt with fewer channels.

A :class:`Replacement` says how channels flow through a module type (``'producer'``: Conv/Linear,
new output channels from all input channels; ``'channelwise'``: BatchNorm, InstanceNorm,
GroupNorm, PReLU, and LayerNorm with ``prune_norms``: output channel ``c`` from input channel
``c``) and how to build the smaller module from a :class:`ChannelSlice`. The default entries copy
the module and swap its tensors and channel counts, so a subclass (timm's ``Conv2dSame``,
``BatchNormAct2d`` with its activation) keeps its class and its extra attributes.
:data:`REPLACEMENTS` is the default table; :func:`~purecompress.shrink`
takes extra entries (``replacements={MyNorm: Replacement('channelwise', fn)}``) that win over it.
Nothing here edits a module in place: each function returns a new module.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Mapping
from typing import Any, Literal

import attrs
import torch
from torch import Tensor, nn

__all__ = ["COMPOSITES", "REPLACEMENTS", "ChannelSlice", "Replacement", "composite_of", "replacement_for"]


@attrs.frozen
class ChannelSlice:
    """What to keep of one module.

    Attributes:
        keep_in: ``[C_in]`` bool, input channels kept (None: all).
        keep_out: ``[C_out]`` bool, output channels kept (None: all).
        bias_delta: ``[C_out]`` constant added to the bias (the folded contribution of removed
            constant input channels), or None.
    """

    keep_in: Tensor | None = None
    keep_out: Tensor | None = None
    bias_delta: Tensor | None = None


ReplaceFn = Callable[[nn.Module, ChannelSlice], nn.Module]


@attrs.frozen
class Replacement:
    """One table entry.

    Attributes:
        kind: ``'producer'`` (new channels from all inputs) or ``'channelwise'``.
        fn: ``(module, ChannelSlice) -> new module``.
        channel_dim: the tensor dim holding channels at the module's input and output
            (1 for NCHW layers, -1 for Linear).
    """

    kind: Literal["producer", "channelwise"]
    fn: ReplaceFn
    channel_dim: int = 1


def _index(keep: Tensor | None, n: int) -> Tensor:
    return torch.arange(n) if keep is None else keep.nonzero().flatten()


def _swap(module: nn.Module, tensors: Mapping[str, Tensor | None], **attributes: int) -> nn.Module:
    """A copy of ``module`` (its class, its submodules and every attribute: a subclass's extras such
    as timm's ``BatchNormAct2d.act``) with the own parameters/buffers in ``tensors`` and the
    ``attributes`` (channel counts) replaced. The other own tensors are shared with ``module``."""
    own = [t for t in (*module._parameters.values(), *module._buffers.values()) if t is not None]
    new = copy.deepcopy(module, {id(t): t for t in own})
    for key, value in tensors.items():
        if key in module._buffers:
            new._buffers[key] = None if value is None else value.detach().clone()
            continue
        old = module._parameters.get(key)
        grad = True if old is None else old.requires_grad
        new._parameters[key] = None if value is None else nn.Parameter(value.detach().clone(), requires_grad=grad)
    for key, value in attributes.items():
        setattr(new, key, value)
    return new


def _bias(module: nn.Module, out: Tensor, sl: ChannelSlice) -> Tensor | None:
    old = module.bias.detach() if module.bias is not None else None
    if sl.bias_delta is not None and bool(sl.bias_delta.ne(0).any()):
        old = sl.bias_delta.to(module.weight) + (0 if old is None else old)
    return None if old is None else old[out]


def _conv(module: nn.Module, sl: ChannelSlice) -> nn.Module:
    w = module.weight.detach()
    transposed = isinstance(module, nn.modules.conv._ConvTransposeNd)
    c_in = w.shape[0] if transposed else w.shape[1] * module.groups
    c_out = w.shape[1] * module.groups if transposed else w.shape[0]
    idx_in, idx_out = _index(sl.keep_in, c_in), _index(sl.keep_out, c_out)
    g = module.groups
    step_in, step_out = c_in // g, c_out // g
    groups, blocks = 0, []
    for k in range(g):  # keep the groups that still have channels; they must stay equal in size
        gi = idx_in[(idx_in >= k * step_in) & (idx_in < (k + 1) * step_in)]
        go = idx_out[(idx_out >= k * step_out) & (idx_out < (k + 1) * step_out)]
        if len(gi) or len(go):
            groups += 1
            blocks.append((gi, go - k * step_out) if transposed else (go, gi - k * step_in))
    if transposed:
        w_new = torch.cat([w[gi][:, go] for gi, go in blocks]) if blocks else w[:0]
    else:
        w_new = torch.cat([w[go][:, gi] for go, gi in blocks]) if blocks else w[:0]
    return _swap(module, {"weight": w_new, "bias": _bias(module, idx_out, sl)},
                 in_channels=len(idx_in), out_channels=len(idx_out), groups=max(groups, 1))


def _linear(module: nn.Module, sl: ChannelSlice) -> nn.Module:
    w = module.weight.detach()
    idx_in, idx_out = _index(sl.keep_in, w.shape[1]), _index(sl.keep_out, w.shape[0])
    return _swap(module, {"weight": w[idx_out][:, idx_in], "bias": _bias(module, idx_out, sl)},
                 in_features=len(idx_in), out_features=len(idx_out))


def _per_channel(module: nn.Module, idx: Tensor, n: int) -> dict[str, Tensor]:
    """The own ``[n]`` parameters and buffers of ``module``, sliced to ``idx``."""
    own = {**module._parameters, **module._buffers}
    return {k: v.detach()[idx.to(v.device)] for k, v in own.items() if v is not None and v.shape == (n,)}


def _norm(module: nn.Module, sl: ChannelSlice) -> nn.Module:
    """BatchNorm*d / InstanceNorm*d: slice affine parameters and running statistics."""
    idx = _index(sl.keep_in, module.num_features)
    return _swap(module, _per_channel(module, idx, module.num_features), num_features=len(idx))


def _group_norm(module: nn.Module, sl: ChannelSlice) -> nn.Module:
    """GroupNorm: the analysis removes whole groups, or (``prune_norms``) the same count from each."""
    keep = sl.keep_in if sl.keep_in is not None else torch.ones(module.num_channels, dtype=torch.bool)
    groups = int(keep.reshape(module.num_groups, -1).any(1).sum())
    idx = keep.nonzero().flatten()
    return _swap(module, _per_channel(module, idx, module.num_channels), num_groups=groups, num_channels=len(idx))


def _layer_norm(module: nn.Module, sl: ChannelSlice) -> nn.Module:
    """LayerNorm over one dim (only with ``prune_norms``): the kept features, weight and bias sliced.

    A copy of the module (subclasses keep their forward), with ``normalized_shape`` and the
    affine parameters of the kept features only.
    """
    idx = _index(sl.keep_in, module.normalized_shape[0])
    new = copy.deepcopy(module)
    new.normalized_shape = (len(idx),)
    for name in ("weight", "bias"):
        p = getattr(module, name, None)
        if p is not None:
            setattr(new, name, nn.Parameter(p.detach()[idx].clone(), requires_grad=p.requires_grad))
    return new


def _prelu(module: nn.Module, sl: ChannelSlice) -> nn.Module:
    if module.num_parameters == 1:
        return module
    idx = _index(sl.keep_in, module.num_parameters)
    return _swap(module, _per_channel(module, idx, module.num_parameters), num_parameters=len(idx))


_PRODUCER = Replacement("producer", _conv)
_CHANNELWISE = Replacement("channelwise", _norm)

#: The default table, keyed by module type (subclasses match through their MRO).
REPLACEMENTS: Mapping[type[nn.Module], Replacement] = {
    nn.Conv1d: _PRODUCER, nn.Conv2d: _PRODUCER, nn.Conv3d: _PRODUCER,
    nn.ConvTranspose1d: _PRODUCER, nn.ConvTranspose2d: _PRODUCER, nn.ConvTranspose3d: _PRODUCER,
    nn.Linear: Replacement("producer", _linear, -1),
    nn.BatchNorm1d: _CHANNELWISE, nn.BatchNorm2d: _CHANNELWISE, nn.BatchNorm3d: _CHANNELWISE,
    nn.InstanceNorm1d: _CHANNELWISE, nn.InstanceNorm2d: _CHANNELWISE, nn.InstanceNorm3d: _CHANNELWISE,
    nn.PReLU: Replacement("channelwise", _prelu),
    nn.GroupNorm: Replacement("channelwise", _group_norm),
    nn.LayerNorm: Replacement("channelwise", _layer_norm, -1),  # used only with prune_norms
}  # fmt: skip


def _mixed_conv(module: nn.Module) -> dict[str, Any]:
    convs = list(module.children())
    splits = [int(c.in_channels) for c in convs]
    return {"splits": splits, "in_channels": sum(splits), "out_channels": sum(int(c.out_channels) for c in convs)}


def _cross_stage(module: nn.Module) -> dict[str, Any]:
    convs = [m for m in module.conv_exp.modules() if isinstance(m, nn.modules.conv._ConvNd)]
    return {"expand_chs": int(convs[-1].out_channels)}


#: Composite layers whose forward splits its input by sizes it stores (not written in the graph):
#: class (``module.qualname``) -> the attributes to set from its children once they are shrunk.
#: Inside them, the channel analysis follows a split into pieces of the input's channels; a split
#: by one size (``x.split(self.expand_chs // 2, 1)``) keeps equal counts in its pieces.
COMPOSITES: Mapping[str, Callable[[nn.Module], dict[str, Any]]] = {
    "timm.layers.mixed_conv2d.MixedConv2d": _mixed_conv,  # torch.split(x, self.splits, 1), a conv each
    # x.split(self.expand_chs // 2, dim=1) of conv_exp's output, in halves
    "timm.models.cspnet.CrossStage": _cross_stage,
    "timm.models.cspnet.CrossStage3": _cross_stage,
}


def composite_of(module: nn.Module | type) -> Callable[[nn.Module], dict[str, Any]] | None:
    """The :data:`COMPOSITES` entry of ``module`` (a module or a class) or of a base class, or None."""
    for cls in (module if isinstance(module, type) else type(module)).__mro__:
        fn = COMPOSITES.get(f"{cls.__module__}.{cls.__qualname__}")
        if fn is not None:
            return fn
    return None


def replacement_for(
    module: nn.Module, extra: Mapping[type[nn.Module], Replacement] | None = None
) -> Replacement | None:
    """The entry for ``module``'s type: ``extra`` first, then :data:`REPLACEMENTS`, along the MRO.

    >>> replacement_for(nn.Linear(2, 3)).kind, replacement_for(nn.ReLU()) is None
    ('producer', True)
    """
    for cls in type(module).__mro__:
        for table in (extra or {}, REPLACEMENTS):
            if cls in table:
                return table[cls]
    return None
