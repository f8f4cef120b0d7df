"""Shrinking pruned heads and neurons: a compact transformer that runs through its own forward.

:func:`shrink_heads` copies the model, writes the masked weights into the copy, slices every
:class:`~purecompress.HeadBlock` cut to the kept units, and updates what the model's forward and
config read: the layers' feature counts (``in_features``/``out_features``, ``Conv1D.nf``/``nx``),
the attention module's head counts (``num_attention_heads``/``num_heads``, ``all_head_size``,
GPT-2's ``split_size``, timm's ``attn_dim``; a module that has none, such as Llama's, gets
``num_heads`` and ``num_key_value_heads`` of its own), and the config. An attention module whose
forward derives the head size from its input width (``nn.MultiheadAttention``, torchvision's
``ShiftedWindowAttention(V2)``) is replaced by a :class:`~purecompress.PrunedMultiheadAttention`
or :class:`~purecompress.PrunedWindowAttention` (same call, same values, the pruned width). timm's
``Attention`` changes in place where its forward reshapes with ``attn_dim`` (timm 1.0.x; an older
one, reshaping with the input's width, fails the compact run with a ``ShrinkError``). The config:

- when every attention block keeps the same count and the config states ``head_dim``
  (Llama): ``num_attention_heads`` and ``num_key_value_heads``;
- otherwise (BERT, GPT-2, ViT derive the head size from ``hidden_size / num_attention_heads``, so
  the count cannot change there): ``config.pruned_heads = {layer: [removed heads]}``, the
  per-layer record Hugging Face's own head pruning kept;
- when every MLP keeps the same count: ``intermediate_size`` (and GPT-2's ``n_inner``).

A unit is removed when the masks silence it (:func:`~purecompress.heads_kept`: all its output
projection columns, or its V rows and bias, or SwiGLU's up rows and bias): its output is then
zero, so the compact model equals the masked one; masks on other entries of the blocks stay
applied (as zeros) in the compact model.
"""

from __future__ import annotations

import copy
import warnings
from collections.abc import Mapping
from typing import Any

import torch
import torch.utils._pytree as torch_pytree
from torch import Tensor, nn

from purecompress.graph import LayerShrink, ShrinkError, ShrinkReport
from purecompress.heads._attention import PrunedMultiheadAttention, compact_attention
from purecompress.heads._blocks import HeadBlock, head_blocks, heads_kept
from purecompress.pruning import Mask, apply_masks, params_of

__all__ = ["shrink_heads"]


def call_with(model: nn.Module, inputs: Any) -> Any:
    """``model`` called on ``inputs``: a dict as keywords, a tuple as positional arguments, else one."""
    if isinstance(inputs, Mapping):
        return model(**inputs)
    return model(*inputs) if isinstance(inputs, tuple) else model(inputs)


def _batch(inputs: Any) -> int:
    leaves = [x for x in torch_pytree.tree_leaves(inputs) if isinstance(x, Tensor) and x.dim() > 0]
    return int(leaves[0].shape[0]) if leaves else 1


def _max_rel_error(a: Any, b: Any) -> float:
    errors = [float((x.double() - y.double()).norm() / y.double().norm().clamp_min(1e-12))
              for x, y in zip(torch_pytree.tree_leaves(a), torch_pytree.tree_leaves(b))
              if isinstance(x, Tensor) and isinstance(y, Tensor) and x.is_floating_point()]
    return max(errors, default=0.0)


def _weighted(module: nn.Module) -> bool:
    return isinstance(module, nn.Linear) or type(module).__name__ == "Conv1D"


def _positions(model: nn.Module, inputs: Any) -> tuple[Any, dict[str, int]]:
    """Run ``model`` (ours: a private copy) in eval mode; its output and, per Linear/Conv1D, the
    output positions of all its calls (weight multiply-accumulates = weight numel * positions)."""
    seen: dict[str, int] = {}
    handles = []
    for name, module in model.named_modules():
        if _weighted(module):
            def hook(mod: nn.Module, args: Any, out: Tensor, name: str = name) -> None:
                seen[name] = seen.get(name, 0) + out.numel() // out.shape[-1]
            handles.append(module.register_forward_hook(hook))
    try:
        with torch.no_grad():
            output = call_with(model, inputs)
    finally:
        for handle in handles:
            handle.remove()
    return output, seen


