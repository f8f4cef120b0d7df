"""Structured transformer pruning: attention heads and MLP neurons, scored, allocated, shrunk.

The pipeline, as functions::

    blocks = pc.head_blocks(model)                                  # attention and MLP blocks
    names  = pc.head_block_params(blocks)                           # the parameters they cut
    scores = pc.head_scores(blocks, pc.level(params, names))        # L1 of each head / neuron
    keep   = pc.allocate_heads(blocks, scores, 0.5)                 # keep half of each block
    masks  = pc.head_masks(blocks, keep, params)                    # core Masks (whole heads)
    compact, report = pc.shrink_heads(model, masks, inputs)         # equals the masked model

Under grouped-query attention a unit is a key/value head with its query group (see
:mod:`purecompress.heads._blocks`). Attention modules whose forward reads the head size from the
input width become :class:`PrunedMultiheadAttention` / :class:`PrunedWindowAttention` in the
compact model (see :mod:`purecompress.heads._attention`).
"""

from __future__ import annotations

from purecompress.heads._attention import PrunedMultiheadAttention, PrunedWindowAttention
from purecompress.heads._blocks import Cut, HeadBlock, head_block_params, head_blocks, head_masks, heads_kept
from purecompress.heads._importance import allocate_heads, head_movement_blocks, head_scores
from purecompress.heads._shrink import shrink_heads

__all__ = [
    "Cut",
    "HeadBlock",
    "PrunedMultiheadAttention",
    "PrunedWindowAttention",
    "allocate_heads",
    "head_block_params",
    "head_blocks",
    "head_masks",
    "head_movement_blocks",
    "head_scores",
    "heads_kept",
    "shrink_heads",
]
