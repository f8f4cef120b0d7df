"""Shrinking: a compact model with the removed channels really gone, and a report.

:func:`shrink` plans with :func:`~purecompress.graph.analyse`, rebuilds every layer
that loses channels from the replacement table (:mod:`~purecompress.graph`) inside a
private copy of the model, and checks the compact model against the masked one on the example
inputs. Removed channels that still carried a constant (a bias, BatchNorm beta through ReLU) are
folded into the consumer's bias; that is exact for Linear layers, 1x1 or unpadded convs and after
global pooling. Behind a zero-padded conv the constant differs at the borders: the report lists
those layers with the measured deviation (``ShrinkReport.inexact``), and the propagated masks and
params (``ShrinkReport.masks``, ``ShrinkReport.params``) give a masked model the compact one
matches exactly.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping
from typing import Any

import attrs
import torch
import torch.utils._pytree as torch_pytree
from torch import Tensor, nn

from purecompress.graph._capture import Method
from purecompress.graph._propagate import EXACT_TOL, ShrinkError, analyse, masked_copy
from purecompress.graph._replace import Replacement, composite_of, replacement_for
from purecompress.pruning import Mask, Masks

__all__ = ["LayerShrink", "ShrinkReport", "shrink"]

log = logging.getLogger("purecompress.graph")



@attrs.frozen
class LayerShrink:
    """One counted layer (Conv, Linear, BatchNorm) before and after shrinking.

    Attributes:
        name, type_name: module name and class.
        params_before, params_after: parameter entries.
        flops_before, flops_after: multiply-accumulates per sample (NNI's counting).
        fold_error: max abs deviation of the constants folded into this layer's bias
            (None: nothing folded; 0.0: exact).
    """

    name: str
    type_name: str
    params_before: int
    params_after: int
    flops_before: int
    flops_after: int
    fold_error: float | None = None


@attrs.frozen
class ShrinkReport:
    """What shrinking did.

    Attributes:
        layers: per counted layer, in model order.
        params_before, params_after: all parameters of the model.
        flops_before, flops_after: total counted FLOPs per sample.
        output_error: relative error ``|compact - masked| / |masked|`` on the example inputs.
        inexact: layers whose folded constants deviate (zero-padded convs), with the deviation.
        replaced: names of the modules that were rebuilt.
        masks, params: what :func:`~purecompress.propagate` returns for the same masks (see
            :class:`~purecompress.graph.Propagated`): ``apply_masks(report.params, report.masks)``
            is the compact model's function exactly, on every input. The masks alone, applied to
            the model's own params, are *not*: they zero the constants that pruned channels still
            emit (BatchNorm's beta through ReLU), which ``params`` moves into the next bias or
            BatchNorm running mean. The compact model equals the *user's* masked model up to
            ``inexact`` (``output_error`` measures it). Fine-tune from these, then
            ``shrink(model, report.masks, x, params=tuned)`` (``tests/test_shrink.py``).
        norms: LayerNorm / GroupNorm name -> channels removed through it (``prune_norms``: its
            statistics change, so ``output_error`` is not a failure there) or kept, and why.
        dense: every masked layer (a layer whose mask removes output channels) that the compact
            model keeps some of those channels of, with the reason: the op that blocks them
            (``blocked by op X at node 'Y'``), a LayerNorm they meet, unbalanced groups, a
            constant that cannot be folded exactly (``exact=True``), no replacement for its
            class, ... Empty when every channel the masks remove is gone. ``shrink`` logs a
            warning naming them.
        sliced: (``prune_norms``) model tensors read outside a layer call that lost channels
            (a layer scale ``x * gamma`` with ``gamma`` ``[C, 1, 1]``, a traced ``LayerNorm2d``'s
            weight and bias, whose ``normalized_shape`` follows): name -> what was kept.
    """

    layers: tuple[LayerShrink, ...]
    params_before: int
    params_after: int
    flops_before: int
    flops_after: int
    output_error: float
    inexact: dict[str, float]
    replaced: tuple[str, ...]
    masks: Masks
    params: dict[str, Tensor]
    norms: dict[str, str]
    dense: dict[str, str] = attrs.field(factory=dict)
    sliced: dict[str, str] = attrs.field(factory=dict)

    @classmethod
    def of(cls, model: nn.Module, compact: nn.Module, layers: Iterable[LayerShrink], **rest: Any) -> ShrinkReport:
        """The report of shrinking ``model`` into ``compact``: the totals from the models and the
        ``layers`` rows; ``rest`` gives the other attributes."""
        rows = tuple(layers)
        return cls(layers=rows,
                   params_before=sum(p.numel() for p in model.parameters()),
                   params_after=sum(p.numel() for p in compact.parameters()),
                   flops_before=sum(r.flops_before for r in rows),
                   flops_after=sum(r.flops_after for r in rows), **rest)

    def table(self) -> str:
        """A markdown table of the layers and the totals; the ``left dense`` column gives the
        reason of every layer in :attr:`dense`."""
        rows = [
            "| layer | type | params before | params after | FLOPs before | FLOPs after | fold error | left dense |",
            "|---|---|---:|---:|---:|---:|---:|---|",
        ]
        listed = set()
        for r in self.layers:
            fold = "" if r.fold_error is None else f"{r.fold_error:.2e}"
            listed.add(r.name)
            rows.append(
                f"| {r.name} | {r.type_name} | {r.params_before} | {r.params_after} | "
                f"{r.flops_before} | {r.flops_after} | {fold} | {self.dense.get(r.name, '')} |"
            )
        rows.extend(f"| {name} | | | | | | | {why} |" for name, why in self.dense.items() if name not in listed)
        rows.append(
            f"| **total** | | {self.params_before} | {self.params_after} | {self.flops_before} | "
            f"{self.flops_after} | output rel. error {self.output_error:.1e} | {len(self.dense)} masked layers "
            "left dense |"
        )
        return "\n".join(rows)


def _set_submodule(root: nn.Module, name: str, new: nn.Module) -> None:
    parent, _, leaf = name.rpartition(".")
    setattr(root.get_submodule(parent) if parent else root, leaf, new)


def _slice_tensors(compact: nn.Module, sliced: Mapping[str, tuple[int, Tensor]]) -> dict[str, str]:
    """Slice the model tensors of ``sliced`` in ``compact`` (a LayerNorm owner's ``normalized_shape``
    follows its weight); what was kept, per name."""
    notes = {}
    for name, (dim, keep) in sliced.items():
        owner_name, _, leaf = name.rpartition(".")
        owner = compact.get_submodule(owner_name)
        old = getattr(owner, leaf)
        new = old.detach().index_select(dim, keep.nonzero().flatten().to(old.device)).clone()
        if leaf in owner._parameters:
            owner._parameters[leaf] = nn.Parameter(new, requires_grad=old.requires_grad)
        else:
            owner._buffers[leaf] = new
        if isinstance(owner, nn.LayerNorm) and leaf in ("weight", "bias"):
            owner.normalized_shape = (int(keep.sum()),)
        notes[name] = (f"{tuple(old.shape)} -> {tuple(new.shape)}: {int(keep.sum())} of {keep.numel()} channels "
                       f"kept along dim {dim} (prune_norms)")
    return notes


def _rel_error(a: Any, b: Any) -> float:
    # torch's pytree: it knows the output records of libraries (Hugging Face's ModelOutput)
    errors = [
        float((x.float() - y.float()).norm() / y.float().norm().clamp_min(1e-12))
        for x, y in zip(torch_pytree.tree_leaves(a), torch_pytree.tree_leaves(b))
        if isinstance(x, Tensor) and isinstance(y, Tensor) and x.is_floating_point()
    ]
    return max(errors, default=0.0)


_CONV = (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.ConvTranspose1d, nn.ConvTranspose2d, nn.ConvTranspose3d)
_NORM = (nn.modules.batchnorm._BatchNorm, nn.modules.instancenorm._InstanceNorm, nn.GroupNorm, nn.LayerNorm)


def _count(module: nn.Module, positions: int, numel: int) -> tuple[int, int]:
    """(params, FLOPs per sample) by NNI's rule: weight multiply-accumulates, 2 per norm element."""
    params = sum(p.numel() for p in module.parameters(recurse=False))
    if isinstance(module, (*_CONV, nn.Linear)):
        return params, module.weight.numel() * positions
    return params, 2 * numel


def _layers(model: nn.Module, compact: nn.Module, sizes: Mapping[str, tuple[int, int]], folds: Mapping[str, float],
            ratio: Mapping[str, float]) -> list[LayerShrink]:
    rows = []
    for name, (positions, numel) in sizes.items():
        module = model.get_submodule(name)
        if not isinstance(module, (*_CONV, nn.Linear, *_NORM)):
            continue
        params, flops = _count(module, positions, numel)
        new_params, new_flops = _count(compact.get_submodule(name), positions, int(numel * ratio.get(name, 1.0)))
        rows.append(LayerShrink(name, type(module).__name__, params, new_params, flops, new_flops, folds.get(name)))
    return rows


def shrink(
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
) -> tuple[nn.Module, ShrinkReport]:
    """The compact model computing what ``model`` computes with ``masks`` applied.

    Args:
        model: the dense model; never modified.
        masks: core masks keyed by parameter name (channel masks from a pruner).
        example_inputs: a tensor, tuple or dict of inputs (e.g. ``[2, 3, 32, 32]``).
        leaf_modules: passed to :func:`~purecompress.graph`.
        replacements: extra replacement-table entries for custom modules.
        strict: raise on unbalanced grouped convs instead of keeping channels back until the
            groups balance (see :func:`~purecompress.graph.channel_plan`).
        exact: keep the channels whose constants cannot be folded exactly (behind zero-padded
            convs): the compact model then equals the masked one everywhere, a little larger.
        prune_norms: remove channels through LayerNorm / GroupNorm too (see
            :func:`~purecompress.graph.channel_plan`): their statistics change, so the compact
            model differs from the masked one (``output_error`` measures it, ``norms`` says where).
        params: parameter (and buffer) values to use instead of the model's own (e.g. the
            fine-tuned params of a functional loop); the compact model is built from them.
        capture_method: passed to :func:`~purecompress.graph.capture` as ``method``.

    Returns:
        ``(compact, report)``: a new model of the same class where every layer that lost
        channels is a new, smaller module under the same name (weights of the masked model,
        folded biases); the other modules are copies. Same training mode as ``model``.

    Masks that remove attention heads (whole heads of Q/K/V and O, from
    :func:`~purecompress.head_masks`) go to :func:`~purecompress.shrink_heads`, which slices heads
    and MLP neurons and updates the attention modules and the config (the graph options do not
    apply there). Head masks together with channel masks of layers outside the head blocks (a
    hybrid such as MobileViT: convolutions, then transformer blocks) shrink both: the channels by
    the graph first (with the graph options), then the heads of that compact model; the report
    covers both (``masks``: the propagated channel masks and the head masks, which the compact
    model matches), and ``output_error`` is measured against the original model with those masks.

    Raises:
        ShrinkError: a mask (or a ``params`` value) does not fit the model (a name that is not a
            parameter or buffer, a shape other than the parameter's, a keep tensor that is not bool;
            checked before any graph work, naming the parameter), a layer would be empty, groups
            are unbalanced (``strict``), or the compact model cannot run (e.g. a ``view`` with a
            channel count written as a literal).

    >>> net = nn.Sequential(nn.Conv2d(3, 4, 1), nn.BatchNorm2d(4), nn.ReLU(), nn.Conv2d(4, 2, 1))
    >>> keep = torch.tensor([True, False, True, True]).reshape(4, 1, 1, 1)
    >>> small, report = shrink(net, {'0.weight': Mask(keep, (4, 3, 1, 1))}, torch.randn(2, 3, 4, 4))
    >>> small[0].out_channels, small[3].in_channels, report.output_error < 1e-6
    (3, 3, True)
    """
    from purecompress.heads import head_blocks, shrink_heads  # heads builds on this module's records

    blocks = head_blocks(model, required=False)
    if any(c.param in masks for b in blocks if b.kind == "attention" for c in b.cuts):
        cut = {c.param for b in blocks for c in b.cuts}
        channels = {k: m for k, m in masks.items() if k not in cut}
        if not channels:
            return shrink_heads(model, masks, example_inputs, blocks=blocks, params=params)
        # a hybrid (MobileViT: convolutions and transformer blocks): channels first, then heads
        graph_options = dict(leaf_modules=leaf_modules, replacements=replacements, strict=strict, exact=exact,
                             prune_norms=prune_norms, capture_method=capture_method)
        return _shrink_channels_then_heads(model, channels, {k: m for k, m in masks.items() if k in cut},
                                           example_inputs, params, graph_options)
    analysis = analyse(model, masks, example_inputs, leaf_modules=leaf_modules, replacements=replacements,
                       strict=strict, exact=exact, prune_norms=prune_norms, params=params,
                       capture_method=capture_method)
    plan, compact = analysis.plan, analysis.masked
    for name, sl in plan.slices.items():
        module = compact.get_submodule(name)
        entry = replacement_for(module, replacements)
        if entry is None:
            raise ShrinkError(f"no replacement for module {name!r} ({type(module).__name__})")
        _set_submodule(compact, name, entry.fn(module, sl))
    for module in compact.modules():  # composites store sizes derived from their (shrunk) children
        fix = composite_of(module) if plan.slices else None
        for key, value in (fix(module) if fix is not None else {}).items():
            setattr(module, key, value)
    sliced = _slice_tensors(compact, plan.sliced)
    args, kwargs = analysis.inputs
    compact.eval()
    try:
        with torch.no_grad():
            output = compact(*args, **kwargs)
    except Exception as err:
        raise ShrinkError(
            f"the compact model does not run on the example inputs: {type(err).__name__}: {err}. "
            "A forward that writes channel counts as literals (x.view(-1, 512)) cannot shrink; "
            "compute them from the input (x.flatten(1))."
        ) from err
    compact.train(model.training)
    if plan.dense:
        log.warning("shrink left %d masked layers with channels their masks remove (ShrinkReport.dense): %s",
                    len(plan.dense), "; ".join(f"{k}: {v}" for k, v in list(plan.dense.items())[:5])
                    + ("; ..." if len(plan.dense) > 5 else ""))
    ratio = {name: float(sl.keep_in.float().mean()) for name, sl in plan.slices.items() if sl.keep_in is not None}
    layers = _layers(model, compact, analysis.sizes, plan.fold_error, ratio)
    inexact = {k: v for k, v in plan.fold_error.items() if v > EXACT_TOL}
    return compact, ShrinkReport.of(
        model, compact, layers,
        output_error=_rel_error(output, analysis.output),
        inexact=inexact,
        replaced=tuple(plan.slices),
        masks=plan.masks,
        dense=plan.dense,
        params=plan.params,
        norms=plan.norms,
        sliced=sliced,
    )


def _shrink_channels_then_heads(model: nn.Module, channels: Mapping[str, Mask], heads: Mapping[str, Mask],
                                example_inputs: Any, params: Mapping[str, Tensor] | None,
                                graph_options: dict[str, Any]) -> tuple[nn.Module, ShrinkReport]:
    """:func:`shrink` of channel masks (outside the head blocks) and head masks together: the graph
    shrink of the channels, then :func:`~purecompress.shrink_heads` of that compact model. The head
    masks keep their units; a channel shrink that changed a head block's cut dim is refused."""
    from purecompress.heads import head_blocks, shrink_heads
    from purecompress.heads._shrink import call_with
    from purecompress.pruning import apply_masks

    first, report = shrink(model, channels, example_inputs, params=params, **graph_options)
    shapes = {k: tuple(v.shape) for k, v in [*first.named_parameters(), *first.named_buffers()]}
    refit = {}
    for name, mask in heads.items():
        grid = tuple(mask.keep.shape)
        if len(grid) != len(shapes[name]) or any(g != 1 and old != new
                                                  for g, old, new in zip(grid, mask.shape, shapes[name])):
            raise ShrinkError(f"the channel masks changed {name!r} along the dim its head mask cuts "
                              f"({tuple(mask.shape)} -> {shapes[name]}): prune that layer's channels or its "
                              "heads, not both")
        refit[name] = Mask(mask.keep, shapes[name])
    compact, second = shrink_heads(first, refit, example_inputs, blocks=head_blocks(first))
    # the reference: the original model with the propagated channel masks, then the head masks
    masked = masked_copy(model, heads, apply_masks(report.params, report.masks))
    compact.eval()
    with torch.no_grad():
        reference, output = call_with(masked, example_inputs), call_with(compact, example_inputs)
    compact.train(model.training)
    after = {r.name: r for r in second.layers}
    layers = [attrs.evolve(r, params_after=after[r.name].params_after, flops_after=after[r.name].flops_after)
              if r.name in after else r for r in report.layers]
    combined = dict(report.masks)
    for name, mask in heads.items():
        combined[name] = combined[name] & mask if name in combined else mask
    return compact, ShrinkReport.of(
        model, compact, layers, output_error=_rel_error(output, reference), inexact=report.inexact,
        replaced=tuple(dict.fromkeys((*report.replaced, *second.replaced))), masks=combined, params=report.params,
        norms=report.norms, dense=report.dense, sliced=report.sliced)
