"""NNI's ``Task``, ``TaskResult``, ``BasePruningScheduler`` and ``PruningScheduler`` (2.10).

Task files are safe to load: a ``model.pth`` is a ``state_dict`` and a ``masks.pth`` a dict of
tensors, both read with ``weights_only=True``; a model is rebuilt from a skeleton module kept in
memory plus its ``state_dict`` (see :mod:`purecompress.compat.pruning.task_generator`).

This module holds the schedulers, the loop that runs the tasks, and NNI's two constructor forms
(:func:`parse_evaluator_args`); it re-exports the tasks and their files
(:mod:`~purecompress.compat.pruning.task_generator`) so every name keeps this path.
"""

from __future__ import annotations

import copy
import os
from typing import Any

import torch
from torch import Tensor, nn

from purecompress.compat.pruning.base import NniMasks
from purecompress.compat.pruning.task_generator import PathLike as PathLike
from purecompress.compat.pruning.task_generator import Task, TaskResult
from purecompress.compat.pruning.task_generator import same_structure as same_structure

__all__ = [
    "BasePruningScheduler",
    "PruningScheduler",
]


def _masks_sparsity(masks: NniMasks) -> float:
    """Fraction of the masked weights that are zero (for the progress bar)."""
    total = kept = 0
    for targets in masks.values():
        weight = targets.get("weight")
        if weight is not None:
            total += weight.numel()
            kept += int(weight.count_nonzero())
    return 1.0 - kept / total if total else 0.0


def _progress_enabled(progress: bool | None) -> bool | None:
    """tqdm's ``disable``: None shows the bar only on a terminal; PURECOMPRESS_PROGRESS=0 turns it off."""
    if progress is None and os.environ.get("PURECOMPRESS_PROGRESS", "").lower() in ("0", "false", "off"):
        return True
    return None if progress is None else not progress


class BasePruningScheduler:
    """The loop of an iterative pruning run: ``generate_task -> pruning_one_step -> record_task_result``.

    Attributes:
        progress: show a tqdm bar (iteration, sparsity, score): None (default) on a terminal only,
            True always, False never. ``PURECOMPRESS_PROGRESS=0`` turns the default off.
    """

    progress: bool | None = None
    total_tasks: int | None = None

    def generate_task(self) -> Task | None:
        """The next task, or None when the run is over."""
        raise NotImplementedError

    def record_task_result(self, task_result: TaskResult) -> None:
        """Hand a result back to whoever generates the tasks."""
        raise NotImplementedError

    def pruning_one_step(self, task: Task) -> TaskResult:
        """Run one task."""
        raise NotImplementedError

    def get_best_result(self) -> tuple[int | str, nn.Module, NniMasks, float | None, list[dict]] | None:
        """``(task_id, compact model, its masks, score, config list)`` of the best result."""
        raise NotImplementedError

    def compress(self) -> None:
        """Run every task."""
        from tqdm.auto import tqdm

        # a task is a whole pruning step: draw the bar after every one (mininterval=0)
        with tqdm(total=self.total_tasks, desc=type(self).__name__, unit="task",
                  disable=_progress_enabled(self.progress), leave=False, mininterval=0) as bar:
            task = self.generate_task()
            while task is not None:
                result = self.pruning_one_step(task)
                self.record_task_result(result)
                sparsity = _masks_sparsity(result.pruner_generated_masks)
                bar.set_postfix(iteration=task.task_id, sparsity=f"{sparsity:.3f}", score=result.score, refresh=False)
                bar.update()
                del result
                task = self.generate_task()


def _is_evaluator(obj: object) -> bool:
    try:
        from purecompress.compat.evaluator import Evaluator
    except ImportError:  # the training-aware pruners' feature is not there: duck-type NNI's
        return all(callable(getattr(obj, m, None)) for m in ("bind_model", "finetune", "evaluate"))
    return isinstance(obj, Evaluator)


