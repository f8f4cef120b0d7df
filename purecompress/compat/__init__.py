"""NNI 2.x's compression object API on purecompress's functional core.

Existing NNI scripts run with their imports changed to ``purecompress.compat``, or unchanged with
``python -m purecompress.compat SCRIPT.py``. Every mask is computed by the core; the classes here
hold the model and wrap its modules in place, as NNI does.

The one-shot pruning API is imported eagerly; the rest (training-aware and iterative pruners,
schedulers, evaluators, quantizers, ModelSpeedup) is found on first use in :data:`LAZY_MODULES`,
so ``from purecompress.compat import TaylorFOWeightPruner`` works without importing everything.
"""

from __future__ import annotations

import importlib
from typing import Any

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

#: Modules searched (in order) for a name not imported above.
LAZY_MODULES = (
    "purecompress.compat.training_pruners",
    "purecompress.compat.iterative",
    "purecompress.compat.scheduler",
    "purecompress.compat.task_generator",
    "purecompress.compat.evaluator",
    "purecompress.compat.speedup",
    "purecompress.compat.quantization",
    "purecompress.compat.counter",
)


def __getattr__(name: str) -> Any:
    if not name.startswith("_"):
        for path in LAZY_MODULES:
            module = importlib.import_module(path)
            if name in getattr(module, "__all__", ()):
                return getattr(module, name)
    raise AttributeError(f"module 'purecompress.compat' has no attribute {name!r}")
