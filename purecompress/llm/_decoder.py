"""A tiny Llama-style decoder (RMSNorm, rotary attention, SwiGLU), named like Hugging Face's.

Module names follow ``LlamaForCausalLM``'s layers (``layers.<i>.self_attn.q_proj``,
``layers.<i>.mlp.gate_proj``, ...), so what works on it works on a Llama's ``model.layers``.
It exists so the LLM algorithms have a real decoder to run on without downloading one.
"""

from __future__ import annotations

import math

import attrs
import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = ["DecoderConfig", "TinyDecoder", "decoder_blocks"]


@attrs.frozen
class DecoderConfig:
    """Sizes of a :class:`TinyDecoder`.

    Attributes:
        vocab: tokens (256 for bytes).
        dim: hidden size (a multiple of ``heads``, ``dim // heads`` even).
        layers: decoder blocks.
        heads: attention heads.
        hidden: SwiGLU hidden size.
        rope_base: rotary embedding base.
        eps: RMSNorm epsilon.
    """

    vocab: int = 256
    dim: int = 128
    layers: int = 4
    heads: int = 4
    hidden: int = 384
    rope_base: float = 10000.0
    eps: float = 1e-6

    def __attrs_post_init__(self) -> None:
        if self.dim % self.heads or (self.dim // self.heads) % 2:
            raise ValueError(f"dim {self.dim} must be a multiple of heads ({self.heads}) with an even head size")


class RMSNorm(nn.Module):
    """Root-mean-square norm with a learned scale (statistics in float32)."""

    def __init__(self, dim: int, eps: float) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(dim))
        self.eps = eps

    def forward(self, x: Tensor) -> Tensor:
        """``x``: ``[..., dim]``."""
        xf = x.float()
        return (xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + self.eps)).to(x.dtype) * self.weight


def _rotate(x: Tensor, cos: Tensor, sin: Tensor) -> Tensor:
    half = x.shape[-1] // 2
    x1, x2 = x[..., :half], x[..., half:]
    return x * cos + torch.cat((-x2, x1), -1) * sin


class Attention(nn.Module):
    """Causal multi-head attention with rotary positions."""

    def __init__(self, config: DecoderConfig) -> None:
        super().__init__()
        self.heads = config.heads
        self.q_proj = nn.Linear(config.dim, config.dim, bias=False)
        self.k_proj = nn.Linear(config.dim, config.dim, bias=False)
        self.v_proj = nn.Linear(config.dim, config.dim, bias=False)
        self.o_proj = nn.Linear(config.dim, config.dim, bias=False)

    def forward(self, x: Tensor, cos: Tensor, sin: Tensor) -> Tensor:
        """``x``: ``[batch, seq, dim]``; ``cos``, ``sin``: ``[seq, head_dim]``."""
        b, t, d = x.shape
        q, k, v = (p(x).view(b, t, self.heads, d // self.heads).transpose(1, 2)
                   for p in (self.q_proj, self.k_proj, self.v_proj))
        out = F.scaled_dot_product_attention(_rotate(q, cos, sin), _rotate(k, cos, sin), v, is_causal=True)
        return self.o_proj(out.transpose(1, 2).reshape(b, t, d))


class MLP(nn.Module):
    """SwiGLU feed-forward: ``down(silu(gate(x)) * up(x))``."""

    def __init__(self, config: DecoderConfig) -> None:
        super().__init__()
        self.gate_proj = nn.Linear(config.dim, config.hidden, bias=False)
        self.up_proj = nn.Linear(config.dim, config.hidden, bias=False)
        self.down_proj = nn.Linear(config.hidden, config.dim, bias=False)

    def forward(self, x: Tensor) -> Tensor:
        """``x``: ``[..., dim]``."""
        return self.down_proj(F.silu(self.gate_proj(x)) * self.up_proj(x))


class DecoderLayer(nn.Module):
    """Pre-norm block: ``x + attn(norm(x))``, then ``x + mlp(norm(x))``."""

    def __init__(self, config: DecoderConfig) -> None:
        super().__init__()
        self.input_layernorm = RMSNorm(config.dim, config.eps)
        self.self_attn = Attention(config)
        self.post_attention_layernorm = RMSNorm(config.dim, config.eps)
        self.mlp = MLP(config)

    def forward(self, x: Tensor, cos: Tensor, sin: Tensor) -> Tensor:
        """``x``: ``[batch, seq, dim]`` -> same."""
        x = x + self.self_attn(self.input_layernorm(x), cos, sin)
        return x + self.mlp(self.post_attention_layernorm(x))


class TinyDecoder(nn.Module):
    """A Llama-style causal language model: token ids ``[batch, seq]`` -> logits ``[batch, seq, vocab]``.

    >>> model = TinyDecoder(DecoderConfig(dim=16, layers=2, heads=2, hidden=32))
    >>> model(torch.zeros(3, 5, dtype=torch.long)).shape
    torch.Size([3, 5, 256])
    >>> decoder_blocks(model)
    ['layers.0', 'layers.1']
    """

    def __init__(self, config: DecoderConfig) -> None:
        super().__init__()
        self.config = config
        self.embed_tokens = nn.Embedding(config.vocab, config.dim)
        self.layers = nn.ModuleList(DecoderLayer(config) for _ in range(config.layers))
        self.norm = RMSNorm(config.dim, config.eps)
        self.lm_head = nn.Linear(config.dim, config.vocab, bias=False)
        head = config.dim // config.heads
        self.register_buffer("inv_freq", config.rope_base ** (-torch.arange(0, head, 2).float() / head),
                             persistent=False)
        for module in self.modules():
            if isinstance(module, (nn.Linear, nn.Embedding)):
                nn.init.normal_(module.weight, std=0.02 if isinstance(module, nn.Embedding) else
                                1.0 / math.sqrt(module.weight.shape[1]))

    def forward(self, ids: Tensor) -> Tensor:
        """``ids``: ``[batch, seq]`` int64 -> logits ``[batch, seq, vocab]``."""
        x = self.embed_tokens(ids)
        angles = torch.outer(torch.arange(ids.shape[1], device=ids.device, dtype=torch.float32), self.inv_freq)
        angles = torch.cat((angles, angles), -1)
        cos, sin = angles.cos().to(x.dtype), angles.sin().to(x.dtype)
        for layer in self.layers:
            x = layer(x, cos, sin)
        return self.lm_head(self.norm(x))


def decoder_blocks(model: nn.Module) -> list[str]:
    """Names of a decoder's repeated blocks: the children of its ``layers`` ModuleList.

    Works on :class:`TinyDecoder` (``layers.<i>``) and Hugging Face Llama-style models
    (``model.layers.<i>``).

    Raises:
        ValueError: when the model has no ModuleList named ``layers``.
    """
    for name, module in model.named_modules():
        if isinstance(module, nn.ModuleList) and name.split(".")[-1] == "layers":
            return [f"{name}.{child}" for child, _ in module.named_children()]
    raise ValueError("no ModuleList named 'layers' in the model; pass the block names explicitly")