def parse_evaluator_args(owner: str, new_api: dict[str, Any], old_api: dict[str, Any], args: tuple[Any, ...],
                         kwargs: dict[str, Any]) -> tuple[bool, dict[str, Any]]:
    """NNI's two constructor forms: ``(evaluator: Evaluator, ...)`` or ``(finetuner, ..., evaluator=fn)``.

    Args:
        owner: class name for error messages.
        new_api: the evaluator form's argument name -> default (``...`` for required), in
            positional order.
        old_api: the same for the finetuner form.
        args: what the caller passed positionally after the fixed arguments.
        kwargs: what the caller passed by keyword.

    Returns:
        ``(using_evaluator, {name: value})``.
    """
    first = args[0] if args else kwargs.get("evaluator")
    using_evaluator = _is_evaluator(first) and (bool(args) or "finetuner" not in kwargs)
    api = new_api if using_evaluator else old_api
    names = list(api)
    if len(args) > len(names):
        raise TypeError(f"{owner}() takes {len(names)} optional positional arguments, got {len(args)}")
    merged = dict(zip(names, args))
    for key, value in kwargs.items():
        if key in merged:
            raise TypeError(f"{owner}() got multiple values for argument {key!r}")
        if key not in api:
            raise TypeError(f"{owner}() got an unexpected keyword argument {key!r}")
        merged[key] = value
    for key, default in api.items():
        if key not in merged:
            if default is ...:
                raise TypeError(f"{owner}() missing required argument {key!r}")
            merged[key] = copy.deepcopy(default)
    return using_evaluator, merged


def speedup_class() -> Any:
    """``purecompress.compat.speedup.ModelSpeedup``, or a clear error while it does not exist."""
    try:
        from purecompress.compat.speedup import ModelSpeedup
    except ImportError as err:
        raise NotImplementedError("speedup=True needs purecompress.compat.speedup.ModelSpeedup (the compact-model "
                                  "shrinking feature), which this purecompress does not provide yet; "
                                  "use speedup=False (masks only)") from err
    return ModelSpeedup


def _bake_masks(model: nn.Module, masks: NniMasks) -> None:
    """Zero the pruned entries of ``model``'s parameters in place."""
    modules = dict(model.named_modules())
    with torch.no_grad():
        for name, targets in masks.items():
            for target, mask in targets.items():
                param = getattr(modules[name], target, None) if name in modules else None
                if mask is not None and isinstance(param, Tensor):
                    param.mul_(mask.to(param.dtype))


