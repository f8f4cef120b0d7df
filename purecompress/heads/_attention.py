"""Attention modules whose inner width is ``num_heads * head_dim``: what a compact model runs after
head pruning where the original module's forward derives the head size from its input width.

``nn.MultiheadAttention`` computes ``head_dim = embed_dim // num_heads`` and torchvision's
``shifted_window_attention`` ``C // num_heads`` from the input's ``C``: with heads removed both
would read a wrong head size. :class:`PrunedMultiheadAttention` and :class:`PrunedWindowAttention`
take the same calls and compute the same values with the pruned width;
:func:`~purecompress.shrink_heads` puts them in place of the originals (timm's ``Attention`` and
``WindowAttention`` read ``num_heads``/``attn_dim`` and change in place instead).
"""

from __future__ import annotations

import copy
import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from purecompress.heads._blocks import multihead_unsupported

__all__ = [
    "PrunedMultiheadAttention",
    "PrunedWindowAttention",
    "compact_attention",
]


def _float_mask(mask: Tensor | None, dtype: torch.dtype, name: str) -> Tensor | None:
    """A bool mask (True = not allowed) as an additive float mask (``-inf``); a float mask as given."""
    if mask is None:
        return None
    if mask.dtype == torch.bool:
        return torch.zeros(mask.shape, dtype=dtype, device=mask.device).masked_fill_(mask, float("-inf"))
    if not torch.is_floating_point(mask):
        raise TypeError(f"{name} must be a bool or floating-point tensor, got {mask.dtype}")
    return mask


