"""The evaluator contract: the hooks a pruner registers and the abstract :class:`Evaluator`.

This module holds what every evaluator shares with the pruners that drive it: :class:`Hook` and
its tensor, forward and backward kinds (a hook made by a factory from a buffer it fills), and the
abstract :class:`Evaluator` (NNI 2.10's ``bind_model``/``patch_loss``/``train``/``evaluate`` API,
with the hook bookkeeping), the optimizer and scheduler recipes that rebuild a user's optimizers
for the wrapped model, and the evaluators: :class:`TorchEvaluator`, :class:`LegacyEvaluator`
(the ``LightningEvaluator`` is in :mod:`purecompress.compat.lightning_evaluator`).
"""

from __future__ import annotations

import abc
import copy
import logging
import types
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from torch import Tensor, nn
from torch.optim import Optimizer
from torch.optim.lr_scheduler import LRScheduler
from torch.utils.hooks import RemovableHandle

__all__ = [
    "BackwardHook",
    "Evaluator",
    "ForwardHook",
    "Hook",
    "LRSchedulerConstructHelper",
    "LegacyEvaluator",
    "OptimizerConstructHelper",
    "OptimizerRecipe",
    "SchedulerRecipe",
    "TensorHook",
    "TorchEvaluator",
    "TransformersEvaluator",
]



class Hook(abc.ABC):
    """A torch hook made by ``hook_factory(buffer)``; ``buffer`` is a list the hook may fill.

    Args:
        target: the tensor or module to hook.
        target_name: its qualified name.
        hook_factory: ``buffer -> hook function``.
    """

    def __init__(self, target: nn.Module | Tensor, target_name: str, hook_factory: Callable[[list], Callable]) -> None:
        self.target = target
        self.target_name = target_name
        self.hook_factory = hook_factory
        self.buffer: list = []
        self.handle: RemovableHandle | None = None

    @abc.abstractmethod
    def _register(self, hook_func: Callable) -> RemovableHandle:
        """Register ``hook_func`` on the target."""

    def register(self) -> None:
        """Register once (a second call does nothing)."""
        if self.handle is None:
            self.handle = self._register(self.hook_factory(self.buffer))

    def remove(self) -> None:
        """Remove the hook and empty the buffer."""
        if self.handle is not None:
            self.handle.remove()
            self.handle = None
            self.buffer = []



class TensorHook(Hook):
    """``tensor.register_hook(hook)``: the hook sees the tensor's gradient."""

    def _register(self, hook_func: Callable) -> RemovableHandle:
        if not isinstance(self.target, Tensor):
            raise TypeError(f"TensorHook needs a tensor, got {type(self.target).__name__}")
        return self.target.register_hook(hook_func)



class ForwardHook(Hook):
    """``module.register_forward_hook(hook)``: the hook sees ``(module, inputs, output)``."""

    def _register(self, hook_func: Callable) -> RemovableHandle:
        return self.target.register_forward_hook(hook_func)  # type: ignore[union-attr]



class BackwardHook(Hook):
    """``module.register_full_backward_hook(hook)``: the hook sees ``(module, grad_in, grad_out)``."""

    def _register(self, hook_func: Callable) -> RemovableHandle:
        return self.target.register_full_backward_hook(hook_func)  # type: ignore[union-attr]



class Evaluator(abc.ABC):
    """The contract a pruner uses to run the user's training (NNI's ``Evaluator``)."""

    _initialization_complete: bool = False
    _hooks: tuple[Hook, ...] = ()  # a class default, so a user's subclass needs no __init__ for it

    @abc.abstractmethod
    def _init_optimizer_helpers(self, pure_model: nn.Module) -> None:
        """Record how to rebuild the optimizers for ``pure_model`` (the unwrapped model)."""

    @abc.abstractmethod
    def bind_model(self, model: nn.Module, param_names_map: Mapping[str, str] | None = None) -> None:
        """Use ``model`` (usually wrapped); rebuild the optimizers for it."""

    @abc.abstractmethod
    def unbind_model(self) -> None:
        """Revert patches, remove hooks, forget the model."""

    @abc.abstractmethod
    def patch_loss(self, patch: Callable[[Tensor], Tensor]) -> None:
        """From now on the loss is ``patch(criterion(...))``."""

    @abc.abstractmethod
    def revert_loss(self) -> None:
        """Back to the user's criterion."""

    @abc.abstractmethod
    def patch_optimizer_step(self, before_step_tasks: Sequence[Callable], after_step_tasks: Sequence[Callable]) -> None:
        """Run tasks around the first optimizer's ``step()``."""

    @abc.abstractmethod
    def revert_optimizer_step(self) -> None:
        """Back to the optimizer's own ``step``."""

    def register_hooks(self, hooks: Sequence[Hook]) -> None:
        """Register each hook and remember it."""
        for hook in hooks:
            hook.register()
            self._hooks = (*self._hooks, hook)

    def get_all_hooks(self) -> list[Hook]:
        """The registered hooks."""
        return list(self._hooks)

    def remove_all_hooks(self) -> None:
        """Remove every registered hook."""
        for hook in self._hooks:
            hook.remove()
        self._hooks = ()

    @abc.abstractmethod
    def train(self, max_steps: int | None = None, max_epochs: int | None = None) -> None:
        """Run the user's training with these limits."""

    def finetune(self) -> None:
        """Train with the user's own limits."""
        self.train()

    @abc.abstractmethod
    def evaluate(self) -> Any:
        """The user's evaluation metric (None without an evaluating function)."""

    @abc.abstractmethod
    def get_dummy_input(self) -> Any:
        """The example input for graph capture (None if not given)."""



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



