"""What NNI's iterative pruners (2.10) share: the inner pruner chosen by name, and the schedule base.

:data:`PRUNER_DICT` maps each ``pruning_algorithm`` name ('level', 'l1', 'l2', 'fpgm', 'slim',
'apoz', 'mean_activation', 'taylorfo', 'admm') to the compat class that prunes one task, and
:func:`inner_pruner` builds it unbound. :class:`_IterativePruner` is the abstract, shared
constructor of the schedule-driven pruners (Linear, AGP, LotteryTicket): a leaf only names its
task generator. Both are re-exported by :mod:`purecompress.compat.iterative`, the public home.
"""

from __future__ import annotations

import importlib
import logging
from typing import Any

from torch import nn

from purecompress.compat.scheduler import PruningScheduler, parse_evaluator_args
from purecompress.compat.task_generator import LinearTaskGenerator, LotteryTicketTaskGenerator, TaskGenerator

__all__ = ["PRUNER_DICT", "inner_pruner"]

_logger = logging.getLogger(__name__)

_BASIC = ("purecompress.compat.pruning", "the compat pruning base (Level/L1/L2/FPGM pruners)")
_TRAINING = ("purecompress.compat.training_pruners", "the training-aware pruners (Slim/APoZ/Mean/TaylorFO/ADMM)")

#: inner pruner name -> (module, class, the feature that provides it)
PRUNER_DICT: dict[str, tuple[str, str, str]] = {
    "level": (_BASIC[0], "LevelPruner", _BASIC[1]),
    "l1": (_BASIC[0], "L1NormPruner", _BASIC[1]),
    "l2": (_BASIC[0], "L2NormPruner", _BASIC[1]),
    "fpgm": (_BASIC[0], "FPGMPruner", _BASIC[1]),
    "slim": (_TRAINING[0], "SlimPruner", _TRAINING[1]),
    "apoz": (_TRAINING[0], "ActivationAPoZRankPruner", _TRAINING[1]),
    "mean_activation": (_TRAINING[0], "ActivationMeanRankPruner", _TRAINING[1]),
    "taylorfo": (_TRAINING[0], "TaylorFOWeightPruner", _TRAINING[1]),
    "admm": (_TRAINING[0], "ADMMPruner", _TRAINING[1]),
}


def inner_pruner(name: str, pruning_params: dict[str, Any] | None = None, model: nn.Module | None = None) -> Any:
    """The unbound pruner ``name`` (``Pruner(None, None, **pruning_params)``), or a clear error.

    A training pruner's evaluator learns the optimizer recipe from ``model`` (NNI traces it there).
    """
    if name not in PRUNER_DICT:
        raise ValueError(f"unknown pruning_algorithm {name!r}; supported: {list(PRUNER_DICT)}")
    module_name, class_name, feature = PRUNER_DICT[name]
    try:
        cls = getattr(importlib.import_module(module_name), class_name)
    except (ImportError, AttributeError) as err:
        raise NotImplementedError(f"pruning_algorithm={name!r} needs {module_name}.{class_name}, provided by "
                                  f"{feature}, which this purecompress does not have yet") from err
    pruner = cls(None, None, **dict(pruning_params or {}))
    evaluator = getattr(pruner, "evaluator", None)
    if model is not None and evaluator is not None and not evaluator._initialization_complete:
        evaluator._init_optimizer_helpers(model)
    return pruner


_NEW = {"evaluator": None, "speedup": False, "pruning_params": {}}
_OLD = {"finetuner": None, "speedup": False, "dummy_input": None, "evaluator": None, "pruning_params": {}}


class _IterativePruner(PruningScheduler):
    """Shared constructor of the function-based pruners (abstract: leaves set the generator)."""

    generator: type[TaskGenerator] = LinearTaskGenerator
    reset_weight_default: bool | None = None

    def __init__(self, model: nn.Module, config_list: list[dict], pruning_algorithm: str, total_iteration: int,
                 log_dir: str = ".", keep_intermediate_result: bool = False, *args: Any, **kwargs: Any) -> None:
        new, old = dict(_NEW), dict(_OLD)
        if self.reset_weight_default is not None:  # NNI puts reset_weight just before pruning_params
            new = {"evaluator": None, "speedup": False, "reset_weight": self.reset_weight_default, "pruning_params": {}}
            old = {"finetuner": None, "speedup": False, "dummy_input": None, "evaluator": None,
                   "reset_weight": self.reset_weight_default, "pruning_params": {}}
        self.using_evaluator, options = parse_evaluator_args(type(self).__name__, new, old, args, kwargs)
        generator = self.generator(total_iteration=total_iteration, origin_model=model,
                                   origin_config_list=config_list, log_dir=log_dir,
                                   keep_intermediate_result=keep_intermediate_result)  # type: ignore[call-arg]
        self.total_tasks = total_iteration + (0 if self.generator is LotteryTicketTaskGenerator else 1)
        self._setup(inner_pruner(pruning_algorithm, options["pruning_params"], model), generator, options, model)

    def _wrap_model(self) -> None:
        _logger.debug("%s does not wrap the model; nothing to do", type(self).__name__)

    def _unwrap_model(self) -> None:
        _logger.debug("%s does not wrap the model; nothing to do", type(self).__name__)

    def export_model(self, *args: Any, **kwargs: Any) -> None:
        """Nothing: the best result is under ``log_dir`` (and from :meth:`get_best_result`)."""
        del args, kwargs
        _logger.debug("%s: the best result is under log_dir", type(self).__name__)