class PrunedMultiheadAttention(nn.Module):
    """``nn.MultiheadAttention`` (packed, same-width query/key/value) with an inner width of
    ``num_heads * head_dim`` instead of ``embed_dim``.

    Same call, same parameter names (``in_proj_weight`` ``[3 * inner, embed_dim]``,
    ``in_proj_bias``, ``out_proj``) and same values as the module it stands for: ``query``,
    ``key``, ``value`` batched (``batch_first`` or not) or unbatched, ``key_padding_mask``
    (``[N, S]``), ``attn_mask`` (``[L, S]`` or ``[N * source_num_heads, L, S]``: the masks of the
    original heads, of which the kept ``source_heads`` are taken; ``[N * num_heads, L, S]`` too),
    bool (True = not allowed) or float (added), ``need_weights``, ``average_attn_weights``,
    ``is_causal`` (a hint that needs ``attn_mask``, as there), dropout on the attention weights in
    training. Returns ``(output, weights or None)``; the weights are those of the kept heads (their
    mean with ``average_attn_weights``).

    Args:
        embed_dim: the input and output width ``E``.
        num_heads: heads computed.
        head_dim: entries per head.
        bias: biases of the input and output projections.
        dropout: dropout probability on the attention weights (training only).
        batch_first: inputs ``[N, L, E]`` (else ``[L, N, E]``).
        source_heads: the original heads these are (default: ``0 .. num_heads - 1``).
        source_num_heads: the original head count (default: ``num_heads``).
        device: of the parameters.
        dtype: of the parameters.

    >>> mha = nn.MultiheadAttention(8, 2, batch_first=True).eval()
    >>> x = torch.randn(2, 5, 8)
    >>> same = PrunedMultiheadAttention.from_module(mha)
    >>> torch.allclose(same(x, x, x)[0], mha(x, x, x)[0], atol=1e-6)
    True
    """

    # nn.TransformerEncoderLayer's fast path reads this attribute: False keeps it off, because its
    # fused kernel derives the head size from embed_dim.
    _qkv_same_embed_dim = False

    def __init__(self, embed_dim: int, num_heads: int, head_dim: int, *, bias: bool = True, dropout: float = 0.0,
                 batch_first: bool = False, source_heads: Sequence[int] | None = None,
                 source_num_heads: int | None = None, device: torch.device | None = None,
                 dtype: torch.dtype | None = None) -> None:
        super().__init__()
        if min(embed_dim, num_heads, head_dim) <= 0:
            raise ValueError(f"embed_dim, num_heads and head_dim must be > 0, got {embed_dim}, {num_heads}, {head_dim}")
        self.embed_dim, self.num_heads, self.head_dim = embed_dim, num_heads, head_dim
        self.dropout, self.batch_first = dropout, batch_first
        self.source_heads = tuple(range(num_heads)) if source_heads is None else tuple(source_heads)
        self.source_num_heads = num_heads if source_num_heads is None else source_num_heads
        if len(self.source_heads) != num_heads:
            raise ValueError(f"source_heads names {len(self.source_heads)} heads, num_heads is {num_heads}")
        inner = num_heads * head_dim
        self.in_proj_weight = nn.Parameter(torch.empty(3 * inner, embed_dim, device=device, dtype=dtype))
        self.in_proj_bias = nn.Parameter(torch.zeros(3 * inner, device=device, dtype=dtype)) if bias else None
        self.out_proj = nn.Linear(inner, embed_dim, bias=bias, device=device, dtype=dtype)
        nn.init.xavier_uniform_(self.in_proj_weight)  # nn.MultiheadAttention's initialisation
        if self.out_proj.bias is not None:
            nn.init.zeros_(self.out_proj.bias)

    @classmethod
    def from_module(cls, module: nn.MultiheadAttention) -> PrunedMultiheadAttention:
        """The same attention as ``module`` (its parameters copied, its training mode).

        Raises:
            ValueError: ``module`` is not of the supported layout (``kdim``/``vdim`` other than
                ``embed_dim``, ``add_bias_kv``, ``add_zero_attn``), naming which.
        """
        why = multihead_unsupported(module)
        if why:
            raise ValueError(f"PrunedMultiheadAttention cannot stand for this nn.MultiheadAttention: {why}")
        weight = module.in_proj_weight
        assert weight is not None  # packed: multihead_unsupported says so otherwise
        new = cls(module.embed_dim, module.num_heads, module.embed_dim // module.num_heads,
                  bias=module.in_proj_bias is not None, dropout=module.dropout, batch_first=module.batch_first,
                  device=weight.device, dtype=weight.dtype)
        new.load_state_dict(module.state_dict())
        return new.train(module.training)

    def _attn_mask(self, attn_mask: Tensor | None, batch: int, tgt: int, src: int, dtype: torch.dtype) -> Tensor | None:
        mask = _float_mask(attn_mask, dtype, "attn_mask")
        if mask is None:
            return None
        if mask.dim() == 2:
            if tuple(mask.shape) != (tgt, src):
                raise RuntimeError(f"the 2D attn_mask has shape {tuple(mask.shape)}, expected {(tgt, src)}")
            return mask.reshape(1, 1, tgt, src)
        if mask.dim() == 3 and tuple(mask.shape) == (batch * self.source_num_heads, tgt, src):
            index = torch.tensor(self.source_heads, device=mask.device)
            return mask.reshape(batch, self.source_num_heads, tgt, src).index_select(1, index)
        if mask.dim() == 3 and tuple(mask.shape) == (batch * self.num_heads, tgt, src):
            return mask.reshape(batch, self.num_heads, tgt, src)
        raise RuntimeError(f"attn_mask has shape {tuple(mask.shape)}, expected {(tgt, src)} or "
                           f"{(batch * self.source_num_heads, tgt, src)} (batch * the original heads)")

    def forward(self, query: Tensor, key: Tensor, value: Tensor, key_padding_mask: Tensor | None = None,
                need_weights: bool = True, attn_mask: Tensor | None = None, average_attn_weights: bool = True,
                is_causal: bool = False) -> tuple[Tensor, Tensor | None]:
        """Attention of ``query`` over ``key``/``value``, as ``nn.MultiheadAttention.forward``."""
        batched = query.dim() == 3
        if not batched:
            query, key, value = query.unsqueeze(0), key.unsqueeze(0), value.unsqueeze(0)
            key_padding_mask = None if key_padding_mask is None else key_padding_mask.unsqueeze(0)
        elif not self.batch_first:
            query, key, value = query.transpose(0, 1), key.transpose(0, 1), value.transpose(0, 1)
        if is_causal and attn_mask is None:
            raise RuntimeError("is_causal is a hint that attn_mask is the causal mask: pass attn_mask too "
                               "(as nn.MultiheadAttention requires)")
        batch, tgt, src = query.shape[0], query.shape[1], key.shape[1]
        w_q, w_k, w_v = self.in_proj_weight.chunk(3)
        b_q, b_k, b_v = (None, None, None) if self.in_proj_bias is None else self.in_proj_bias.chunk(3)

        def heads(x: Tensor, w: Tensor, b: Tensor | None) -> Tensor:
            return F.linear(x, w, b).reshape(batch, x.shape[1], self.num_heads, self.head_dim).transpose(1, 2)

        q, k, v = heads(query, w_q, b_q), heads(key, w_k, b_k), heads(value, w_v, b_v)
        mask = self._attn_mask(attn_mask, batch, tgt, src, q.dtype)
        padding = _float_mask(key_padding_mask, q.dtype, "key_padding_mask")
        if padding is not None:
            padding = padding.reshape(batch, 1, 1, src)
            mask = padding if mask is None else mask + padding
        dropout_p = self.dropout if self.training else 0.0
        weights: Tensor | None = None
        if need_weights:
            scores = (q * (1.0 / self.head_dim) ** 0.5) @ k.transpose(-2, -1)
            weights = (scores if mask is None else scores + mask).softmax(dim=-1)
            if dropout_p > 0.0:
                weights = F.dropout(weights, p=dropout_p)
            out = weights @ v
            if average_attn_weights:
                weights = weights.mean(dim=1)
        else:  # as there: the causal hint goes to the kernel only without a padding mask
            causal = is_causal and key_padding_mask is None
            out = F.scaled_dot_product_attention(q, k, v, None if causal else mask, dropout_p, causal)
        out = out.transpose(1, 2).reshape(batch, tgt, self.num_heads * self.head_dim)
        out = F.linear(out, self.out_proj.weight, self.out_proj.bias)
        if not batched:
            return out.squeeze(0), None if weights is None else weights.squeeze(0)
        return (out if self.batch_first else out.transpose(0, 1)), weights

    def extra_repr(self) -> str:
        return (f"embed_dim={self.embed_dim}, num_heads={self.num_heads}, head_dim={self.head_dim}, "
                f"batch_first={self.batch_first}, source_heads={list(self.source_heads)}")


