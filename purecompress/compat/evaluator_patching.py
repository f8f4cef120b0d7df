"""How an evaluator that owns optimizers binds a model: optimizer recipes and loss/step patches.

A pruner trains a wrapped copy of the user's model, so the user's optimizers (and traced LR
schedulers) are recorded as recipes (class, arguments, parameter *names*) and rebuilt for every
model bound. :class:`_PatchingEvaluator` is the shared, abstract base of the Torch and legacy
evaluators: it rebuilds from the recipes in ``bind_model`` and patches the criterion and the
first optimizer's ``step``. :class:`OptimizerRecipe` is re-exported by
:mod:`purecompress.compat.evaluator`.
"""

from __future__ import annotations

import copy
import types
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from torch import Tensor, nn
from torch.optim import Optimizer
from torch.optim.lr_scheduler import LRScheduler

from purecompress.compat.evaluator_base import Evaluator

__all__ = ["OptimizerRecipe"]


def _traced(obj: object) -> bool:
    return all(hasattr(obj, a) for a in ("trace_symbol", "trace_args", "trace_kwargs"))


class OptimizerRecipe:
    """How to rebuild an optimizer for another (wrapped) copy of the model: class, args, param names.

    Args:
        model: the model the optimizer was built for (parameters are recorded by name).
        optimizer: a traced or plain ``torch.optim.Optimizer``.
    """

    def __init__(self, model: nn.Module, optimizer: Optimizer) -> None:
        if not isinstance(optimizer, Optimizer):
            raise TypeError(f"expected a torch.optim.Optimizer, got {type(optimizer).__name__}")
        names = {id(p): n for n, p in model.named_parameters()}
        if _traced(optimizer):
            self.cls = optimizer.trace_symbol  # type: ignore[attr-defined]
            args, kwargs = list(optimizer.trace_args), dict(optimizer.trace_kwargs)  # type: ignore[attr-defined]
            groups = kwargs.pop("params") if "params" in kwargs else args.pop(0)
            groups = list(groups)
            if groups and not isinstance(groups[0], Mapping):
                groups = [{"params": groups}]
        else:
            self.cls = type(optimizer)
            args, kwargs = [], dict(optimizer.defaults)
            groups = optimizer.param_groups
        self.args, self.kwargs = copy.deepcopy(args), copy.deepcopy(kwargs)
        self.groups = []
        for group in groups:
            params = group["params"]
            params = [params] if isinstance(params, Tensor) else list(params)
            if isinstance(group["params"], set):
                raise TypeError("optimizer parameters must be an ordered collection, not a set")
            extra = {k: copy.deepcopy(v) for k, v in group.items() if k != "params"}
            self.groups.append({**extra, "params": [names[id(p)] for p in params if id(p) in names]})

    def build(self, model: nn.Module, name_map: Mapping[str, str] | None = None) -> Optimizer:
        """A fresh optimizer over ``model``'s parameters with the recorded names (``name_map``:
        original name -> name in ``model``)."""
        name_map = name_map or {}
        groups = []
        for group in self.groups:
            wanted = {name_map.get(n, n) for n in group["params"]}
            params = [p for n, p in model.named_parameters() if n in wanted]
            groups.append({**copy.deepcopy({k: v for k, v in group.items() if k != "params"}), "params": params})
        return self.cls(groups, *copy.deepcopy(self.args), **copy.deepcopy(self.kwargs))


class _SchedulerRecipe:
    def __init__(self, scheduler: LRScheduler) -> None:
        if not _traced(scheduler):
            raise TypeError(f"lr scheduler {type(scheduler).__name__} must be traced so it can be rebuilt for the "
                            "wrapped model: build it with purecompress.compat.trace(SchedulerClass)(optimizer, ...)")
        self.cls = scheduler.trace_symbol  # type: ignore[attr-defined]
        self.args = list(scheduler.trace_args)  # type: ignore[attr-defined]
        self.kwargs = dict(scheduler.trace_kwargs)  # type: ignore[attr-defined]
        self.optimizer = scheduler.optimizer

    def build(self, optimizer: Optimizer) -> LRScheduler:
        args, kwargs = list(self.args), dict(self.kwargs)
        if "optimizer" in kwargs:
            kwargs["optimizer"] = optimizer
        else:
            args[0] = optimizer
        return self.cls(*args, **kwargs)


