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
]


@attrs.frozen
class Cut:
    """How one parameter is cut into a block's units.

    Attributes:
        param: the params key (``'encoder.layer.0.attention.self.query.weight'``).
        dim: the dim the units lie along.
        segments: how many times the units repeat along ``dim`` (3 for a fused Q|K|V projection).
        unit: entries of one unit in one segment (``head_dim``; ``group * head_dim`` for the query
            and output projections under GQA; 1 for MLP neurons).
        consumer: whether this parameter *reads* the units (the attention output projection, the MLP
            down projection).
        silences: a name shared by the cuts that, all masked for a unit, make the unit's output
            exactly zero (``'output'``: the consumer; ``'value'``: V's weight and bias, as a head
            averages zero values; ``'up'``: SwiGLU's up projection, a factor of the product);
            ``''`` for the others (zero Q/K rows only make the attention uniform).
    """

    param: str
    dim: int
    segments: int = 1
    unit: int = 1
    consumer: bool = False
    silences: str = ""

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

    def unit_view(self, t: Tensor, units: int) -> Tensor:
        """``t`` (the parameter's shape) as ``[units, -1]``: each row holds one unit's entries."""
        moved = t.movedim(self.dim, 0)
        rest = moved.shape[1:]
        view = moved.reshape(self.segments, units, self.unit, *rest).movedim(1, 0)
        return view.reshape(units, -1)


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


def _rows(prefix: str, module: nn.Module, unit: int, *, segments: int = 1, silences: str = "") -> list[Cut]:
    """Cuts of a producer (units are its outputs): Linear rows, Conv1D columns, and the bias."""
    dim = 1 if _is_conv1d(module) else 0
    cuts = [Cut(f"{prefix}.weight", dim, segments, unit, silences=silences)]
    if getattr(module, "bias", None) is not None:
        cuts.append(Cut(f"{prefix}.bias", 0, segments, unit, silences=silences))
    return cuts


def _columns(prefix: str, module: nn.Module, unit: int) -> list[Cut]:
    """The cut of a consumer (units are its inputs): Linear columns, Conv1D rows."""
    return [Cut(f"{prefix}.weight", 0 if _is_conv1d(module) else 1, 1, unit, consumer=True, silences="output")]


def _int_attr(module: nn.Module, name: str, *attrs_: str) -> int:
    for attr in attrs_:
        value = getattr(module, attr, None)
        if isinstance(value, int) and not isinstance(value, bool) and value > 0:
            return value
    raise ValueError(f"attention module {name!r} ({type(module).__name__}) has none of {list(attrs_)}: "
                     "cannot tell its head size")


def _attention(name: str, module: nn.Module, modules: Mapping[str, nn.Module]) -> HeadBlock | None:
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
        cuts = _rows(p + "c_attn", children["c_attn"], hd, segments=3) + _columns(p + "c_proj", children["c_proj"], hd)
        return HeadBlock(name, "attention", heads, 1, hd, tuple(cuts))
    return None


_MLPS = (("gate_proj", "up_proj", "down_proj"), ("fc1", "fc2"), ("c_fc", "c_proj"))


def _mlp(name: str, module: nn.Module) -> HeadBlock | None:
    children = dict(module.named_children())
    p = f"{name}." if name else ""
    for *ups, down in _MLPS:
        ok = all(isinstance(children.get(n), nn.Linear) or _is_conv1d(children.get(n)) for n in (*ups, down))
        if ok and "c_attn" not in children:
            neurons = _outputs(children[ups[0]])
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
    return None


def head_blocks(model: nn.Module, *, required: bool = True) -> tuple[HeadBlock, ...]:
    """The attention and MLP blocks of ``model``, in model order, found by their structure.

    Recognised layouts (the Hugging Face ones, by child names, whatever the class):

    - attention with ``query``/``key``/``value`` Linears and the parent's ``output.dense`` (BERT);
    - attention with ``q_proj``/``k_proj``/``v_proj``/``o_proj`` (Llama with grouped-query
      attention, ViT, ...);
    - attention with a fused ``c_attn`` and ``c_proj`` (GPT-2's ``Conv1D``, weight ``[in, out]``);
    - MLPs ``gate_proj``/``up_proj``/``down_proj`` (SwiGLU), ``fc1``/``fc2``, ``c_fc``/``c_proj``,
      and a layer with ``attention``, ``intermediate.dense`` and ``output.dense`` (BERT).

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
    """
    modules = dict(model.named_modules())
    blocks = []
    for name, module in modules.items():
        block = _attention(name, module, modules) or _mlp(name, module)
        if block is not None:
            blocks.append(block)
    if not blocks and required:
        raise ValueError(f"{type(model).__name__} has no attention or MLP block of a known layout (q/k/v + output "
                         "projection, fused c_attn + c_proj, gate/up/down, fc1/fc2, c_fc/c_proj, intermediate/output)")
    return tuple(blocks)


def head_block_params(blocks: tuple[HeadBlock, ...]) -> list[str]:
    """Every parameter the blocks cut (the names to score: ``pc.level(params, head_block_params(blocks))``)."""
    return list(dict.fromkeys(c.param for b in blocks for c in b.cuts))


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
    its consumer columns (O, down), or V's rows and bias, or SwiGLU's up rows and bias. Its output
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
                silent = ~cut.unit_view(dense, block.units).any(dim=1)
            else:
                silent = torch.zeros(block.units, dtype=torch.bool)
            groups[cut.silences] = groups[cut.silences] & silent if cut.silences in groups else silent
        keep = torch.ones(block.units, dtype=torch.bool)
        for silent in groups.values():
            keep &= ~silent
        out[block.name] = keep
    return out
