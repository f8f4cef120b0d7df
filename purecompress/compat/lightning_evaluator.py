"""NNI 2.10's ``LightningEvaluator`` on current Lightning (``lightning.pytorch`` or ``pytorch_lightning`` 2.x).

The pruners drive a Lightning training exactly as they drive a :class:`TorchEvaluator`'s loop: the
model they prune is the ``LightningModule`` itself (its layers get wrapped), and the evaluator

- rebuilds the module's optimizers and LR schedulers for the wrapped parameters: the objects
  ``configure_optimizers()`` returns are recorded once (:meth:`_init_optimizer_helpers`, from the
  unwrapped module), fresh ones are built from those recipes at each :meth:`bind_model`, and
  while the model is bound its ``configure_optimizers`` returns them, so their state (momentum,
  the LR schedule) carries over from one ``train()`` to the next, as with :class:`TorchEvaluator`
  (NNI's LightningEvaluator rebuilt them at every ``fit``, so its ADMM and iterative pruners
  trained differently from its own TorchEvaluator's). Every layout Lightning accepts is kept: one
  optimizer, a list, ``(optimizers, schedulers)``, a dict with ``"optimizer"`` and
  ``"lr_scheduler"`` (a scheduler or a scheduler config dict), a list of such dicts. LR schedulers
  must be traced (``trace(StepLR)(optimizer, ...)``), as for :class:`TorchEvaluator`;
- patches the loss by wrapping ``training_step`` (a returned tensor, or the dict's ``"loss"``);
- runs the pruner's tasks around the first optimizer's step: after the closure (forward and
  backward) and before the update, then after the update. The step itself is wrapped, not a
  Lightning callback, so automatic and manual optimization and gradient accumulation all see the
  tasks at each real update;
- trains with a fresh trainer per call, rebuilt from the traced ``Trainer``'s arguments with the
  pruner's ``max_steps`` / ``max_epochs`` and no sanity-check validation run (its forwards would
  reach the pruner's hooks); ``evaluate()`` runs ``trainer.test`` and reports the mean of the
  ``"default"`` metric over the returned dicts, with the dicts.

Lightning is imported from nowhere: the trainer the user built tells which package it is.

>>> LightningEvaluator(object(), object())
Traceback (most recent call last):
...
TypeError: LightningEvaluator needs a Lightning Trainer built with purecompress.compat.trace(Trainer)(...) \
(lightning.pytorch or pytorch_lightning 2.x), got object
"""

from __future__ import annotations

import copy
import logging
import sys
import types
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch
from torch import Tensor, nn
from torch.optim import Optimizer
from torch.optim.lr_scheduler import LRScheduler

from purecompress.compat.evaluator import Evaluator, OptimizerRecipe, SchedulerRecipe
from purecompress.compat.tracing import is_traceable, rebuild

__all__ = ["LightningEvaluator"]

_logger = logging.getLogger(__name__)
_PACKAGES = ("lightning.pytorch", "pytorch_lightning")


def _package_of(trainer: Any) -> types.ModuleType | None:
    for name in _PACKAGES:
        package = sys.modules.get(name)
        if package is not None and isinstance(trainer, package.Trainer):
            return package
    return None


def _layout(returned: Any) -> tuple[Any, list[Optimizer], list[LRScheduler]]:
    """``configure_optimizers()``'s value as a template (optimizers -> ("optimizer", i), schedulers
    -> ("scheduler", j)) plus the objects, in order."""
    optimizers: list[Optimizer] = []
    schedulers: list[LRScheduler] = []

    def optimizer(o: Any) -> tuple[str, int]:
        if not isinstance(o, Optimizer):
            raise TypeError(f"configure_optimizers() returned {type(o).__name__} where an optimizer belongs")
        optimizers.append(o)
        return ("optimizer", len(optimizers) - 1)

    def scheduler(s: Any) -> Any:
        if isinstance(s, Mapping):  # a Lightning lr_scheduler config: {"scheduler": ..., "interval": ...}
            if "scheduler" not in s:
                raise TypeError("an lr_scheduler config dict needs a 'scheduler' key")
            rest = copy.deepcopy({k: v for k, v in s.items() if k != "scheduler"})
            return {**rest, "scheduler": scheduler(s["scheduler"])}
        if not isinstance(s, LRScheduler):
            raise TypeError(f"configure_optimizers() returned {type(s).__name__} where an LR scheduler belongs")
        schedulers.append(s)
        return ("scheduler", len(schedulers) - 1)

    def config(d: Mapping) -> dict:
        if "optimizer" not in d:
            raise TypeError("a dict returned by configure_optimizers() needs an 'optimizer' key")
        out = {k: copy.deepcopy(v) for k, v in d.items() if k not in ("optimizer", "lr_scheduler")}
        out["optimizer"] = optimizer(d["optimizer"])
        if d.get("lr_scheduler") is not None:
            out["lr_scheduler"] = scheduler(d["lr_scheduler"])
        return out

    if returned is None:
        raise ValueError("configure_optimizers() returned None: the pruners need an optimizer to train with")
    if isinstance(returned, Optimizer):
        return optimizer(returned), optimizers, schedulers
    if isinstance(returned, Mapping):
        return config(returned), optimizers, schedulers
    if not isinstance(returned, (list, tuple)) or not returned:
        raise TypeError(f"configure_optimizers() returned {type(returned).__name__}; expected an optimizer, a dict, "
                        "a list of them, or (optimizers, lr_schedulers)")
    if len(returned) == 2 and isinstance(returned[0], (list, tuple)):
        return ([optimizer(o) for o in returned[0]], [scheduler(s) for s in returned[1]]), optimizers, schedulers
    if all(isinstance(o, Optimizer) for o in returned):
        return [optimizer(o) for o in returned], optimizers, schedulers
    if all(isinstance(d, Mapping) for d in returned):
        return [config(d) for d in returned], optimizers, schedulers
    raise TypeError("configure_optimizers() returned a sequence mixing "
                    f"{sorted({type(x).__name__ for x in returned})}; expected optimizers or dicts")


