"""Training a :class:`TinyDecoder` on bytes: a few seconds in tests, a few minutes in benchmarks."""

from __future__ import annotations

import logging
import math

import torch
import torch.nn.functional as F
from torch import Tensor

from purecompress.llm._data import random_windows
from purecompress.llm._decoder import DecoderConfig, TinyDecoder

__all__ = ["train_decoder"]

logger = logging.getLogger(__name__)


def train_decoder(config: DecoderConfig, tokens: Tensor, *, steps: int, batch: int = 32, seq_len: int = 128,
                  lr: float = 3e-3, seed: int = 0) -> TinyDecoder:
    """A new :class:`TinyDecoder` trained with AdamW (warmup, cosine decay) on next-byte prediction.

    Args:
        config: the decoder's sizes.
        tokens: ``[n]`` int64 training stream.
        steps: optimizer steps.
        batch: windows per step.
        seq_len: tokens per window.
        lr: peak learning rate.
        seed: model initialisation and window sampling.

    Returns:
        The trained model, in eval mode (float32, CPU).
    """
    torch.manual_seed(seed)
    model = TinyDecoder(config)
    opt = torch.optim.AdamW(model.parameters(), lr=lr, betas=(0.9, 0.95), weight_decay=0.1)
    warmup = max(1, steps // 20)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: min(1.0, (s + 1) / warmup) * 0.5 * (1 + math.cos(math.pi * min(s, steps) / steps)))
    gen = torch.Generator().manual_seed(seed)
    model.train()
    for step in range(steps):
        window = random_windows(tokens, batch, seq_len, gen)
        logits = model(window[:, :-1])
        loss = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), window[:, 1:].reshape(-1))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
        if step % 100 == 0:
            logger.debug("step %d loss %.3f", step, loss.item())
    return model.eval()