class PruningScheduler(BasePruningScheduler):
    """Runs a pruner over the tasks of a task generator (NNI's ``PruningScheduler``).

    Two forms, as NNI: ``PruningScheduler(pruner, task_generator, evaluator: Evaluator,
    speedup=False, reset_weight=False)`` or ``PruningScheduler(pruner, task_generator,
    finetuner=None, speedup=False, dummy_input=None, evaluator=None, reset_weight=False)`` with
    plain callables ``finetuner(model)`` and ``evaluator(model) -> float``.

    A step is: masks -> (shrink) -> finetune -> evaluate; with ``reset_weight``: finetune ->
    masks -> weights back to the task's start (pruned entries zero) -> (shrink) -> evaluate
    (lottery ticket). Without shrinking, finetuning and evaluation see the masked model.
    """

    def __init__(self, pruner: Any, task_generator: Any, *args: Any, **kwargs: Any) -> None:
        self.using_evaluator, options = parse_evaluator_args(
            type(self).__name__, {"evaluator": ..., "speedup": False, "reset_weight": False},
            {"finetuner": None, "speedup": False, "dummy_input": None, "evaluator": None, "reset_weight": False},
            args, kwargs)
        self._setup(pruner, task_generator, options)

    def _setup(self, pruner: Any, task_generator: Any, options: dict[str, Any],
               model: nn.Module | None = None) -> None:
        self.pruner = pruner
        self.task_generator = task_generator
        self.speedup = bool(options.get("speedup", False))
        self.reset_weight = bool(options.get("reset_weight", False))
        self.evaluator = options.get("evaluator") if self.using_evaluator else None
        self._evaluator = None if self.using_evaluator else options.get("evaluator")
        self.finetuner = None if self.using_evaluator else options.get("finetuner")
        self.dummy_input = None if self.using_evaluator else options.get("dummy_input")
        if self.evaluator is not None and model is not None and not self.evaluator._initialization_complete:
            self.evaluator._init_optimizer_helpers(model)  # the optimizer recipe, from the unwrapped model
        if self.speedup:
            speedup_class()

    def reset(self, model: nn.Module, config_list: list[dict], masks: NniMasks | None = None) -> None:
        """Restart the task generator on a new model."""
        self.task_generator.reset(model, config_list, masks or {})

    def generate_task(self) -> Task | None:
        """The task generator's next task."""
        return self.task_generator.next()

    def record_task_result(self, task_result: TaskResult) -> None:
        """Give the result to the task generator."""
        self.task_generator.receive_task_result(task_result)

    def get_best_result(self) -> tuple[int | str, nn.Module, NniMasks, float | None, list[dict]] | None:
        """The task generator's best result."""
        return self.task_generator.get_best_result()

    def _shrink(self, task: Task, model: nn.Module, masks: NniMasks) -> bool:
        if not (self.speedup and task.speedup):
            return False
        dummy = self.evaluator.get_dummy_input() if self.using_evaluator else self.dummy_input
        if dummy is None:
            raise ValueError("speedup=True needs a dummy_input (or an evaluator with one)")
        speedup_class()(model, dummy, masks).speedup_model()
        return True

    def _has(self, kind: str) -> bool:
        return self.using_evaluator or (self.finetuner if kind == "finetune" else self._evaluator) is not None

    def _invoke(self, kind: str, model: nn.Module) -> float | None:
        if self.using_evaluator:
            out = self.evaluator.finetune() if kind == "finetune" else self.evaluator.evaluate()
            return out[0] if isinstance(out, tuple) else out
        fn = self.finetuner if kind == "finetune" else self._evaluator
        return fn(model) if fn is not None else None

    def _run(self, kind: str, model: nn.Module, wrap: bool) -> float | None:
        """Finetune or evaluate ``model``; the evaluator is bound first, then the pruner's wrappers
        (masks applied) are put in when ``wrap`` (NNI's order)."""
        if self.using_evaluator:
            self.evaluator.bind_model(model)
        try:
            if wrap:
                self.pruner._wrap_model()
            try:
                return self._invoke(kind, model)
            finally:
                if wrap:
                    self.pruner._unwrap_model()
        finally:
            if self.using_evaluator:
                self.evaluator.unbind_model()

    def pruning_one_step(self, task: Task) -> TaskResult:
        """Run ``task``: see the class docstring for the order of the steps."""
        model, masks, config_list = task.load_data()
        checkpoint = copy.deepcopy(model.state_dict()) if self.reset_weight else None
        self.pruner.reset(model, config_list)
        self.pruner.load_masks(masks)
        if checkpoint is not None and task.finetune and self._has("finetune"):
            self._run("finetune", model, wrap=False)  # reset() wrapped it with the task's starting masks
        compact_model, generated = self.pruner.compress()
        compact_masks = {k: dict(v) for k, v in generated.items()}
        self.pruner._unwrap_model()
        if checkpoint is not None:
            compact_model.load_state_dict(checkpoint)
            _bake_masks(compact_model, generated)
        shrunk = self._shrink(task, compact_model, generated)
        if shrunk:
            compact_masks = {}
        if checkpoint is None and task.finetune and self._has("finetune"):
            self._run("finetune", compact_model, wrap=not shrunk)
        score = None
        if task.evaluate and self._has("evaluate"):
            score = self._run("evaluate", compact_model, wrap=not shrunk)
        self.pruner.clear_model_references()
        return TaskResult(task.task_id, compact_model, compact_masks, generated, score)
