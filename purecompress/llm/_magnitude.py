"""The baseline the LLM pruners are measured against: ``|w|``, per layer or N:M."""

from __future__ import annotations

from collections.abc import Iterable, Sequence

from torch import nn

import purecompress as pc
from purecompress.llm._decoder import decoder_blocks
from purecompress.pruning import allocate_n_m, parse_n_m

__all__ = ["linear_weights", "magnitude_masks"]


def linear_weights(model: nn.Module, blocks: Sequence[str] | None = None) -> list[str]:
    """Parameter names of the Linear weights inside ``blocks`` (default :func:`decoder_blocks`).

    >>> from purecompress.llm import DecoderConfig, TinyDecoder
    >>> linear_weights(TinyDecoder(DecoderConfig(dim=16, layers=1, heads=2, hidden=32)))[:2]
    ['layers.0.self_attn.q_proj.weight', 'layers.0.self_attn.k_proj.weight']
    """
    blocks = decoder_blocks(model) if blocks is None else blocks
    modules = dict(model.named_modules())
    return [f"{b}.{name}.weight" for b in blocks for name, m in modules[b].named_modules() if isinstance(m, nn.Linear)]


def magnitude_masks(params: pc.Params, targets: Iterable[str], *, sparsity: float = 0.5,
                    n_m: tuple[int, int] | str | None = None) -> pc.Masks:
    """Masks keeping the largest ``|w|``: ``sparsity`` of each layer, or ``n`` of every ``m``."""
    metrics = pc.level(params, list(targets))
    if n_m is not None:
        return allocate_n_m(metrics, *parse_n_m(n_m, key="n_m"))
    return pc.allocate_per_layer(metrics, sparsity)