class OptimizerConstructHelper(OptimizerRecipe):
    """NNI's name for an :class:`OptimizerRecipe` (``nni.algorithms.compression.v2.pytorch.utils``).

    Same as :class:`OptimizerRecipe`, with NNI's ``from_trace`` constructor and ``call`` method;
    a plain (untraced) optimizer is accepted too.

    >>> import torch
    >>> from purecompress.compat import trace
    >>> model = nn.Linear(2, 2)
    >>> helper = OptimizerConstructHelper.from_trace(model, trace(torch.optim.SGD)(model.parameters(), lr=0.1))
    >>> helper.call(nn.Linear(2, 2)).defaults['lr']
    0.1
    """

    @classmethod
    def from_trace(cls, model: nn.Module, optimizer_trace: Optimizer) -> OptimizerConstructHelper:
        """The recipe of ``optimizer_trace`` (built for ``model``)."""
        return cls(model, optimizer_trace)

    def call(self, wrapped_model: nn.Module, origin2wrapped_name_map: Mapping[str, str] | None = None) -> Optimizer:
        """Same as :meth:`OptimizerRecipe.build`."""
        return self.build(wrapped_model, origin2wrapped_name_map)



class SchedulerRecipe:
    """How to rebuild a traced LR scheduler for another optimizer: class and arguments.

    Args:
        scheduler: a scheduler built with ``trace(SchedulerClass)(optimizer, ...)``.
    """

    def __init__(self, scheduler: LRScheduler) -> None:
        if not _traced(scheduler):
            raise TypeError(f"lr scheduler {type(scheduler).__name__} must be traced so it can be rebuilt for the "
                            "wrapped model: build it with purecompress.compat.trace(SchedulerClass)(optimizer, ...)")
        self.cls = scheduler.trace_symbol  # type: ignore[attr-defined]
        self.args = list(scheduler.trace_args)  # type: ignore[attr-defined]
        self.kwargs = dict(scheduler.trace_kwargs)  # type: ignore[attr-defined]
        self.optimizer = scheduler.optimizer

    def build(self, optimizer: Optimizer) -> LRScheduler:
        """A fresh scheduler of the recorded class and arguments over ``optimizer``."""
        args, kwargs = list(self.args), dict(self.kwargs)
        if "optimizer" in kwargs:
            kwargs["optimizer"] = optimizer
        else:
            args[0] = optimizer
        return self.cls(*args, **kwargs)



class LRSchedulerConstructHelper(SchedulerRecipe):
    """NNI's name for a :class:`SchedulerRecipe`: ``from_trace(scheduler)``, ``call(optimizer)``."""

    @classmethod
    def from_trace(cls, lr_scheduler_trace: LRScheduler) -> LRSchedulerConstructHelper:
        """The recipe of a traced scheduler."""
        return cls(lr_scheduler_trace)

    def call(self, optimizer: Optimizer) -> LRScheduler:
        """Same as :meth:`SchedulerRecipe.build`."""
        return self.build(optimizer)



class _PatchingEvaluator(Evaluator):
    """Shared binding/patching of the evaluators that own optimizers (abstract)."""

    _ori_criterion: Callable[..., Tensor]
    _recipes: list[OptimizerRecipe]
    _scheduler_recipes: list[SchedulerRecipe]
    _scheduler_owner: list[int]

    def _setup(self, optimizers: Optimizer | OptimizerRecipe | Sequence[Optimizer | OptimizerRecipe],
               lr_schedulers: Any, criterion: Callable) -> None:
        self._ori_criterion = criterion
        self._criterion = criterion
        self._single_optimizer = isinstance(optimizers, (Optimizer, OptimizerRecipe))
        self._single_scheduler = isinstance(lr_schedulers, LRScheduler)
        self._tmp_optimizers = [optimizers] if self._single_optimizer else list(optimizers)  # type: ignore[arg-type]
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
        self._recipes = [o if isinstance(o, OptimizerRecipe) else OptimizerRecipe(pure_model, o)
                         for o in self._tmp_optimizers]
        self._scheduler_recipes = [SchedulerRecipe(s) for s in self._tmp_schedulers]
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


