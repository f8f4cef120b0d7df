"""NNI 2.x's compression object API on purecompress's functional core.

Existing NNI scripts run with their imports changed to ``purecompress.compat``, or unchanged with
``python -m purecompress.compat SCRIPT.py``. Every mask is computed by the core; the classes here
hold the model and wrap its modules in place, as NNI does.
"""

from __future__ import annotations

from purecompress.compat.base import Pruner
from purecompress.compat.data_collector import DataCollector, TargetDataCollector
from purecompress.compat.metrics_calculator import (
    DistMetricsCalculator,
    MetricsCalculator,
    NormMetricsCalculator,
    StraightMetricsCalculator,
)
from purecompress.compat.pruning import BasicPruner, FPGMPruner, L1NormPruner, L2NormPruner, LevelPruner
from purecompress.compat.scaling import Scaling
from purecompress.compat.sparsity_allocator import (
    BankSparsityAllocator,
    GlobalSparsityAllocator,
    NormalSparsityAllocator,
    SparsityAllocator,
    ThresholdSparsityAllocator,
)
from purecompress.compat.trace import trace
from purecompress.compat.utils import (
    compute_sparsity,
    compute_sparsity_compact2origin,
    compute_sparsity_mask2compact,
    config_list_canonical,
)
from purecompress.compat.wrapper import PrunerModuleWrapper
from purecompress.config import ConfigError

#: NNI raises ``schema.SchemaError`` for bad configs; purecompress raises ConfigError (a ValueError).
SchemaError = ConfigError

__all__ = [
    "BankSparsityAllocator",
    "BasicPruner",
    "ConfigError",
    "DataCollector",
    "DistMetricsCalculator",
    "FPGMPruner",
    "GlobalSparsityAllocator",
    "L1NormPruner",
    "L2NormPruner",
    "LevelPruner",
    "MetricsCalculator",
    "NormMetricsCalculator",
    "NormalSparsityAllocator",
    "Pruner",
    "PrunerModuleWrapper",
    "Scaling",
    "SchemaError",
    "SparsityAllocator",
    "StraightMetricsCalculator",
    "TargetDataCollector",
    "ThresholdSparsityAllocator",
    "compute_sparsity",
    "compute_sparsity_compact2origin",
    "compute_sparsity_mask2compact",
    "config_list_canonical",
    "trace",
]
