"""What NNI's iterative pruners (2.10) share: the inner pruner chosen by name, and the schedule base.

:data:`PRUNER_DICT` maps each ``pruning_algorithm`` name ('level', 'l1', 'l2', 'fpgm', 'slim',
'apoz', 'mean_activation', 'taylorfo', 'admm') to the compat class that prunes one task, and
:func:`inner_pruner` builds it unbound. :class:`_IterativePruner` is the abstract, shared
constructor of the schedule-driven pruners (Linear, AGP, LotteryTicket): a leaf only names its
task generator. Both are re-exported by :mod:`purecompress.compat.pruning`, the public home.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from torch import nn

from purecompress.compat.pruning.base import NniMasks, Pruner
from purecompress.compat.pruning.basic_pruner import (
    ActivationAPoZRankPruner,
    ActivationMeanRankPruner,
    ADMMPruner,
    FPGMPruner,
    L1NormPruner,
    L2NormPruner,
    LevelPruner,
    SlimPruner,
    TaylorFOWeightPruner,
)
from purecompress.compat.pruning.basic_scheduler import PruningScheduler, parse_evaluator_args
from purecompress.compat.pruning.task_generator import (
    AGPTaskGenerator,
    LinearTaskGenerator,
    LotteryTicketTaskGenerator,
    SimulatedAnnealingTaskGenerator,
    TaskGenerator,
)

__all__ = [
    "AGPPruner",
    "AutoCompressPruner",
    "AutoCompressTaskGenerator",
    "LinearPruner",
    "LotteryTicketPruner",
    "PRUNER_DICT",
    "SimulatedAnnealingPruner",
    "inner_pruner",
]


_logger = logging.getLogger(__name__)


#: inner pruner name -> its class (NNI's ``PRUNER_DICT``)
PRUNER_DICT: dict[str, type[Pruner]] = {
    "level": LevelPruner,
    "l1": L1NormPruner,
    "l2": L2NormPruner,
    "fpgm": FPGMPruner,
    "slim": SlimPruner,
    "apoz": ActivationAPoZRankPruner,
    "mean_activation": ActivationMeanRankPruner,
    "taylorfo": TaylorFOWeightPruner,
    "admm": ADMMPruner,
}


def inner_pruner(name: str, pruning_params: dict[str, Any] | None = None, model: nn.Module | None = None) -> Any:
    """The unbound pruner ``name`` (``Pruner(None, None, **pruning_params)``), or a clear error.

    A training pruner's evaluator learns the optimizer recipe from ``model`` (NNI traces it there).
    """
    if name not in PRUNER_DICT:
        raise ValueError(f"unknown pruning_algorithm {name!r}; supported: {list(PRUNER_DICT)}")
    cls = PRUNER_DICT[name]
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



class LinearPruner(_IterativePruner):
    """Sparsity rises evenly: iterations ``0..N`` at ``i/N * s``.

    ``LinearPruner(model, config_list, pruning_algorithm, total_iteration, log_dir='.',
    keep_intermediate_result=False, evaluator=None, speedup=False, pruning_params={})`` or the
    legacy form with ``finetuner``, ``speedup``, ``dummy_input``, ``evaluator``, ``pruning_params``.
    """

    generator = LinearTaskGenerator



class AGPPruner(_IterativePruner):
    """Automated gradual pruning (Zhu & Gupta): iterations ``0..N`` at ``(1 - (1 - i/N)^3) * s``.

    Arguments as :class:`LinearPruner`.
    """

    generator = AGPTaskGenerator



class LotteryTicketPruner(_IterativePruner):
    """Lottery ticket: rounds ``1..N`` at ``1 - (1 - s)^(i/N)``; weights rewound after each round.

    Arguments as :class:`LinearPruner` plus ``reset_weight=True`` before ``pruning_params``.
    """

    generator = LotteryTicketTaskGenerator
    reset_weight_default = True



_SA_OPTIONS = {"start_temperature": 100, "stop_temperature": 20, "cool_down_rate": 0.9,
               "perturbation_magnitude": 0.35, "pruning_algorithm": "level", "pruning_params": {},
               "log_dir": ".", "keep_intermediate_result": False}



class SimulatedAnnealingPruner(PruningScheduler):
    """Simulated annealing over per-layer sparsities (each task prunes the origin model).

    ``SimulatedAnnealingPruner(model, config_list, evaluator, start_temperature=100,
    stop_temperature=20, cool_down_rate=0.9, perturbation_magnitude=0.35, pruning_algorithm='level',
    pruning_params={}, log_dir='.', keep_intermediate_result=False, speedup=False)``, or the legacy
    form ending ``..., finetuner=None, speedup=False, dummy_input=None``. ``seed=`` (keyword,
    purecompress) makes the search reproducible.
    """

    def __init__(self, model: nn.Module, config_list: list[dict], *args: Any, seed: int | None = None,
                 **kwargs: Any) -> None:
        new = {"evaluator": ..., **_SA_OPTIONS, "speedup": False}
        old = {"evaluator": ..., **_SA_OPTIONS, "finetuner": None, "speedup": False, "dummy_input": None}
        self.using_evaluator, o = parse_evaluator_args(type(self).__name__, new, old, args, kwargs)
        generator = SimulatedAnnealingTaskGenerator(
            origin_model=model, origin_config_list=config_list, start_temperature=o["start_temperature"],
            stop_temperature=o["stop_temperature"], cool_down_rate=o["cool_down_rate"],
            perturbation_magnitude=o["perturbation_magnitude"], log_dir=o["log_dir"],
            keep_intermediate_result=o["keep_intermediate_result"], seed=seed)
        self._setup(inner_pruner(o["pruning_algorithm"], o["pruning_params"], model), generator, o, model)



class AutoCompressTaskGenerator(LotteryTicketTaskGenerator):
    """Lottery-ticket schedule whose per-iteration sparsity is redistributed by simulated annealing."""

    def __init__(self, total_iteration: int, origin_model: nn.Module, origin_config_list: list[dict],
                 origin_masks: NniMasks | None = None, sa_params: dict | None = None, log_dir: str = ".",
                 keep_intermediate_result: bool = False) -> None:
        self._sa_params = dict(sa_params or {})
        self._sa_pruner: SimulatedAnnealingPruner | None = None
        super().__init__(total_iteration=total_iteration, origin_model=origin_model,
                         origin_config_list=origin_config_list, origin_masks=origin_masks, log_dir=log_dir,
                         keep_intermediate_result=keep_intermediate_result)

    def allocate_sparsity(self, new_config_list: list[dict], model: nn.Module, masks: NniMasks) -> list[dict]:
        """Run a simulated-annealing search on the current model; its best config list."""
        if self._sa_pruner is None:
            self._sa_pruner = SimulatedAnnealingPruner(model, new_config_list, log_dir=Path(self._log_dir_root, "SA"),
                                                       **self._sa_params)
        else:
            self._sa_pruner.reset(model, new_config_list, masks)
        self._sa_pruner.progress = False
        self._sa_pruner.compress()
        best = self._sa_pruner.get_best_result()
        if best is None:
            raise RuntimeError("the simulated annealing search produced no result")
        return best[4]



class AutoCompressPruner(PruningScheduler):
    """AutoCompress: lottery-ticket rounds, each allocating by simulated annealing and pruning by ADMM.

    ``AutoCompressPruner(model, config_list, total_iteration, admm_params, sa_params, log_dir='.',
    keep_intermediate_result=False, evaluator=None, speedup=False)`` or the legacy form ending
    ``finetuner=None, speedup=False, dummy_input=None, evaluator=None``.
    """

    def __init__(self, model: nn.Module, config_list: list[dict], total_iteration: int, admm_params: dict,
                 sa_params: dict, log_dir: str = ".", keep_intermediate_result: bool = False, *args: Any,
                 **kwargs: Any) -> None:
        self.using_evaluator, o = parse_evaluator_args(
            type(self).__name__, {"evaluator": None, "speedup": False},
            {"finetuner": None, "speedup": False, "dummy_input": None, "evaluator": None}, args, kwargs)
        admm_params = dict(admm_params)
        if "granularity" not in admm_params:  # NNI: fine-grained unless SA prunes channels
            algo, algo_params = sa_params.get("pruning_algorithm", "level"), sa_params.get("pruning_params") or {}
            fine = algo == "level" or (algo == "admm" and algo_params.get("granularity") != "coarse-grained")
            admm_params["granularity"] = "fine-grained" if fine else "coarse-grained"
        pruner = inner_pruner("admm", admm_params, model)
        generator = AutoCompressTaskGenerator(total_iteration=total_iteration, origin_model=model,
                                              origin_config_list=config_list, sa_params=sa_params, log_dir=log_dir,
                                              keep_intermediate_result=keep_intermediate_result)
        self.total_tasks = total_iteration
        self._setup(pruner, generator, o, model)