def _resize(module: nn.Module) -> None:
    """Make a layer's feature counts match its (sliced) weight."""
    rows, cols = (int(n) for n in module.get_parameter("weight").shape)
    if isinstance(module, nn.Linear):
        module.out_features, module.in_features = rows, cols
    elif type(module).__name__ == "Conv1D":
        setattr(module, "nx", rows)  # noqa: B010 - Conv1D's attributes, unknown to the type checker
        setattr(module, "nf", cols)  # noqa: B010


def _slice(compact: nn.Module, block: HeadBlock, keep: Tensor) -> list[str]:
    resized = []
    replacement = compact_attention(compact.get_submodule(block.name)) if block.kind == "attention" else None
    if replacement is not None:  # put in first: the cuts name its parameters as the original's
        parent, _, leaf = block.name.rpartition(".")
        setattr(compact.get_submodule(parent) if parent else compact, leaf, replacement)
        resized.append(block.name)
    for cut in block.cuts:
        owner, _, leaf = cut.param.rpartition(".")
        module = compact.get_submodule(owner)
        old = getattr(module, leaf)
        new = old.detach().index_select(cut.dim, cut.index(keep).to(old.device)).clone()
        setattr(module, leaf, nn.Parameter(new, requires_grad=old.requires_grad) if isinstance(old, nn.Parameter)
                else new)
        if _weighted(module):
            _resize(module)
        resized.append(owner)
    module = compact.get_submodule(block.name)
    kept = int(keep.sum())
    if block.kind == "attention":
        heads, found = kept * block.group, False
        width = heads * block.head_dim
        for attr, value in (("num_attention_heads", heads), ("num_heads", heads), ("all_head_size", width),
                            ("split_size", width), ("attn_dim", width), ("num_key_value_heads", kept)):
            if attr in vars(module):
                setattr(module, attr, value)
                found = found or attr in ("num_attention_heads", "num_heads")
        if isinstance(module, PrunedMultiheadAttention):  # which original heads are left (for 3D attn masks)
            module.source_heads = tuple(module.source_heads[int(i)] for i in keep.nonzero().reshape(-1))
        if not found:  # Llama's attention reads its counts from the weights: record them per layer
            setattr(module, "num_heads", heads)  # noqa: B010 - a new attribute of a foreign class
            setattr(module, "num_key_value_heads", kept)  # noqa: B010
    elif "intermediate_size" in vars(module):
        setattr(module, "intermediate_size", kept)  # noqa: B010
    return resized


def _update_config(compact: nn.Module, blocks: tuple[HeadBlock, ...], keep: Mapping[str, Tensor]) -> None:
    config = getattr(compact, "config", None)
    if config is None or getattr(config, "num_attention_heads", None) is None:
        return
    attention = [b for b in blocks if b.kind == "attention"]
    counts = {int(keep[b.name].sum()) for b in attention}
    if attention and any(not bool(keep[b.name].all()) for b in attention):
        if len(counts) == 1 and isinstance(getattr(config, "head_dim", None), int):
            kept = counts.pop()
            config.num_attention_heads = kept * attention[0].group
            if getattr(config, "num_key_value_heads", None) is not None:
                config.num_key_value_heads = kept
        else:
            config.pruned_heads = {
                layer: [u * b.group + h for u in (~keep[b.name]).nonzero().reshape(-1).tolist() for h in range(b.group)]
                for layer, b in enumerate(attention)}
    mlps = [b for b in blocks if b.kind == "mlp"]
    sizes = {int(keep[b.name].sum()) for b in mlps}
    if mlps and len(sizes) == 1 and any(not bool(keep[b.name].all()) for b in mlps):
        size = sizes.pop()
        for key in ("intermediate_size", "n_inner"):
            if key in vars(config):
                setattr(config, key, size)


