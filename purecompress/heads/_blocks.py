"""Attention heads and MLP neurons of transformer models, found by structure, as prunable units.

A :class:`HeadBlock` is one attention module (its units are heads; under grouped-query attention a
unit is one key/value head *with the query heads that share it*) or one MLP (its units are the
intermediate neurons). Each block lists the parameters a unit owns as :class:`Cut` records: which
dim, and how that dim is laid out (``segments`` copies of ``units`` runs of ``unit`` entries: a
fused ``[Q | K | V]`` projection has three segments). Removing unit ``u`` removes, in every cut,
the entries ``seg * units * unit + u * unit + [0, unit)``.

Grouped-query attention: a key/value head serves ``num_attention_heads / num_key_value_heads``
query heads; a unit is the whole group, so pruning keeps the group size (``num_key_value_groups``)
and every layer stays a valid GQA layer. Query heads are never pruned inside a group.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Literal

import attrs
import torch
from torch import Tensor, nn

from purecompress.pruning import Mask, Masks

__all__ = [
    "Cut",
    "HeadBlock",
    "head_block_params",
    "head_blocks",
    "head_masks",
    "heads_kept",
    "multihead_unsupported",
]


@attrs.frozen
class Cut:
    """How one parameter is cut into a block's units.

    Attributes:
        param: the params key (``'encoder.layer.0.attention.self.query.weight'``).
        dim: the dim the units lie along.
        segments: how many times the units repeat along ``dim`` (3 for a fused Q|K|V projection).
        unit: entries of one unit in one segment (``head_dim``; ``group * head_dim`` for the query
            and output projections under GQA; 1 for MLP neurons and per-head parameters).
        role: ``'producer'`` (the units are its outputs: Q/K/V rows, an MLP's up rows),
            ``'consumer'`` (it *reads* the units: the attention output projection, the MLP down
            projection) or ``'head'`` (a per-head parameter that is neither: a relative position
            bias table ``[positions, heads]``, Swin V2's ``logit_scale`` ``[heads, 1, 1]`` and the
            rows of its position-bias MLP's last Linear). Per-head parameters are sliced with their
            heads but not scored (:func:`head_block_params` leaves them out).
        silences: a name shared by the cuts that, all masked for a unit, make the unit's output
            exactly zero (``'output'``: the consumer; ``'value'``: V's weight and bias, as a head
            averages zero values; ``'up'``: SwiGLU's up projection, a factor of the product);
            ``''`` for the others (zero Q/K rows only make the attention uniform).
        silent_segments: the segments whose entries silence (``(2,)``: the V third of a fused
            ``[Q | K | V]`` projection); ``()``: all of them.
    """

    param: str
    dim: int
    segments: int = 1
    unit: int = 1
    role: Literal["producer", "consumer", "head"] = "producer"
    silences: str = ""
    silent_segments: tuple[int, ...] = ()

    @property
    def consumer(self) -> bool:
        """Whether this parameter reads the units (:attr:`role` ``'consumer'``)."""
        return self.role == "consumer"

    def mask(self, keep: Tensor, shape: tuple[int, ...]) -> Mask:
        """The :class:`~purecompress.Mask` of this parameter that keeps the units ``keep`` (``[units]`` bool)."""
        grid = [1] * len(shape)
        grid[self.dim] = self.segments * keep.numel()
        return Mask(keep.repeat(self.segments).reshape(grid), shape)

    def index(self, keep: Tensor) -> Tensor:
        """The kept indices along ``dim`` (int64), in order."""
        units = keep.numel()
        entries = torch.arange(self.segments * units * self.unit).reshape(self.segments, units, self.unit)
        return entries[:, keep].reshape(-1)

    def unit_view(self, t: Tensor, units: int, *, segments: tuple[int, ...] = ()) -> Tensor:
        """``t`` (the parameter's shape) as ``[units, -1]``: each row holds one unit's entries (of
        the ``segments`` given; ``()``: all)."""
        moved = t.movedim(self.dim, 0)
        rest = moved.shape[1:]
        view = moved.reshape(self.segments, units, self.unit, *rest)
        if segments:
            view = view[list(segments)]
        return view.movedim(1, 0).reshape(units, -1)


@attrs.frozen
class HeadBlock:
    """One attention module's heads, or one MLP's neurons.

    Attributes:
        name: the module that holds the block's attributes (the attention module whose
            ``num_attention_heads``/``num_heads`` say its head count; the MLP module).
        kind: ``'attention'`` or ``'mlp'``.
        units: prunable units (heads; key/value groups under GQA; neurons).
        group: query heads per unit (``num_key_value_groups`` under GQA, else 1; 1 for an MLP).
        head_dim: entries per head (0 for an MLP).
        cuts: the parameters a unit owns.
    """

    name: str
    kind: Literal["attention", "mlp"]
    units: int
    group: int
    head_dim: int
    cuts: tuple[Cut, ...]

    @property
    def heads(self) -> int:
        """Query heads (attention) or neurons (MLP)."""
        return self.units * self.group


def _is_conv1d(module: nn.Module | None) -> bool:
    return type(module).__name__ == "Conv1D"  # transformers.pytorch_utils.Conv1D: weight [in, out]


def _outputs(module: nn.Module) -> int:
    """A Linear's or Conv1D's output features (from its weight: ``[out, in]`` or Conv1D's ``[in, out]``)."""
    weight = module.get_parameter("weight")
    return int(weight.shape[1] if _is_conv1d(module) else weight.shape[0])


def _linear(children: Mapping[str, nn.Module], *names: str) -> bool:
    return all(isinstance(children.get(n), nn.Linear) for n in names)


def _rows(prefix: str, module: nn.Module, unit: int, *, segments: int = 1, silences: str = "",
          silent_segments: tuple[int, ...] = (), role: Literal["producer", "head"] = "producer") -> list[Cut]:
    """Cuts of a producer (units are its outputs): Linear rows, Conv1D columns, and the bias."""
    dim = 1 if _is_conv1d(module) else 0
    cuts = [Cut(f"{prefix}.weight", dim, segments, unit, role, silences, silent_segments)]
    if getattr(module, "bias", None) is not None:
        cuts.append(Cut(f"{prefix}.bias", 0, segments, unit, role, silences, silent_segments))
    return cuts


def _fused_rows(prefix: str, module: nn.Module, head_dim: int) -> list[Cut]:
    """Cuts of a fused ``[Q | K | V]`` projection: its V third, all masked, silences a head."""
    return _rows(prefix, module, head_dim, segments=3, silences="value", silent_segments=(2,))


def _columns(prefix: str, module: nn.Module, unit: int) -> list[Cut]:
    """The cut of a consumer (units are its inputs): Linear columns, Conv1D rows."""
    return [Cut(f"{prefix}.weight", 0 if _is_conv1d(module) else 1, 1, unit, "consumer", "output")]


def _int_attr(module: nn.Module, name: str, *attrs_: str) -> int:
    for attr in attrs_:
        value = getattr(module, attr, None)
        if isinstance(value, int) and not isinstance(value, bool) and value > 0:
            return value
    raise ValueError(f"attention module {name!r} ({type(module).__name__}) has none of {list(attrs_)}: "
                     "cannot tell its head size")


#: what a block finder returns: a block, why a module that looks like one is not (``str``), or None
_Found = HeadBlock | str | None


def _attention(name: str, module: nn.Module, modules: Mapping[str, nn.Module]) -> _Found:
    children = dict(module.named_children())
    p = f"{name}." if name else ""
    if _linear(children, "query", "key", "value"):  # BERT-style: the output dense is the parent's
        out = f"{name.rpartition('.')[0]}.output.dense"
        if not isinstance(modules.get(out), nn.Linear):
            return None
        hd = _int_attr(module, name, "attention_head_size", "head_dim")
        heads = _outputs(children["query"]) // hd
        cuts = [c for n in ("query", "key", "value")
                for c in _rows(p + n, children[n], hd, silences="value" if n == "value" else "")]
        return HeadBlock(name, "attention", heads, 1, hd, (*cuts, *_columns(out, modules[out], hd)))
    if _linear(children, "q_proj", "k_proj", "v_proj", "o_proj"):  # Llama, ViT, ...: GQA-aware
        hd = _int_attr(module, name, "head_dim", "attention_head_size")
        heads, kv = _outputs(children["q_proj"]) // hd, _outputs(children["k_proj"]) // hd
        if heads % kv:
            raise ValueError(f"attention module {name!r}: {heads} query heads do not split into {kv} key/value groups")
        group = heads // kv
        cuts = _rows(p + "q_proj", children["q_proj"], group * hd)
        cuts += [c for n in ("k_proj", "v_proj")
                 for c in _rows(p + n, children[n], hd, silences="value" if n == "v_proj" else "")]
        cuts += _columns(p + "o_proj", children["o_proj"], group * hd)
        return HeadBlock(name, "attention", kv, group, hd, tuple(cuts))
    if _is_conv1d(children.get("c_attn")) and _is_conv1d(children.get("c_proj")) and "q_attn" not in children:
        hd = _int_attr(module, name, "head_dim")  # GPT-2: c_attn is [Q | K | V] along its output
        heads = _outputs(children["c_attn"]) // (3 * hd)
        cuts = _fused_rows(p + "c_attn", children["c_attn"], hd) + _columns(p + "c_proj", children["c_proj"], hd)
        return HeadBlock(name, "attention", heads, 1, hd, tuple(cuts))
    if isinstance(module, nn.MultiheadAttention):
        return _multihead(name, module)
    if _linear(children, "qkv", "proj"):
        return _qkv_proj(name, module, children)
    return None


def _multihead(name: str, module: nn.MultiheadAttention) -> _Found:
    """``nn.MultiheadAttention`` with the packed ``in_proj_weight`` ``[3E, E]`` (torchvision's ViT)."""
    why = multihead_unsupported(module)
    if why:
        return f"{name!r} (nn.MultiheadAttention): {why}"
    heads, p = module.num_heads, f"{name}." if name else ""
    hd = module.embed_dim // heads
    cuts = [Cut(f"{p}in_proj_weight", 0, 3, hd, silences="value", silent_segments=(2,))]
    if module.in_proj_bias is not None:
        cuts.append(Cut(f"{p}in_proj_bias", 0, 3, hd, silences="value", silent_segments=(2,)))
    cuts += _columns(f"{p}out_proj", module.out_proj, hd)
    return HeadBlock(name, "attention", heads, 1, hd, tuple(cuts))


def multihead_unsupported(module: nn.MultiheadAttention) -> str:
    """Why the heads of ``module`` cannot be pruned (``''``: they can): only the packed same-width
    layout without extra key/value entries is supported."""
    if not module._qkv_same_embed_dim:
        return (f"kdim/vdim ({module.kdim}/{module.vdim}) differ from embed_dim ({module.embed_dim}): separate "
                "q/k/v projection weights are not supported, only the packed in_proj_weight")
    if module.bias_k is not None or module.bias_v is not None:
        return "add_bias_kv=True (bias_k/bias_v) is not supported"
    if module.add_zero_attn:
        return "add_zero_attn=True is not supported"
    return ""


#: parameters and buffers of a fused-QKV attention module itself that head pruning knows: the
#: per-head relative position bias table (``[positions, heads]``), Swin V2's ``logit_scale``
#: (``[heads, 1, 1]``), and the position index buffers (no head dim)
_PER_HEAD = {"relative_position_bias_table": 1, "logit_scale": 0}
_INDEX_BUFFERS = ("relative_position_index", "relative_coords_table")
#: parameter-free children that act per element or per row (dropouts, the attention softmax)
_PASSIVE = (nn.Dropout, nn.Identity, nn.Softmax)


def _qkv_proj(name: str, module: nn.Module, children: Mapping[str, nn.Module]) -> _Found:
    """timm ``Attention`` / ``WindowAttention``, torchvision ``ShiftedWindowAttention(V2)``: a fused
    ``qkv`` Linear (``[Q | K | V]`` along its output), a ``proj`` Linear, a ``num_heads`` attribute."""
    heads, p = getattr(module, "num_heads", None), f"{name}." if name else ""
    qkv, proj = children["qkv"], children["proj"]
    if not isinstance(heads, int) or isinstance(heads, bool) or heads <= 0:
        return None
    what, fused, inner = f"{name!r} ({type(module).__name__})", _outputs(qkv), _inputs(proj)
    if fused % (3 * heads) or inner * 3 != fused:
        return f"{what}: qkv's {fused} outputs are not [Q | K | V] of {heads} heads feeding proj's {inner} inputs"
    hd = fused // (3 * heads)
    own = {n for n, _ in module.named_parameters(recurse=False)} - set(_PER_HEAD)
    own |= {n for n, _ in module.named_buffers(recurse=False)} - set(_INDEX_BUFFERS)
    if own:
        return f"{what}: its own tensors {sorted(own)} are not known per-head parameters (cannot cut them)"
    cuts = _fused_rows(p + "qkv", qkv, hd)
    for child_name, child in children.items():
        if child_name in ("qkv", "proj") or isinstance(child, _PASSIVE):
            continue
        if child_name in ("q_norm", "k_norm") and all(t.shape[-1:] == (hd,) for t in child.parameters()):
            continue  # a norm over head_dim, shared by the heads (timm's qk_norm)
        if child_name == "gate" and isinstance(child, nn.Linear) and child.out_features == inner:
            cuts += _rows(p + "gate", child, hd)  # timm's gated attention: sigmoid(gate(x)) per head entry
            continue
        size = len(child) if isinstance(child, nn.Sequential) else 0
        last = child[size - 1] if isinstance(child, nn.Sequential) and size else None
        if child_name == "cpb_mlp" and isinstance(last, nn.Linear) and last.out_features == heads:
            cuts += _rows(f"{p}cpb_mlp.{size - 1}", last, 1, role="head")  # Swin V2's position bias MLP
            continue
        return (f"{what}: its child {child_name!r} ({type(child).__name__}) is not a known part of a fused-qkv "
                "attention (a norm across heads, for one, changes with their count)")
    for param, dim in _PER_HEAD.items():
        if param in dict(module.named_parameters(recurse=False)):
            cuts.append(Cut(p + param, dim, role="head"))
    cuts += _columns(p + "proj", proj, hd)
    return HeadBlock(name, "attention", heads, 1, hd, tuple(cuts))


_MLPS = (("gate_proj", "up_proj", "down_proj"), ("fc1", "fc2"), ("c_fc", "c_proj"))
#: elementwise, parameter-free modules an MLP may apply between and after its two Linears
_ELEMENTWISE = (nn.ReLU, nn.ReLU6, nn.GELU, nn.SiLU, nn.Mish, nn.Hardswish, nn.Hardsigmoid, nn.Sigmoid, nn.Tanh,
                nn.LeakyReLU, nn.ELU, nn.SELU, nn.CELU, nn.Softplus, nn.Dropout, nn.Identity)


def _inputs(module: nn.Module) -> int:
    weight = module.get_parameter("weight")
    return int(weight.shape[0] if _is_conv1d(module) else weight.shape[1])


def _mlp(name: str, module: nn.Module) -> _Found:
    children = dict(module.named_children())
    p = f"{name}." if name else ""
    for *ups, down in _MLPS:
        ok = all(isinstance(children.get(n), nn.Linear) or _is_conv1d(children.get(n)) for n in (*ups, down))
        if ok and "c_attn" not in children:
            neurons = _outputs(children[ups[0]])
            if neurons != _inputs(children[down]):  # timm's GluMlp: fc1 gives [x | gate], chunked in the forward
                return f"{name!r}: {ups[0]}'s {neurons} outputs are not {down}'s {_inputs(children[down])} inputs"
            norm = children.get("norm")
            if norm is not None and not isinstance(norm, nn.Identity):  # timm's Mlp(norm_layer=...)
                return f"{name!r}: a norm ({type(norm).__name__}) over the hidden neurons changes with their count"
            # a gated MLP multiplies act(gate) by up: zero up rows silence a neuron, whatever act(0) is
            cuts = [c for n in ups for c in _rows(p + n, children[n], 1, silences="up" if n == "up_proj" else "")]
            cuts += _columns(p + down, children[down], 1)
            return HeadBlock(name, "mlp", neurons, 1, 0, tuple(cuts))
    inter, out = children.get("intermediate"), children.get("output")  # BERT-style layer
    if "attention" in children and inter is not None and out is not None:
        dense_in, dense_out = getattr(inter, "dense", None), getattr(out, "dense", None)
        if isinstance(dense_in, nn.Linear) and isinstance(dense_out, nn.Linear):
            cuts = _rows(f"{p}intermediate.dense", dense_in, 1) + _columns(f"{p}output.dense", dense_out, 1)
            return HeadBlock(f"{p}intermediate", "mlp", _outputs(dense_in), 1, 0, tuple(cuts))
    if isinstance(module, nn.Sequential):
        return _sequential_mlp(name, module)
    return None


def _sequential_mlp(name: str, module: nn.Sequential) -> HeadBlock | None:
    """torchvision's ``MLP`` (``MLPBlock`` of ViT, Swin's MLP): a Sequential ``Linear``, elementwise
    activations and dropouts, ``Linear``, dropouts (children ``0`` and ``3``)."""
    items = list(module.named_children())
    linears = [i for i, (_, m) in enumerate(items) if isinstance(m, nn.Linear)]
    if len(linears) != 2 or linears[0] != 0 or not all(isinstance(m, (nn.Linear, *_ELEMENTWISE)) for _, m in items):
        return None
    (up, first), (down, second) = items[0], items[linears[1]]
    if not all(isinstance(m, (nn.Dropout, nn.Identity)) for _, m in items[linears[1] + 1:]):
        return None
    if _outputs(first) != _inputs(second):
        return None
    p = f"{name}." if name else ""
    return HeadBlock(name, "mlp", _outputs(first), 1, 0, (*_rows(p + up, first, 1), *_columns(p + down, second, 1)))


def head_blocks(model: nn.Module, *, required: bool = True) -> tuple[HeadBlock, ...]:
    """The attention and MLP blocks of ``model``, in model order, found by their structure.

    Recognised layouts (by child names and attributes, whatever the class):

    - attention with ``query``/``key``/``value`` Linears and the parent's ``output.dense`` (BERT);
    - attention with ``q_proj``/``k_proj``/``v_proj``/``o_proj`` (Llama with grouped-query
      attention, ViT, ...);
    - attention with a fused ``c_attn`` and ``c_proj`` (GPT-2's ``Conv1D``, weight ``[in, out]``);
    - attention with a fused ``qkv`` Linear (``[Q | K | V]`` along its output), a ``proj`` Linear and
      a ``num_heads`` attribute: timm's ``Attention`` (ViT, DeiT; ``q_norm``/``k_norm`` over
      ``head_dim`` and a ``gate`` Linear allowed) and ``WindowAttention`` (Swin), torchvision's
      ``ShiftedWindowAttention`` and ``ShiftedWindowAttentionV2``, with their per-head parameters
      (the relative position bias table, V2's ``logit_scale`` and the last Linear of ``cpb_mlp``);
    - ``nn.MultiheadAttention`` with the packed ``in_proj_weight`` (torchvision's ViT);
    - MLPs ``gate_proj``/``up_proj``/``down_proj`` (SwiGLU), ``fc1``/``fc2`` (timm's ``Mlp``),
      ``c_fc``/``c_proj``, a layer with ``attention``, ``intermediate.dense`` and ``output.dense``
      (BERT), and a Sequential ``Linear``, elementwise activations and dropouts, ``Linear``,
      dropouts (torchvision's ``MLP``/``MLPBlock``), unless it lies inside an attention block
      (Swin V2's ``cpb_mlp``).

    Modules of these layouts that head pruning cannot shrink exactly are left out, each with a
    reason (the error says them when no block is left): ``nn.MultiheadAttention`` with
    ``kdim``/``vdim`` other than ``embed_dim``, ``add_bias_kv`` or ``add_zero_attn``; a fused-qkv
    attention with other tensors of its own (BEiT's ``q_bias``) or other children (timm's
    ``scale_norm``, a norm across the heads); an MLP with a norm over its hidden neurons or a first
    projection wider than the second one reads (timm's ``GluMlp``).

    Args:
        model: any module; only read.
        required: raise when the model has no such block (False: return ``()``).

    Raises:
        ValueError: the model has none of these blocks (``required``), or an attention module
            does not say its head size.

    >>> from torch import nn
    >>> mlp = nn.Module(); mlp.fc1, mlp.fc2 = nn.Linear(4, 8), nn.Linear(8, 4)
    >>> [(b.name, b.kind, b.units) for b in head_blocks(nn.ModuleDict({'mlp': mlp}))]
    [('mlp', 'mlp', 8)]
    >>> attn = nn.ModuleDict({'attn': nn.MultiheadAttention(8, 2, batch_first=True)})
    >>> [(b.name, b.units, b.head_dim, [c.param for c in b.cuts]) for b in head_blocks(attn)]
    [('attn', 2, 4, ['attn.in_proj_weight', 'attn.in_proj_bias', 'attn.out_proj.weight'])]
    """
    modules = dict(model.named_modules())
    blocks: list[HeadBlock] = []
    skipped: list[str] = []
    cut: set[str] = set()
    for name, module in modules.items():
        found = _attention(name, module, modules) or _mlp(name, module)
        if isinstance(found, str):
            skipped.append(found)
        elif found is not None and not cut & {c.param for c in found.cuts}:  # not inside an attention block
            blocks.append(found)
            cut |= {c.param for c in found.cuts}
    if not blocks and required:
        why = f"; left out: {'; '.join(skipped)}" if skipped else ""
        raise ValueError(f"{type(model).__name__} has no attention or MLP block of a known layout (q/k/v + output "
                         "projection, fused c_attn + c_proj or qkv + proj, nn.MultiheadAttention, gate/up/down, "
                         f"fc1/fc2, c_fc/c_proj, intermediate/output, Sequential Linear-act-Linear){why}")
    return tuple(blocks)


def head_block_params(blocks: tuple[HeadBlock, ...]) -> list[str]:
    """The weights and biases the blocks cut, the names to score (``pc.level(params, head_block_params(blocks))``);
    per-head parameters (:attr:`Cut.role` ``'head'``: position bias tables, logit scales) are cut
    with their heads but say nothing of a head's weight, and are left out."""
    return list(dict.fromkeys(c.param for b in blocks for c in b.cuts if c.role != "head"))


def head_masks(blocks: tuple[HeadBlock, ...], keep: Mapping[str, Tensor],
               shapes: Mapping[str, tuple[int, ...]] | Mapping[str, Tensor]) -> Masks:
    """Core masks that remove the units ``keep`` does not keep: whole heads (``head_dim`` rows of
    Q/K/V and columns of O, per unit) and whole neurons (rows of up/gate, columns of down).

    Args:
        blocks: from :func:`head_blocks`.
        keep: block name -> ``[units]`` bool (True = kept); a block missing is kept whole.
        shapes: params (or their shapes), for the masks' shapes.
    """
    by_name = {b.name: b for b in blocks}
    unknown = [n for n in keep if n not in by_name]
    if unknown:
        raise KeyError(f"keep names blocks that are not among the head blocks: {unknown}")
    masks: Masks = {}
    for name, k in keep.items():
        block = by_name[name]
        if k.dtype != torch.bool or tuple(k.shape) != (block.units,):
            raise ValueError(f"keep[{name!r}] must be a bool tensor of shape ({block.units},), got "
                             f"{k.dtype} {tuple(k.shape)}")
        for cut in block.cuts:
            shape = shapes[cut.param]
            masks[cut.param] = cut.mask(k, tuple(shape.shape if isinstance(shape, Tensor) else shape))
    return masks


def heads_kept(blocks: tuple[HeadBlock, ...], masks: Mapping[str, Mask]) -> dict[str, Tensor]:
    """Block name -> ``[units]`` bool: False for the units that ``masks`` silence, True for the rest.

    A unit is silenced when every cut of one :attr:`Cut.silences` group masks all its entries:
    its consumer columns (O, down), or V's rows and bias (the V third of a fused ``[Q | K | V]``
    projection), or SwiGLU's up rows and bias. Its output
    is then exactly zero, so removing it leaves the masked model's function unchanged; a unit
    with only its Q/K rows masked is kept (masked) instead.
    """
    out = {}
    for block in blocks:
        groups: dict[str, Tensor] = {}
        for cut in block.cuts:
            if not cut.silences:
                continue
            if cut.param in masks:
                dense = masks[cut.param].broadcastable().expand(masks[cut.param].shape)
                silent = ~cut.unit_view(dense, block.units, segments=cut.silent_segments).any(dim=1)
            else:
                silent = torch.zeros(block.units, dtype=torch.bool)
            groups[cut.silences] = groups[cut.silences] & silent if cut.silences in groups else silent
        keep = torch.ones(block.units, dtype=torch.bool)
        for silent in groups.values():
            keep &= ~silent
        out[block.name] = keep
    return out
