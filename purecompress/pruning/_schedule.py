"""Sparsity schedules: pure functions of the step.

Every schedule maps a step (an int: a training step or a pruning iteration) to a sparsity in
``[0, 1]``. Pruning happens at ``begin, begin + every, ...`` up to ``end``; between two pruning
steps the value is held, before ``begin`` it is ``initial`` and from ``end`` on it is ``final``.
Bind the options with :func:`functools.partial` to get a ``Schedule`` (``int -> float``)::

    schedule = functools.partial(agp_schedule, final=0.8, end=1000, every=100)

NNI's iterative pruners use the same functions with ``begin=0, end=total_iteration, every=1``
and the step being the iteration: see :func:`iteration_sparsities`.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Literal

__all__ = [
    "Schedule",
    "agp_schedule",
    "compose_sparsity",
    "constant_schedule",
    "iteration_sparsities",
    "linear_schedule",
    "lottery_schedule",
    "progress",
    "relative_sparsity",
]


Schedule = Callable[[int], float]



def _check(final: float, initial: float, begin: int, end: int, every: int) -> None:
    if not (0.0 <= initial <= 1.0 and 0.0 <= final <= 1.0):
        raise ValueError(f"sparsities must be in [0, 1], got initial={initial}, final={final}")
    if end <= begin:
        raise ValueError(f"end must be after begin, got begin={begin}, end={end}")
    if every < 1:
        raise ValueError(f"every must be a positive number of steps, got {every}")



def progress(step: int, *, begin: int = 0, end: int, every: int = 1) -> float:
    """Fraction of the pruning span done at ``step``, held between pruning steps.

    >>> [progress(t, begin=10, end=20, every=5) for t in (0, 10, 14, 15, 19, 20, 99)]
    [0.0, 0.0, 0.0, 0.5, 0.5, 1.0, 1.0]
    """
    if step <= begin:
        return 0.0
    if step >= end:
        return 1.0
    return ((step - begin) // every * every) / (end - begin)



def constant_schedule(step: int, value: float) -> float:
    """``value`` at every step (one-shot pruning as a schedule).

    >>> constant_schedule(7, 0.5)
    0.5
    """
    del step
    if not 0.0 <= value <= 1.0:
        raise ValueError(f"sparsity must be in [0, 1], got {value}")
    return value



def linear_schedule(step: int, final: float, *, begin: int = 0, end: int, every: int = 1,
                    initial: float = 0.0) -> float:
    """From ``initial`` to ``final`` in equal increments (NNI's LinearPruner: ``i/N * s``).

    >>> [round(linear_schedule(i, 0.8, end=4), 4) for i in range(5)]
    [0.0, 0.2, 0.4, 0.6, 0.8]
    """
    _check(final, initial, begin, end, every)
    return initial + (final - initial) * progress(step, begin=begin, end=end, every=every)



def agp_schedule(step: int, final: float, *, begin: int = 0, end: int, every: int = 1,
                 initial: float = 0.0) -> float:
    """Automated gradual pruning (Zhu & Gupta 2017): ``s_f + (s_i - s_f) (1 - p)^3``.

    ``p`` is :func:`progress`; fast pruning first, slow near the end.

    >>> [round(agp_schedule(i, 0.8, end=4), 4) for i in range(5)]
    [0.0, 0.4625, 0.7, 0.7875, 0.8]
    """
    _check(final, initial, begin, end, every)
    p = progress(step, begin=begin, end=end, every=every)
    # Written as NNI writes it, ``(1 - (1 - p)^3) * s`` at initial 0, so values match bit for bit.
    return initial + (final - initial) * (1.0 - (1.0 - p) ** 3)



def lottery_schedule(step: int, final: float, *, begin: int = 0, end: int, every: int = 1) -> float:
    """Geometric: each round prunes the same fraction of what survived, ``1 - (1 - s)^p``.

    NNI's LotteryTicketPruner runs rounds ``i = 1..N`` with ``p = i/N`` (its v1 formula).

    >>> [round(lottery_schedule(i, 0.75, end=2), 4) for i in range(3)]
    [0.0, 0.5, 0.75]
    """
    _check(final, 0.0, begin, end, every)
    return 1.0 - (1.0 - final) ** progress(step, begin=begin, end=end, every=every)



def relative_sparsity(target: float, current: float) -> float:
    """The sparsity to prune from a model already at ``current`` to reach ``target`` overall.

    ``max(0, (target - current) / (1 - current))``; 0 once the model is fully pruned.

    >>> relative_sparsity(0.75, 0.5)
    0.5
    >>> relative_sparsity(0.2, 0.5)
    0.0
    """
    if current >= 1.0:
        return 0.0
    return max(0.0, (target - current) / (1.0 - current))



def compose_sparsity(current: float, relative: float) -> float:
    """Overall sparsity after pruning ``relative`` of what a model at ``current`` keeps.

    >>> compose_sparsity(0.5, 0.5)
    0.75
    """
    return current + relative * (1.0 - current)



def iteration_sparsities(kind: Literal["agp", "linear", "lottery"], final: float,
                         total_iteration: int) -> list[float]:
    """The absolute sparsity of each task NNI's iterative pruners run.

    AGP and Linear: iterations ``0..N`` (``N + 1`` tasks, the first a warm-up at 0); Lottery
    ticket: iterations ``1..N`` (``N`` tasks).

    >>> [round(s, 6) for s in iteration_sparsities('agp', 0.8, 4)]
    [0.0, 0.4625, 0.7, 0.7875, 0.8]
    >>> len(iteration_sparsities('lottery', 0.8, 4))
    4
    """
    functions = {"agp": agp_schedule, "linear": linear_schedule, "lottery": lottery_schedule}
    if kind not in functions:
        raise ValueError(f"unknown schedule {kind!r}; use 'agp', 'linear' or 'lottery'")
    first = 1 if kind == "lottery" else 0
    return [functions[kind](i, final, end=total_iteration) for i in range(first, total_iteration + 1)]
