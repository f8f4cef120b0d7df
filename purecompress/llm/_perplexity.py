"""Perplexity on held-out tokens, for a model run with any params (``functional_call``)."""

from __future__ import annotations

import math
from collections.abc import Mapping

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.func import functional_call

__all__ = ["perplexity", "unigram_perplexity"]


def perplexity(model: nn.Module, tokens: Tensor, *, params: Mapping[str, Tensor] | None = None,
               seq_len: int = 128, batch: int = 16) -> float:
    """``exp`` of the mean next-token loss over non-overlapping windows of ``tokens``.

    Args:
        model: ids ``[batch, seq]`` -> logits ``[batch, seq, vocab]``.
        tokens: ``[n]`` int64 held-out stream (the tail shorter than a window is dropped).
        params: run the model with these (``functional_call``); default its own.
        seq_len: window length (each window predicts ``seq_len`` tokens from its prefix).
        batch: windows per forward.

    >>> from purecompress.llm import DecoderConfig, TinyDecoder
    >>> model = TinyDecoder(DecoderConfig(dim=16, layers=1, heads=2, hidden=32))
    >>> perplexity(model, torch.randint(0, 256, (300,)), seq_len=32) > 100  # untrained: about uniform
    True
    """
    n = (tokens.numel() - 1) // seq_len
    if n == 0:
        raise ValueError(f"need more than {seq_len} tokens, got {tokens.numel()}")
    inputs = tokens[: n * seq_len].view(n, seq_len)
    targets = tokens[1: n * seq_len + 1].view(n, seq_len)
    total = 0.0
    with torch.no_grad():
        for x, y in zip(inputs.split(batch), targets.split(batch)):
            logits = model(x) if params is None else functional_call(model, dict(params), (x,))
            total += float(F.cross_entropy(logits.float().reshape(-1, logits.shape[-1]), y.reshape(-1),
                                           reduction="sum"))
    return math.exp(total / (n * seq_len))


def unigram_perplexity(train: Tensor, held_out: Tensor, *, vocab: int = 256) -> float:
    """Perplexity of the best context-free model (train frequencies, add-one smoothed): the bar a
    language model must clear for its perplexity to mean anything.

    >>> round(unigram_perplexity(torch.tensor([0, 1]), torch.tensor([0, 1]), vocab=2), 3)
    2.0
    """
    counts = torch.bincount(train, minlength=vocab).double() + 1.0
    logp = (counts / counts.sum()).log()
    return math.exp(-float(logp[held_out].mean()))
