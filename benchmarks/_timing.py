"""Shared timing helpers for the benchmarks: medians of repeats, ratios, markdown tables."""

from __future__ import annotations

import platform
import statistics
import time
from collections.abc import Callable

import torch

try:  # a script in benchmarks/ (benchmarks/ is sys.path[0]) or the benchmarks package (tests)
    from zoo_import import install_import_hook
except ModuleNotFoundError:
    from benchmarks.zoo_import import install_import_hook

# NNI imports Lightning, which imports torchmetrics and torchvision: make that import work on the CPU torch
install_import_hook()

__all__ = ["environment", "interleaved_medians", "median_time", "paired_ratio", "table"]


def median_time(fn: Callable[[], object], *, repeats: int = 5, warmup: int = 1, budget_s: float = 30.0) -> float:
    """Median wall time of ``fn()`` over ``repeats`` runs (fewer if one run exceeds the budget)."""
    for _ in range(warmup):
        fn()
    times: list[float] = []
    while len(times) < repeats:
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
        if sum(times) > budget_s:
            break
    return statistics.median(times)


def interleaved_medians(steps: dict[str, Callable[[], object]], *, repeats: int, inner: int, warmup: int = 0,
                        sync: Callable[[], object] | None = None) -> dict[str, float]:
    """Median seconds per call of each step, the steps' rounds interleaved (drift hits all alike).

    ``warmup`` untimed calls of each first (compilation); ``sync`` (e.g. ``torch.cuda.synchronize``)
    runs before and after each timed round.
    """
    for step in steps.values():
        for _ in range(warmup):
            step()
    times: dict[str, list[float]] = {k: [] for k in steps}
    for _ in range(repeats):
        for name, step in steps.items():
            if sync is not None:
                sync()
            start = time.perf_counter()
            for _ in range(inner):
                step()
            if sync is not None:
                sync()
            times[name].append((time.perf_counter() - start) / inner)
    return {k: statistics.median(v) for k, v in times.items()}


def paired_ratio(fn: Callable[[], object], baseline: Callable[[], object], *, repeats: int = 15,
                 warmup: int = 2) -> float:
    """Median over ``repeats`` of time(fn) / time(baseline), the two run back to back each time.

    Pairing cancels most of the drift a shared machine adds (other processes come and go).
    """
    for _ in range(warmup):
        fn()
        baseline()
    ratios = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        middle = time.perf_counter()
        baseline()
        end = time.perf_counter()
        ratios.append((middle - start) / (end - middle))
    return statistics.median(ratios)


def environment() -> str:
    """One line naming the machine and versions (for RESULTS.md)."""
    return (f"{platform.machine()} {platform.processor() or ''} {torch.get_num_threads()} threads, "
            f"python {platform.python_version()}, torch {torch.__version__}")


def table(header: list[str], rows: list[list[str]]) -> str:
    """A markdown table."""
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines)
