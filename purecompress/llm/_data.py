"""Byte-level text every machine has: the Python standard library's own ``.py`` sources.

Files are read in sorted order from ``sysconfig.get_paths()['stdlib']`` (tests and
``site-packages`` left out); every ``held_out_every``-th file goes to the held-out split, so the
two splits never share a file.
"""

from __future__ import annotations

import sysconfig
from pathlib import Path

import attrs
import torch
from torch import Tensor

__all__ = ["ByteCorpus", "calibration_batches", "random_windows", "stdlib_corpus"]

_SKIP = {"test", "tests", "site-packages", "idlelib", "lib2to3", "__pycache__", "turtledemo"}


@attrs.frozen
class ByteCorpus:
    """Train and held-out byte streams.

    Attributes:
        train: ``[n_train]`` int64 byte values in ``[0, 256)``.
        held_out: ``[n_held_out]`` int64 byte values.
        files: how many source files were read.
    """

    train: Tensor
    held_out: Tensor
    files: int


def stdlib_corpus(train_bytes: int = 2_000_000, held_out_bytes: int = 200_000, *,
                  held_out_every: int = 10) -> ByteCorpus:
    """Bytes of the standard library's ``.py`` files, split by file into train and held out.

    Args:
        train_bytes: stop adding train files past this many bytes (truncated to it).
        held_out_bytes: the same for the held-out split.
        held_out_every: every this-many-th file (in sorted order) is held out.

    >>> corpus = stdlib_corpus(10_000, 1_000)
    >>> corpus.train.shape, corpus.held_out.shape, int(corpus.train.max()) < 256
    (torch.Size([10000]), torch.Size([1000]), True)
    """
    root = Path(sysconfig.get_paths()["stdlib"])
    paths = sorted(p for p in root.rglob("*.py") if not _SKIP & set(p.relative_to(root).parts[:-1]))
    train: list[bytes] = []
    held: list[bytes] = []
    sizes = [0, 0]
    files = 0
    for i, path in enumerate(paths):
        which = 1 if i % held_out_every == held_out_every - 1 else 0
        if sizes[which] >= (held_out_bytes if which else train_bytes):
            if sizes[0] >= train_bytes and sizes[1] >= held_out_bytes:
                break
            continue
        data = path.read_bytes()
        (held if which else train).append(data)
        sizes[which] += len(data)
        files += 1
    if sizes[0] < train_bytes or sizes[1] < held_out_bytes:
        raise ValueError(f"the standard library at {root} holds fewer bytes than asked ({sizes})")
    as_tensor = lambda chunks, n: torch.frombuffer(bytearray(b"".join(chunks)[:n]), dtype=torch.uint8).long()
    return ByteCorpus(as_tensor(train, train_bytes), as_tensor(held, held_out_bytes), files)


def random_windows(tokens: Tensor, batch: int, seq_len: int, generator: torch.Generator) -> Tensor:
    """``batch`` random windows of ``seq_len + 1`` tokens (inputs and next-token targets).

    Args:
        tokens: ``[n]`` int64.
        batch: windows.
        seq_len: tokens per window, plus one.
        generator: the source of the offsets.

    Returns:
        ``[batch, seq_len + 1]`` int64.
    """
    starts = torch.randint(0, tokens.numel() - seq_len - 1, (batch,), generator=generator)
    return tokens[starts[:, None] + torch.arange(seq_len + 1)]


def calibration_batches(tokens: Tensor, *, samples: int, seq_len: int, batch: int = 8,
                        seed: int = 0) -> list[Tensor]:
    """Random calibration windows, ``samples`` in all, in batches of ``batch``.

    Returns:
        A list of ``[<=batch, seq_len]`` int64 tensors.

    >>> [b.shape for b in calibration_batches(torch.arange(100), samples=5, seq_len=8, batch=4)]
    [torch.Size([4, 8]), torch.Size([1, 8])]
    """
    windows = random_windows(tokens, samples, seq_len, torch.Generator().manual_seed(seed))[:, :seq_len]
    return list(windows.split(batch))
