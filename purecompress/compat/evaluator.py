"""NNI's evaluators: how a pruner drives the user's training loop.

Same contract as ``nni.compression.pytorch.TorchEvaluator`` (2.10): ``bind_model``,
``unbind_model``, ``patch_loss``/``revert_loss``, ``patch_optimizer_step``/``revert_optimizer_step``,
``register_hooks``/``remove_all_hooks``, ``train(max_steps, max_epochs)``, ``finetune``,
``evaluate``, ``get_dummy_input``. Differences:

- optimizers need not be traced: a plain optimizer is rebuilt from its class, param groups and
  defaults (fresh state, as a traced one is). Traced ones (``purecompress.compat.trace`` or
  ``nni.trace``: anything with ``trace_symbol``/``trace_args``/``trace_kwargs``) rebuild from
  their recorded arguments, as NNI does. LR schedulers must be traced.
- :class:`LegacyEvaluator` adapts the old ``(trainer, traced_optimizer, criterion)`` API to the
  same contract, so every pruner has one code path.

This module holds the concrete evaluators; it re-exports the contract (hooks and the abstract
:class:`Evaluator`, :mod:`~purecompress.compat.evaluator_base`) and :class:`OptimizerRecipe`
(:mod:`~purecompress.compat.evaluator_patching`) so every name keeps this path.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from torch import Tensor, nn
from torch.optim import Optimizer

from purecompress.compat.evaluator_base import BackwardHook, Evaluator, ForwardHook, Hook, TensorHook
from purecompress.compat.evaluator_patching import OptimizerRecipe, _PatchingEvaluator

__all__ = [
    "BackwardHook",
    "Evaluator",
    "ForwardHook",
    "Hook",
    "LegacyEvaluator",
    "LightningEvaluator",
    "OptimizerRecipe",
    "TensorHook",
    "TorchEvaluator",
    "TransformersEvaluator",
]

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
    """

    def __init__(self, trainer: Callable[[nn.Module, Optimizer, Callable], Any], optimizer: Optimizer,
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


class LightningEvaluator:
    """Not provided: purecompress does not depend on PyTorch Lightning.

    Raises:
        NotImplementedError: always; use :class:`TorchEvaluator` with a plain training function.
    """

    def __init__(self, trainer: Any, data_module: Any, dummy_input: Any = None) -> None:
        del trainer, data_module, dummy_input
        raise NotImplementedError("LightningEvaluator is not provided by purecompress.compat; wrap your training "
                                  "loop in a function and use TorchEvaluator(training_func, optimizers, criterion)")


class TransformersEvaluator:
    """Not provided: purecompress does not depend on Hugging Face ``transformers``.

    Raises:
        NotImplementedError: always; use :class:`TorchEvaluator` with a plain training function.
    """

    def __init__(self, trainer: Any, dummy_input: Any = None) -> None:
        del trainer, dummy_input
        raise NotImplementedError("TransformersEvaluator is not provided by purecompress.compat; wrap your training "
                                  "loop in a function and use TorchEvaluator(training_func, optimizers, criterion)")
