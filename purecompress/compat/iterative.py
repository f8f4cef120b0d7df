"""NNI's iterative pruners (2.10): Linear, AGP, LotteryTicket, SimulatedAnnealing, AutoCompress, AMC.

Same constructors as ``nni.compression.pytorch.pruning`` (both the ``evaluator`` form and the
legacy ``finetuner``/``dummy_input``/``evaluator`` form); each is a
:class:`~purecompress.compat.scheduler.PruningScheduler` over a task generator whose numbers come
from :mod:`purecompress.schedule` and :mod:`purecompress.search`. The inner pruner is chosen by
name: 'level', 'l1', 'l2', 'fpgm', 'slim', 'apoz', 'mean_activation', 'taylorfo', 'admm'.

This module is the public home of all of them. The inner-pruner registry (:data:`PRUNER_DICT`,
:func:`inner_pruner`) and the shared base of the schedule-driven pruners live in
:mod:`~purecompress.compat.iterative_base`, AMC in :mod:`~purecompress.compat.amc_pruner`; both
are re-exported here, so every name keeps this path.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from torch import nn

from purecompress.compat.amc_pruner import AMCPruner, AMCTaskGenerator
from purecompress.compat.iterative_base import PRUNER_DICT, _IterativePruner, inner_pruner
from purecompress.compat.scheduler import NniMasks, PruningScheduler, parse_evaluator_args
from purecompress.compat.task_generator import (
    AGPTaskGenerator,
    LinearTaskGenerator,
    LotteryTicketTaskGenerator,
    SimulatedAnnealingTaskGenerator,
)

__all__ = [
    "AGPPruner",
    "AMCPruner",
    "AMCTaskGenerator",
    "AutoCompressPruner",
    "AutoCompressTaskGenerator",
    "LinearPruner",
    "LotteryTicketPruner",
    "PRUNER_DICT",
    "SimulatedAnnealingPruner",
]


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
