"""``nni.compression.pytorch.pruning.tools``: collectors, metrics calculators, allocators, Scaling.

Re-exports, one per line; the classes live in one module per concept.
"""

from __future__ import annotations

from purecompress.compat.data_collector import DataCollector, TargetDataCollector
from purecompress.compat.metrics_calculator import (
    DistMetricsCalculator,
    MetricsCalculator,
    NormMetricsCalculator,
    StraightMetricsCalculator,
)
from purecompress.compat.scaling import Scaling
from purecompress.compat.sparsity_allocator import (
    BankSparsityAllocator,
    GlobalSparsityAllocator,
    NormalSparsityAllocator,
    SparsityAllocator,
    ThresholdSparsityAllocator,
)

__all__ = [
    "BankSparsityAllocator",
    "DataCollector",
    "DistMetricsCalculator",
    "GlobalSparsityAllocator",
    "MetricsCalculator",
    "NormMetricsCalculator",
    "NormalSparsityAllocator",
    "Scaling",
    "SparsityAllocator",
    "StraightMetricsCalculator",
    "TargetDataCollector",
    "ThresholdSparsityAllocator",
]