_logger = logging.getLogger(__name__)



class TorchEvaluator(_PatchingEvaluator):
    """NNI's evaluator for plain PyTorch training loops.

    Args:
        training_func: ``training_func(model, optimizers, criterion, lr_schedulers=None,
            max_steps=None, max_epochs=None)``: the whole training loop; it must stop after
            ``max_steps`` optimizer steps / ``max_epochs`` epochs when they are not None.
        optimizers: one optimizer or a list (traced or plain, see the module docstring).
        criterion: ``criterion(output, target) -> loss``; pruners may patch it.
        lr_schedulers: optional traced scheduler(s).
        dummy_input: example input for graph capture (dependency-aware modes).
        evaluating_func: ``evaluating_func(model) -> float | dict`` (dict: key ``'default'``).
    """

    def __init__(self, training_func: Callable[..., Any], optimizers: Optimizer | Sequence[Optimizer],
                 criterion: Callable[..., Tensor], lr_schedulers: Any = None, dummy_input: Any = None,
                 evaluating_func: Callable[[nn.Module], Any] | None = None) -> None:
        if not callable(training_func):
            raise TypeError("training_func must be callable")
        self.training_func = training_func
        self.dummy_input = dummy_input
        self.evaluating_func = evaluating_func
        self._setup(optimizers, lr_schedulers, criterion)

    def train(self, max_steps: int | None = None, max_epochs: int | None = None) -> None:
        model, optimizers = self._bound()
        optimizer: Any = optimizers[0] if self._single_optimizer else optimizers
        schedulers: Any = self._lr_schedulers
        if self._single_scheduler and schedulers:
            schedulers = schedulers[0]
        self.training_func(model, optimizer, self._criterion, schedulers, max_steps, max_epochs)

    def evaluate(self) -> Any:
        if self.model is None:
            raise RuntimeError("no model is bound to this evaluator: call bind_model first")
        if self.evaluating_func is None:
            _logger.warning("TorchEvaluator got no evaluating_func; evaluate() returns None")
            return None
        metric = self.evaluating_func(self.model)
        if isinstance(metric, Mapping):
            return metric.get("default"), dict(metric)
        return metric

    def get_dummy_input(self) -> Any:
        return self.dummy_input



class LegacyEvaluator(_PatchingEvaluator):
    """The old API ``trainer(model, optimizer, criterion)`` seen through the Evaluator contract.

    ``train(max_steps, max_epochs)`` calls the trainer ``max_epochs`` times (once when None);
    ``max_steps`` cannot limit a legacy trainer, so pruners bound what their hooks count instead.

    Args:
        trainer: ``trainer(model, optimizer, criterion)``, one epoch.
        optimizer: the optimizer (traced or plain), or its recipe (an :class:`OptimizerConstructHelper`,
            what NNI's trainer-based data collectors take); rebuilt for the model at :meth:`bind_model`.
        criterion: ``criterion(output, target) -> loss``.
        dummy_input: example input for graph capture.
    """

    def __init__(self, trainer: Callable[[nn.Module, Optimizer, Callable], Any], optimizer: Optimizer | OptimizerRecipe,
                 criterion: Callable[..., Tensor], dummy_input: Any = None) -> None:
        if not callable(trainer):
            raise TypeError("trainer must be callable: trainer(model, optimizer, criterion)")
        self.trainer = trainer
        self.dummy_input = dummy_input
        self._setup(optimizer, None, criterion)

    def train(self, max_steps: int | None = None, max_epochs: int | None = None) -> None:
        del max_steps
        model, optimizers = self._bound()
        for _ in range(max_epochs or 1):
            self.trainer(model, optimizers[0], self._criterion)

    def evaluate(self) -> Any:
        return None

    def get_dummy_input(self) -> Any:
        return self.dummy_input



class TransformersEvaluator:
    """Not provided: purecompress does not depend on Hugging Face ``transformers``.

    Raises:
        NotImplementedError: always; use :class:`TorchEvaluator` with a plain training function.
    """

    def __init__(self, trainer: Any, dummy_input: Any = None) -> None:
        del trainer, dummy_input
        raise NotImplementedError("TransformersEvaluator is not provided by purecompress.compat; wrap your training "
                                  "loop in a function and use TorchEvaluator(training_func, optimizers, criterion)")