def _fill(template: Any, optimizers: Sequence[Optimizer], schedulers: Sequence[LRScheduler]) -> Any:
    if isinstance(template, tuple) and len(template) == 2 and template[0] in ("optimizer", "scheduler") \
            and isinstance(template[1], int):
        return (optimizers if template[0] == "optimizer" else schedulers)[template[1]]
    if isinstance(template, Mapping):
        return {k: _fill(v, optimizers, schedulers) for k, v in template.items()}
    if isinstance(template, (list, tuple)):
        return type(template)(_fill(v, optimizers, schedulers) for v in template)
    return template


class LightningEvaluator(Evaluator):
    """NNI 2.10's evaluator for Lightning training (see the module docstring for what it patches).

    Args:
        trainer: a ``Trainer`` of ``lightning.pytorch`` or ``pytorch_lightning`` built through
            :func:`purecompress.compat.trace` (``trace(pl.Trainer)(max_epochs=1, ...)``), so a fresh
            one can be built for every training run.
        data_module: the ``LightningDataModule`` passed to ``fit`` and ``test`` (traced or not: it
            is used as it is, never rebuilt).
        dummy_input: example input for graph capture (dependency-aware modes); when None, the
            first batch of ``data_module.train_dataloader()`` (NNI's default).

    Raises:
        TypeError: the trainer is not a traced Lightning ``Trainer``, or the data module is not a
            ``LightningDataModule`` of the same package.
    """

    def __init__(self, trainer: Any, data_module: Any, dummy_input: Any = None) -> None:
        package = _package_of(trainer)
        if package is None or not is_traceable(trainer):
            raise TypeError("LightningEvaluator needs a Lightning Trainer built with "
                            "purecompress.compat.trace(Trainer)(...) (lightning.pytorch or pytorch_lightning 2.x), "
                            f"got {type(trainer).__name__}" + (" (not traced)" if package is not None else ""))
        if not isinstance(data_module, package.LightningDataModule):
            raise TypeError(f"data_module must be a {package.__name__}.LightningDataModule, "
                            f"got {type(data_module).__name__}")
        self._package = package
        self.trainer = trainer
        self.data_module = data_module
        self._dummy_input = dummy_input
        self.model: nn.Module | None = None
        self._param_names_map: Mapping[str, str] | None = None
        self._saved: dict[str, Any] = {}
        self._step_tasks: tuple[Sequence[Callable], Sequence[Callable]] | None = None
        self._optimizers: list[Optimizer] = []
        self._initialization_complete = False

    def _check_module(self, model: Any) -> None:
        if not isinstance(model, self._package.LightningModule):
            raise TypeError(f"LightningEvaluator prunes a {self._package.__name__}.LightningModule "
                            f"(the model given to the pruner), got {type(model).__name__}")

    def _init_optimizer_helpers(self, pure_model: nn.Module) -> None:
        if self._initialization_complete:
            return
        self._check_module(pure_model)
        template, optimizers, schedulers = _layout(pure_model.configure_optimizers())  # type: ignore[operator]
        if not optimizers:
            raise ValueError("configure_optimizers() returned no optimizer: the pruners need one to train with")
        ids = {id(o): i for i, o in enumerate(optimizers)}
        for s in schedulers:
            if id(s.optimizer) not in ids:
                raise ValueError(f"LR scheduler {type(s).__name__} steps an optimizer configure_optimizers() "
                                 "did not return")
        self._template = template
        self._recipes = [OptimizerRecipe(pure_model, o) for o in optimizers]
        self._scheduler_recipes = [SchedulerRecipe(s) for s in schedulers]
        self._scheduler_owner = [ids[id(s.optimizer)] for s in schedulers]
        self._initialization_complete = True

    def _patch(self, name: str, value: Callable) -> None:
        assert self.model is not None
        if name not in self._saved:
            self._saved[name] = self.model.__dict__.get(name)  # an instance attribute the user set, or None
        setattr(self.model, name, types.MethodType(value, self.model))

    def _revert(self, name: str) -> None:
        if self.model is None or name not in self._saved:
            return
        original = self._saved.pop(name)
        if original is None:
            self.model.__dict__.pop(name, None)
        else:
            self.model.__dict__[name] = original

    def bind_model(self, model: nn.Module, param_names_map: Mapping[str, str] | None = None) -> None:
        if not self._initialization_complete:
            raise RuntimeError("evaluator not initialised: call _init_optimizer_helpers(model) before bind_model")
        self._check_module(model)
        if self.model is not None:
            self.unbind_model()
        self.model = model
        self._param_names_map = param_names_map
        optimizers = [r.build(model, param_names_map) for r in self._recipes]
        _wrap_step(optimizers[0], self)
        owners = self._scheduler_owner
        schedulers = [r.build(optimizers[i]) for r, i in zip(self._scheduler_recipes, owners)]
        self._optimizers = optimizers
        configured = _fill(self._template, optimizers, schedulers)

        def configure_optimizers(module: nn.Module) -> Any:
            del module
            return configured

        self._patch("configure_optimizers", configure_optimizers)

    def unbind_model(self) -> None:
        if self.model is None:
            return
        self.revert_loss()
        self.revert_optimizer_step()
        self.remove_all_hooks()
        self._revert("configure_optimizers")
        self.model, self._param_names_map, self._optimizers = None, None, []

    def patch_loss(self, patch: Callable[[Tensor], Tensor]) -> None:
        model = self._bound()
        old = model.training_step  # type: ignore[operator]

        def training_step(_: nn.Module, *args: Any, **kwargs: Any) -> Any:
            out = old(*args, **kwargs)
            if isinstance(out, Tensor):
                return patch(out)
            if isinstance(out, Mapping) and "loss" in out:
                return {**out, "loss": patch(out["loss"])}
            raise TypeError(f"training_step returned {type(out).__name__}; the pruner's loss patch needs a loss "
                            "tensor or a dict with a 'loss' key")

        self._patch("training_step", training_step)

    def revert_loss(self) -> None:
        self._revert("training_step")

    def patch_optimizer_step(self, before_step_tasks: Sequence[Callable], after_step_tasks: Sequence[Callable]) -> None:
        self._bound()
        self._step_tasks = (list(before_step_tasks), list(after_step_tasks))

    def revert_optimizer_step(self) -> None:
        self._step_tasks = None

    def _bound(self) -> nn.Module:
        if self.model is None:
            raise RuntimeError("no model is bound to this evaluator: call bind_model first")
        return self.model

    def _fresh_trainer(self, **overrides: Any) -> Any:
        return rebuild(self.trainer, **overrides)

    def train(self, max_steps: int | None = None, max_epochs: int | None = None) -> None:
        model = self._bound()
        overrides: dict[str, Any] = {"num_sanity_val_steps": 0}
        if max_steps is not None:
            overrides["max_steps"] = max_steps
        if max_epochs is not None:
            overrides["max_epochs"] = max_epochs
        trainer = self._fresh_trainer(**overrides)
        try:
            trainer.fit(model, datamodule=self.data_module)
        finally:
            model.trainer = None  # type: ignore[assignment]  # the trainer is not part of the pruned model

    def evaluate(self) -> Any:
        model = self._bound()
        trainer = self._fresh_trainer()
        try:
            results = trainer.test(model, datamodule=self.data_module)
        finally:
            model.trainer = None  # type: ignore[assignment]
        defaults = [float(r["default"]) for r in results if "default" in r]
        if not defaults:
            _logger.warning("trainer.test logged no 'default' metric; evaluate() reports None (log one with "
                            "self.log('default', value) in test_step)")
        return (sum(defaults) / len(defaults) if defaults else None), results

    def get_dummy_input(self) -> Any:
        if self._dummy_input is not None:
            return self._dummy_input
        try:
            return next(iter(self.data_module.train_dataloader()))
        except Exception as err:
            raise ValueError("LightningEvaluator got no dummy_input and could not take the first batch of "
                             f"data_module.train_dataloader() ({type(err).__name__}: {err}); "
                             "pass dummy_input=") from err


def _wrap_step(optimizer: Optimizer, evaluator: LightningEvaluator) -> None:
    """Run the evaluator's current before-step tasks after the closure (forward + backward), and its
    after-step tasks after the update."""
    original = optimizer.step

    def step(_: Optimizer, closure: Callable[[], Any] | None = None) -> Any:
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        before, after = evaluator._step_tasks or ((), ())
        for task in before:
            task()
        original()
        for task in after:
            task()
        return loss

    optimizer.step = types.MethodType(step, optimizer)  # type: ignore[method-assign]