class PrunedWindowAttention(nn.Module):
    """torchvision's ``ShiftedWindowAttention`` (and ``ShiftedWindowAttentionV2``, ``cosine``) with an
    inner width of ``num_heads * head_dim`` instead of the input's ``C``.

    Same call (``x`` ``[B, H, W, C]`` -> ``[B, H, W, C]``), same parameter and buffer names and the
    same values as torchvision's ``shifted_window_attention``: windows, the cyclic shift and its
    mask, the relative position bias (V1: the table ``[(2Wh - 1) (2Ww - 1), heads]``; V2: ``16 *
    sigmoid(cpb_mlp(relative_coords_table))``), V2's cosine attention scaled by ``exp(logit_scale)``
    clamped at ``log(100)`` and its zeroed key bias, the scale ``original head_dim ** -0.5`` (V1).

    Built from the parts of such a module by :meth:`from_module`; the arguments are its parts.

    Args:
        qkv: the fused ``[Q | K | V]`` Linear, ``C -> 3 * num_heads * head_dim``.
        proj: the output Linear, ``num_heads * head_dim -> C``.
        num_heads: heads computed.
        window_size: ``[Wh, Ww]``.
        shift_size: ``[sh, sw]``.
        relative_position_index: ``[(Wh Ww)^2]`` long, into the bias table.
        relative_position_bias_table: V1's table (None for V2).
        logit_scale: V2's ``[num_heads, 1, 1]`` (None for V1).
        cpb_mlp: V2's position-bias MLP, 2 -> ``num_heads``.
        relative_coords_table: V2's ``[1, 2Wh - 1, 2Ww - 1, 2]`` MLP input.
        attention_dropout: on the attention weights (training only).
        dropout: on the output (training only).
    """

    def __init__(self, qkv: nn.Linear, proj: nn.Linear, *, num_heads: int, window_size: Sequence[int],
                 shift_size: Sequence[int], relative_position_index: Tensor,
                 relative_position_bias_table: Tensor | None = None, logit_scale: Tensor | None = None,
                 cpb_mlp: nn.Module | None = None, relative_coords_table: Tensor | None = None,
                 attention_dropout: float = 0.0, dropout: float = 0.0) -> None:
        super().__init__()
        if qkv.out_features % (3 * num_heads) or proj.in_features * 3 != qkv.out_features:
            raise ValueError(f"qkv ({qkv.out_features} outputs) and proj ({proj.in_features} inputs) are not "
                             f"[Q | K | V] of {num_heads} heads")
        cosine = logit_scale is not None
        if cosine != (cpb_mlp is not None and relative_coords_table is not None) or cosine == (
                relative_position_bias_table is not None):
            raise ValueError("pass relative_position_bias_table (V1) or logit_scale, cpb_mlp and "
                             "relative_coords_table (V2)")
        self.qkv, self.proj = qkv, proj
        self.num_heads, self.head_dim = num_heads, qkv.out_features // (3 * num_heads)
        self.window_size, self.shift_size = list(window_size), list(shift_size)
        self.attention_dropout, self.dropout = attention_dropout, dropout
        self.scale = self.head_dim ** -0.5
        self.register_buffer("relative_position_index", relative_position_index)
        self.relative_position_bias_table = None if relative_position_bias_table is None else nn.Parameter(
            relative_position_bias_table)
        self.logit_scale = None if logit_scale is None else nn.Parameter(logit_scale)
        self.cpb_mlp = cpb_mlp
        if relative_coords_table is not None:
            self.register_buffer("relative_coords_table", relative_coords_table)

    @classmethod
    def from_module(cls, module: nn.Module) -> PrunedWindowAttention:
        """The same attention as torchvision's ``ShiftedWindowAttention(V2)`` ``module`` (copies of its
        parts, its training mode)."""
        parts = copy.deepcopy(dict(module.named_children()))
        own = {n: t.detach().clone() for n, t in [*module.named_parameters(recurse=False),
                                                   *module.named_buffers(recurse=False)]}
        qkv, proj, plain = parts["qkv"], parts["proj"], vars(module)  # plain attributes: counts, sizes, rates
        if not isinstance(qkv, nn.Linear) or not isinstance(proj, nn.Linear):
            raise ValueError(f"{type(module).__name__}: qkv and proj must be Linear layers")
        new = cls(qkv, proj, num_heads=int(plain["num_heads"]), window_size=plain["window_size"],
                  shift_size=plain["shift_size"], relative_position_index=own["relative_position_index"],
                  relative_position_bias_table=own.get("relative_position_bias_table"),
                  logit_scale=own.get("logit_scale"), cpb_mlp=parts.get("cpb_mlp"),
                  relative_coords_table=own.get("relative_coords_table"),
                  attention_dropout=float(plain["attention_dropout"]), dropout=float(plain["dropout"]))
        return new.train(module.training)

    def _position_bias(self) -> Tensor:
        area = self.window_size[0] * self.window_size[1]
        if self.cpb_mlp is not None:
            table = self.cpb_mlp(self.relative_coords_table).reshape(-1, self.num_heads)
        else:
            assert self.relative_position_bias_table is not None
            table = self.relative_position_bias_table
        bias = table[self.relative_position_index].reshape(area, area, -1).permute(2, 0, 1).unsqueeze(0)
        return 16 * torch.sigmoid(bias) if self.cpb_mlp is not None else bias

    def _shift_mask(self, x: Tensor, pad_h: int, pad_w: int, shift: list[int]) -> Tensor:
        (wh, ww), windows = self.window_size, (pad_h // self.window_size[0]) * (pad_w // self.window_size[1])
        mask = x.new_zeros((pad_h, pad_w))
        count = 0
        for h in ((0, -wh), (-wh, -shift[0]), (-shift[0], None)):
            for w in ((0, -ww), (-ww, -shift[1]), (-shift[1], None)):
                mask[h[0]:h[1], w[0]:w[1]] = count
                count += 1
        mask = mask.reshape(pad_h // wh, wh, pad_w // ww, ww).permute(0, 2, 1, 3).reshape(windows, wh * ww)
        mask = mask.unsqueeze(1) - mask.unsqueeze(2)
        return mask.masked_fill(mask != 0, -100.0).masked_fill(mask == 0, 0.0)

    def forward(self, x: Tensor) -> Tensor:
        """Shifted window attention of ``x`` (``[B, H, W, C]``)."""
        b, h, w, c = x.shape
        (wh, ww), heads, inner = self.window_size, self.num_heads, self.num_heads * self.head_dim
        x = F.pad(x, (0, 0, 0, (ww - w % ww) % ww, 0, (wh - h % wh) % wh))
        _, pad_h, pad_w, _ = x.shape
        shift = [0 if wh >= pad_h else self.shift_size[0], 0 if ww >= pad_w else self.shift_size[1]]
        if sum(shift) > 0:
            x = torch.roll(x, shifts=(-shift[0], -shift[1]), dims=(1, 2))
        windows = (pad_h // wh) * (pad_w // ww)
        x = x.reshape(b, pad_h // wh, wh, pad_w // ww, ww, c).permute(0, 1, 3, 2, 4, 5).reshape(b * windows, wh * ww, c)
        bias: Tensor | None = self.qkv.bias
        if self.logit_scale is not None and bias is not None:  # V2 zeroes the key bias in its forward
            bias = torch.cat([bias[:inner], torch.zeros_like(bias[inner:2 * inner]), bias[2 * inner:]])
        qkv = F.linear(x, self.qkv.weight, bias).reshape(x.shape[0], x.shape[1], 3, heads, self.head_dim)
        q, k, v = qkv.permute(2, 0, 3, 1, 4)
        if self.logit_scale is not None:  # cosine attention
            attn = F.normalize(q, dim=-1) @ F.normalize(k, dim=-1).transpose(-2, -1)
            attn = attn * torch.clamp(self.logit_scale, max=math.log(100.0)).exp()
        else:
            attn = (q * self.scale) @ k.transpose(-2, -1)
        attn = attn + self._position_bias()
        if sum(shift) > 0:
            n = x.shape[1]
            attn = attn.reshape(b, windows, heads, n, n) + self._shift_mask(x, pad_h, pad_w, shift)[None, :, None]
            attn = attn.reshape(-1, heads, n, n)
        attn = F.dropout(attn.softmax(dim=-1), p=self.attention_dropout, training=self.training)
        x = (attn @ v).transpose(1, 2).reshape(x.shape[0], x.shape[1], inner)
        x = F.dropout(F.linear(x, self.proj.weight, self.proj.bias), p=self.dropout, training=self.training)
        x = x.reshape(b, pad_h // wh, pad_w // ww, wh, ww, c).permute(0, 1, 3, 2, 4, 5).reshape(b, pad_h, pad_w, c)
        if sum(shift) > 0:
            x = torch.roll(x, shifts=(shift[0], shift[1]), dims=(1, 2))
        return x[:, :h, :w, :].contiguous()

    def extra_repr(self) -> str:
        return (f"num_heads={self.num_heads}, head_dim={self.head_dim}, window_size={self.window_size}, "
                f"shift_size={self.shift_size}, cosine={self.logit_scale is not None}")


def _is_torchvision_window_attention(module: nn.Module) -> bool:
    return any(c.__name__ == "ShiftedWindowAttention" and c.__module__.startswith("torchvision")
               for c in type(module).__mro__)


def compact_attention(module: nn.Module) -> nn.Module | None:
    """The module that stands for ``module`` in a compact model when ``module``'s own forward
    cannot run with fewer heads (``nn.MultiheadAttention``, torchvision's window attention); None
    when it can (the module's head-count attributes are updated in place instead)."""
    if isinstance(module, nn.MultiheadAttention):
        return PrunedMultiheadAttention.from_module(module)
    if _is_torchvision_window_attention(module):
        return PrunedWindowAttention.from_module(module)
    return None