class _PatchingEvaluator(Evaluator):
    """Shared binding/patching of the evaluators that own optimizers (abstract)."""

    _ori_criterion: Callable[..., Tensor]
    _recipes: list[OptimizerRecipe]
    _scheduler_recipes: list[_SchedulerRecipe]
    _scheduler_owner: list[int]

    def _setup(self, optimizers: Optimizer | Sequence[Optimizer], lr_schedulers: Any, criterion: Callable) -> None:
        self._ori_criterion = criterion
        self._criterion = criterion
        self._single_optimizer = isinstance(optimizers, Optimizer)
        self._single_scheduler = isinstance(lr_schedulers, LRScheduler)
        self._tmp_optimizers = [optimizers] if isinstance(optimizers, Optimizer) else list(optimizers)
        self._tmp_schedulers = [] if lr_schedulers is None else \
            [lr_schedulers] if isinstance(lr_schedulers, LRScheduler) else list(lr_schedulers)
        self.model: nn.Module | None = None
        self._optimizers: list[Optimizer] | None = None
        self._lr_schedulers: list[LRScheduler] | None = None
        self._first_step: Callable | None = None
        self._initialization_complete = False

    def _init_optimizer_helpers(self, pure_model: nn.Module) -> None:
        if self._initialization_complete:
            return
        self._recipes = [OptimizerRecipe(pure_model, o) for o in self._tmp_optimizers]
        self._scheduler_recipes = [_SchedulerRecipe(s) for s in self._tmp_schedulers]
        ids = {id(o): i for i, o in enumerate(self._tmp_optimizers)}
        self._scheduler_owner = [ids[id(r.optimizer)] for r in self._scheduler_recipes]
        del self._tmp_optimizers, self._tmp_schedulers
        self._initialization_complete = True

    def bind_model(self, model: nn.Module, param_names_map: Mapping[str, str] | None = None) -> None:
        if not self._initialization_complete:
            raise RuntimeError("evaluator not initialised: call _init_optimizer_helpers(model) before bind_model")
        if not isinstance(model, nn.Module):
            raise TypeError(f"bind_model needs a torch.nn.Module, got {type(model).__name__}")
        if self.model is not None:
            self.unbind_model()
        self.model = model
        self._optimizers = [r.build(model, param_names_map) for r in self._recipes]
        self._lr_schedulers = [r.build(self._optimizers[i]) for r, i in zip(self._scheduler_recipes,
                                                                              self._scheduler_owner)]
        self._first_step = self._optimizers[0].step if self._optimizers else None

    def unbind_model(self) -> None:
        if self.model is None:
            return
        self.revert_loss()
        self.revert_optimizer_step()
        self.remove_all_hooks()
        self.model, self._optimizers, self._lr_schedulers, self._first_step = None, None, None, None

    def patch_loss(self, patch: Callable[[Tensor], Tensor]) -> None:
        old = self._criterion

        def patched(*args: Any, **kwargs: Any) -> Tensor:
            return patch(old(*args, **kwargs))

        self._criterion = patched

    def revert_loss(self) -> None:
        self._criterion = self._ori_criterion

    def patch_optimizer_step(self, before_step_tasks: Sequence[Callable], after_step_tasks: Sequence[Callable]) -> None:
        if not self._optimizers:
            raise RuntimeError("no optimizer is bound: call bind_model first")
        old = self._optimizers[0].step

        def step(_: Optimizer, *args: Any, **kwargs: Any) -> Any:
            for task in before_step_tasks:
                task()
            out = old(*args, **kwargs)
            for task in after_step_tasks:
                task()
            return out

        self._optimizers[0].step = types.MethodType(step, self._optimizers[0])  # type: ignore[method-assign]

    def revert_optimizer_step(self) -> None:
        if self._optimizers and self._first_step is not None:
            self._optimizers[0].step = self._first_step  # type: ignore[method-assign]

    def _bound(self) -> tuple[nn.Module, list[Optimizer]]:
        if self.model is None or self._optimizers is None:
            raise RuntimeError("no model is bound to this evaluator: call bind_model first")
        return self.model, self._optimizers
