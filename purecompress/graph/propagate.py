"""Mask propagation: from the masks a pruner gave, every channel that can be removed.

The rule, in full:

1. **Dead elements.** :mod:`~purecompress.graph.liveness` finds, on the masked model, where each
   tensor is a constant (the same for every input) and where it is unused (cannot change the
   output).
2. **Channel classes.** Every output channel of a producer layer (Conv, ConvTranspose, Linear)
   starts a class; the class follows the channel through channel-wise ops (activations,
   BatchNorm, pooling, dropout, interpolation, padding of other dims), views that keep the channel
   dim traceable (flatten into a Linear, squeeze, permute, transpose), concatenation along the
   channel dim, and depthwise convs. An element-wise op between operands that carry channels
   (residual ``add``, squeeze-excite ``mul``) **merges** the classes of channel ``c`` of every
   operand: they are removed together or not at all (NNI's channel dependency sets).
3. **Blocking.** A class cannot be removed where its channels reach something whose shape or
   values would change: the graph's output, an op without a rule, a split/chunk/slice of the
   channel dim, a view with the channel count written as a literal, a LayerNorm over the
   channel dim (its statistics include every channel), or a functional conv/linear/norm.
4. **Conflict rule.** A class is removed only if, at **every** layer that consumes it (every
   Conv/Linear input it reaches), each of its channels is constant or unused there. So after a
   residual ``add`` a channel goes only if every operand has it pruned. The constant a removed
   channel still carries (bias, BatchNorm beta through ReLU) is folded into the consumer's bias
   by :mod:`~purecompress.graph.shrink`; behind a zero-padded conv that fold is inexact at the
   borders, and ``exact=True`` keeps those channels instead.
5. **Groups.** A grouped (not depthwise) conv must keep the same number of channels in every
   remaining group; if the masks do not, its channels are kept (``strict=True``: an error).
   A GroupNorm loses only whole groups (a group's statistics need all of its channels);
   LayerNorm over the channel dim keeps every channel.

The result, :class:`ChannelPlan`, holds a :class:`~purecompress.graph.replace.ChannelSlice`
per layer and the **propagated masks**: the given masks plus every removed channel masked in
producers (weight rows, bias), in norm layers (weight, bias) and in consumers (weight columns).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

import attrs
import torch
import torch.fx as fx
from torch import Tensor, nn

from purecompress.records import Mask, Masks

from .capture import capture
from .channels import Call, Classes, Track, trace_channels
from .fold import EXACT_TOL as EXACT_TOL
from .fold import _fold, _keep_inexact
from .liveness import liveness
from .plan_masks import _propagated
from .recording import _bind, _masked_copy, _Recorder, _sizes
from .replace import ChannelSlice, Replacement

__all__ = [
    "Analysis",
    "ChannelPlan",
    "analyse",
    "EmptyLayerError",
    "ShrinkError",
    "UnbalancedGroupsError",
    "channel_plan",
    "propagate",
]


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
        masks: the propagated masks (see the module docstring).
    """

    slices: dict[str, ChannelSlice]
    fold_error: dict[str, float]
    masks: Masks


@attrs.frozen
class Analysis:
    """A plan with what shrinking needs next: ``masked`` (a private copy of the model with the
    given masks applied, eval mode), its ``output`` on the example inputs, those inputs bound
    to ``forward`` as ``(args, kwargs)``, and ``sizes``: per called module, the per-sample
    positions its weights are applied at (output spatial size, summed over calls) and the
    per-sample input size (for norm layers)."""

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
    params: Mapping[str, Tensor] | None = None,
) -> ChannelPlan:
    """Decide which channels go (the rule in the module docstring). The model is not modified.

    Args:
        model: the dense model.
        masks: core masks keyed by parameter name (any granularity; channel masks shrink).
        example_inputs: a tensor, tuple or dict of inputs, e.g. ``[2, 3, 32, 32]``.
        leaf_modules: passed to :func:`~purecompress.graph.capture`.
        replacements: extra replacement-table entries (custom channel-wise or producer modules).
        strict: raise :class:`UnbalancedGroupsError` instead of keeping the channels of an
            unbalanced grouped conv.
        exact: keep the channels whose constant cannot be folded exactly (behind zero-padded
            convs), so that the compact model equals the masked one everywhere.
        params: parameter (and buffer) values to use instead of the model's own, e.g. the
            fine-tuned :data:`~purecompress.Params` of a functional training loop.

    Raises:
        EmptyLayerError: a layer would lose all its output channels.
    """
    return analyse(model, masks, example_inputs, leaf_modules=leaf_modules, replacements=replacements,
                   strict=strict, exact=exact, params=params).plan


