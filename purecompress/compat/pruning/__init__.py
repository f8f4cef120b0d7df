"""NNI 2.x's pruning API (``nni.compression.pytorch.pruning`` and
``nni.algorithms.compression.v2.pytorch.pruning``), grouped as NNI groups it.

- :mod:`.base`: :class:`Pruner`, :class:`PrunerModuleWrapper`;
- :mod:`.tools`: data collectors, metrics calculators, sparsity allocators, :class:`Scaling`;
- :mod:`.basic_pruner`: the one-shot and training-aware pruners, ADMM;
- :mod:`.movement_pruner`: :class:`MovementPruner`;
- :mod:`.task_generator`, :mod:`.basic_scheduler`, :mod:`.iterative_pruner`, :mod:`.amc_pruner`:
  iterative pruning (tasks, schedulers, Linear/AGP/Lottery/SA/AutoCompress/AMC pruners).
"""

from __future__ import annotations

from purecompress.compat.pruning.amc_pruner import (
    AMCPruner,
    AMCTaskGenerator,
)
from purecompress.compat.pruning.base import (
    TARGETS,
    NniMasks,
    Pruner,
    PrunerModuleWrapper,
)
from purecompress.compat.pruning.basic_pruner import (
    ActivationAPoZRankPruner,
    ActivationMeanRankPruner,
    ADMMPruner,
    BasicPruner,
    FPGMPruner,
    L1NormPruner,
    L2NormPruner,
    LevelPruner,
    SlimPruner,
    TaylorFOWeightPruner,
)
from purecompress.compat.pruning.basic_scheduler import (
    BasePruningScheduler,
    PruningScheduler,
)
from purecompress.compat.pruning.iterative_pruner import (
    PRUNER_DICT,
    AGPPruner,
    AutoCompressPruner,
    AutoCompressTaskGenerator,
    LinearPruner,
    LotteryTicketPruner,
    SimulatedAnnealingPruner,
    inner_pruner,
)
from purecompress.compat.pruning.movement_pruner import (
    MovementPruner,
)
from purecompress.compat.pruning.task_generator import (
    AGPTaskGenerator,
    FunctionBasedTaskGenerator,
    LinearTaskGenerator,
    LotteryTicketTaskGenerator,
    SimulatedAnnealingTaskGenerator,
    Task,
    TaskGenerator,
    TaskResult,
    load_model,
    save_model,
)
from purecompress.compat.pruning.tools import (
    APoZRankMetricsCalculator,
    BankSparsityAllocator,
    DataCollector,
    DependencyAwareAllocator,
    DistMetricsCalculator,
    EvaluatorBasedDataCollector,
    EvaluatorBasedHookDataCollector,
    EvaluatorBasedTargetDataCollector,
    GlobalSparsityAllocator,
    HookCollectorInfo,
    HookDataNormMetricsCalculator,
    MeanRankMetricsCalculator,
    MetricsCalculator,
    NormalSparsityAllocator,
    NormMetricsCalculator,
    Scalers,
    Scaling,
    SingleHookTrainerBasedDataCollector,
    SparsityAllocator,
    StraightMetricsCalculator,
    Target,
    TargetDataCollector,
    ThresholdSparsityAllocator,
    TrainerBasedDataCollector,
    WeightDataCollector,
    WeightTrainerBasedDataCollector,
    get_scaler,
    normalize_scalers,
)

__all__ = [
    "ADMMPruner",
    "AGPPruner",
    "AGPTaskGenerator",
    "AMCPruner",
    "AMCTaskGenerator",
    "APoZRankMetricsCalculator",
    "ActivationAPoZRankPruner",
    "ActivationMeanRankPruner",
    "AutoCompressPruner",
    "AutoCompressTaskGenerator",
    "BankSparsityAllocator",
    "BasePruningScheduler",
    "BasicPruner",
    "DataCollector",
    "DependencyAwareAllocator",
    "DistMetricsCalculator",
    "EvaluatorBasedDataCollector",
    "EvaluatorBasedHookDataCollector",
    "EvaluatorBasedTargetDataCollector",
    "FPGMPruner",
    "FunctionBasedTaskGenerator",
    "GlobalSparsityAllocator",
    "HookCollectorInfo",
    "HookDataNormMetricsCalculator",
    "L1NormPruner",
    "L2NormPruner",
    "LevelPruner",
    "LinearPruner",
    "LinearTaskGenerator",
    "LotteryTicketPruner",
    "LotteryTicketTaskGenerator",
    "MeanRankMetricsCalculator",
    "MetricsCalculator",
    "MovementPruner",
    "NniMasks",
    "NormMetricsCalculator",
    "NormalSparsityAllocator",
    "PRUNER_DICT",
    "Pruner",
    "PrunerModuleWrapper",
    "PruningScheduler",
    "Scalers",
    "Scaling",
    "SimulatedAnnealingPruner",
    "SimulatedAnnealingTaskGenerator",
    "SingleHookTrainerBasedDataCollector",
    "SlimPruner",
    "SparsityAllocator",
    "StraightMetricsCalculator",
    "TARGETS",
    "Target",
    "TargetDataCollector",
    "Task",
    "TaskGenerator",
    "TaskResult",
    "TaylorFOWeightPruner",
    "ThresholdSparsityAllocator",
    "TrainerBasedDataCollector",
    "WeightDataCollector",
    "WeightTrainerBasedDataCollector",
    "get_scaler",
    "inner_pruner",
    "load_model",
    "normalize_scalers",
    "save_model",
]