def shrink_heads(
    model: nn.Module,
    masks: Mapping[str, Mask],
    example_inputs: Any,
    *,
    blocks: tuple[HeadBlock, ...] | None = None,
    params: Mapping[str, Tensor] | None = None,
) -> tuple[nn.Module, ShrinkReport]:
    """The compact model computing what ``model`` computes with head/neuron ``masks`` applied.

    Args:
        model: the dense model; never modified (nor its config).
        masks: core masks of the blocks' parameters (from :func:`~purecompress.head_masks`, or
            any masks that silence whole units, see :func:`~purecompress.heads_kept`).
        example_inputs: a tensor, a tuple of positional inputs or a dict of keyword inputs
            (``{'input_ids': ...}``): the compact model is checked on them.
        blocks: from :func:`~purecompress.head_blocks` (default: found in ``model``).
        params: values to use instead of the model's own (e.g. fine-tuned params).

    Returns:
        ``(compact, report)``: a new model of the same class (its own config), in ``model``'s
        training mode, and a :class:`~purecompress.ShrinkReport`: one row per Linear/Conv1D with
        its params and weight multiply-accumulates per sample before and after, the output's
        relative error against the masked model, the layers resized (``replaced``).

    Warns:
        UserWarning: naming the blocks whose masks remove no whole unit (left dense, masked).

    Raises:
        ShrinkError: a mask names no parameter of the model or one that no block cuts (shrink
            channels elsewhere with :func:`~purecompress.shrink`), or the masks would remove every
            unit of a block.
    """
    blocks = head_blocks(model) if blocks is None else blocks
    values = dict(params_of(model))
    unknown = [k for k in (*masks, *(params or {})) if k not in values]
    if unknown:
        raise ShrinkError(f"masks or params for names that are not parameters or buffers of the model: {unknown}")
    cut = {c.param for b in blocks for c in b.cuts}
    outside = [k for k in masks if k not in cut]
    if outside:
        raise ShrinkError(f"masks for parameters that no attention or MLP block cuts: {outside}; shrink_heads "
                          "removes heads and neurons only (shrink other channels with pc.shrink)")
    values.update(params or {})
    keep = heads_kept(blocks, masks)
    empty = [b.name for b in blocks if not bool(keep[b.name].any())]
    if empty:
        raise ShrinkError(f"the masks remove every unit of {empty}: a block without heads or neurons cannot shrink")
    unshrunk = [b.name for b in blocks if bool(keep[b.name].all())
                and any(c.param in masks and not bool(masks[c.param].keep.all()) for c in b.cuts)]
    if unshrunk:
        warnings.warn(f"shrink_heads: the masks on {unshrunk} silence no whole head or neuron (none has all of its "
                      "output columns, V rows or SwiGLU up rows masked): those blocks stay dense, their masked "
                      "entries zero", UserWarning, stacklevel=2)
    compact = copy.deepcopy(model)
    own = dict(compact.named_parameters()) | dict(compact.named_buffers())
    with torch.no_grad():
        for name, value in apply_masks(values, dict(masks)).items():
            own[name].copy_(value)
    compact.eval()
    masked_out, before_pos = _positions(compact, example_inputs)
    before = {n: (sum(p.numel() for p in m.parameters(recurse=False)), m.get_parameter("weight").numel())
              for n, m in compact.named_modules() if _weighted(m)}
    replaced: list[str] = []
    for block in blocks:
        if not bool(keep[block.name].all()):
            replaced += _slice(compact, block, keep[block.name])
    _update_config(compact, blocks, keep)
    try:
        out, after_pos = _positions(compact, example_inputs)
    except Exception as err:
        raise ShrinkError(f"the compact model does not run on the example inputs: {type(err).__name__}: {err}") from err
    compact.train(model.training)
    batch = _batch(example_inputs)
    layers = []
    for name, (p_before, w_before) in before.items():
        module = compact.get_submodule(name)
        layers.append(LayerShrink(name, type(module).__name__, p_before,
                                  sum(p.numel() for p in module.parameters(recurse=False)),
                                  w_before * before_pos.get(name, 0) // batch,
                                  module.get_parameter("weight").numel() * after_pos.get(name, 0) // batch))
    return compact, ShrinkReport.of(
        model, compact, layers,
        output_error=_max_rel_error(out, masked_out),
        inexact={},
        replaced=tuple(dict.fromkeys(replaced)),
        masks=dict(masks),
        params=dict(values),  # a removed head or neuron emits no constant: nothing moves
        norms={},
    )