def analyse(
    model: nn.Module,
    masks: Mapping[str, Mask],
    example_inputs: Any,
    *,
    leaf_modules: Iterable[str | type[nn.Module]] = (),
    replacements: Mapping[type[nn.Module], Replacement] | None = None,
    strict: bool = False,
    exact: bool = False,
    params: Mapping[str, Tensor] | None = None,
) -> Analysis:
    """:func:`channel_plan` with the masked copy, its output and the bound inputs."""
    masked = _masked_copy(model, masks, params)
    gm = capture(masked, example_inputs, leaf_modules=leaf_modules)
    bound = _bind(masked, example_inputs)
    recorder = _Recorder(gm)
    with torch.no_grad():
        output = recorder.run(*bound.args, *bound.kwargs.values())
    live = liveness(gm, recorder.values, replacements)
    classes, calls, consumers = trace_channels(gm, live, replacements)
    for x, cd, track in consumers:  # the conflict rule: dead at every consumer
        if track is not None:
            classes.block(track.ids[~live.dead(x, cd)])
    modules = dict(gm.named_modules())
    while True:
        _resolve_groups(classes, calls, modules, strict)
        slices, fold_error = _slices(classes, calls, modules, recorder.values, live)
        if not exact or not _keep_inexact(classes, calls, fold_error, recorder.values):
            break
    bound_inputs = (tuple(bound.args), dict(bound.kwargs))
    plan = ChannelPlan(slices, fold_error, _propagated(model, masks, slices, calls))
    return Analysis(plan, masked, output, bound_inputs, _sizes(gm, recorder.values))


def _resolve_groups(classes: Classes, calls: Mapping[str, Call], modules: Mapping[str, nn.Module],
                    strict: bool) -> None:
    """Block channels until every grouped conv is balanced and every GroupNorm loses whole groups."""
    changed = True
    while changed:
        changed = False
        for name, call in calls.items():
            module = modules[name]
            if isinstance(module, nn.GroupNorm) and call.tin is not None:
                if not _whole_groups(_keep(classes, call.tin, call.c_in), module.num_groups):
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
                for t in (call.tin, call.tout):
                    if t is not None:
                        classes.block(t.ids)
                changed = True


def _slices(classes: Classes, calls: Mapping[str, Call], modules: Mapping[str, nn.Module],
            values: Mapping[fx.Node, Any], live: Any) -> tuple[dict[str, ChannelSlice], dict[str, float]]:
    """The slice of every module that changes, and the deviation of every fold."""
    slices: dict[str, ChannelSlice] = {}
    fold_error: dict[str, float] = {}
    for name, call in calls.items():
        keep_in = _keep(classes, call.tin, call.c_in)
        keep_out = _keep(classes, call.tout, call.c_out) if call.kind == "producer" else keep_in
        if call.kind == "producer" and not keep_out.any():
            raise EmptyLayerError(f"all {call.c_out} output channels of layer {name!r} would be removed")
        delta = None
        if call.kind == "producer" and not call.depthwise and not keep_in.all():
            x = call.node.args[0]
            delta, fold_error[name] = _fold(modules[name], values[x], ~keep_in, call.cd_in, call.cd_out,
                                            live.used[call.node], keep_out)
        if not (keep_in.all() and keep_out.all()) or delta is not None:
            slices[name] = ChannelSlice(keep_in, keep_out if call.kind == "producer" else None, delta)
    return slices, fold_error



def propagate(
    model: nn.Module,
    masks: Mapping[str, Mask],
    example_inputs: Any,
    *,
    leaf_modules: Iterable[str | type[nn.Module]] = (),
    replacements: Mapping[type[nn.Module], Replacement] | None = None,
    params: Mapping[str, Tensor] | None = None,
) -> Masks:
    """The full masks implied by ``masks``: every channel that shrinking removes, masked everywhere.

    Applied with :func:`~purecompress.apply_masks`, they give a masked model whose outputs equal
    the compact model's from :func:`~purecompress.graph.shrink` (use them to fine-tune).

    Args:
        model: the dense model (not modified).
        masks: core masks keyed by parameter name.
        example_inputs: a tensor, tuple or dict of inputs.
        leaf_modules: passed to :func:`~purecompress.graph.capture`.
        replacements: extra replacement-table entries.
        params: values to use instead of the model's parameters and buffers.

    Returns:
        The given masks (combined where a key repeats) plus the masks of producers' output rows
        and biases, norm weights and biases, and consumers' input columns of removed channels.

    >>> net = nn.Sequential(nn.Conv2d(3, 4, 1), nn.BatchNorm2d(4), nn.ReLU(), nn.Conv2d(4, 2, 1))
    >>> keep = torch.tensor([True, False, True, True]).reshape(4, 1, 1, 1)
    >>> m = propagate(net, {'0.weight': Mask(keep, (4, 3, 1, 1))}, torch.randn(1, 3, 4, 4))
    >>> sorted(m), m['3.weight'].keep.flatten().tolist()
    (['0.bias', '0.weight', '1.bias', '1.weight', '3.weight'], [True, False, True, True, True, False, True, True])
    """
    return channel_plan(model, masks, example_inputs, leaf_modules=leaf_modules, replacements=replacements,
                        params=params).masks
