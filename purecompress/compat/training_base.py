"""The shared base of NNI's training-aware pruners: argument parsing (both NNI APIs) and the evaluator.

:class:`_TrainingPruner` parses NNI's fake overloads (``evaluator`` or the old ``trainer,
traced_optimizer, criterion``, adapted by :class:`~purecompress.compat.evaluator.LegacyEvaluator`),
binds the evaluator to the wrapped model and unbinds it after ``compress``.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

from torch import Tensor, nn

from purecompress.compat.base import NniMasks
from purecompress.compat.evaluator import Evaluator, Hook, LegacyEvaluator
from purecompress.compat.pruning import BasicPruner
from purecompress.compat.scaling import Scaling
from purecompress.compat.training_tools import (
    DependencyAwareAllocator,
    EvaluatorBasedHookDataCollector,
    EvaluatorBasedTargetDataCollector,
)

__all__: list[str] = []


def _parse(name: str, arg_names: Sequence[str], args: tuple, kwargs: Mapping[str, Any],
           defaults: Mapping[str, Any]) -> dict[str, Any]:
    merged = dict(zip(arg_names, args))
    if len(args) > len(arg_names):
        raise TypeError(f"{name}() takes {len(arg_names)} arguments after config_list, got {len(args)}")
    for key, value in kwargs.items():
        if key in merged:
            raise TypeError(f"{name}() got multiple values for argument {key!r}")
        merged[key] = value
    unexpected = set(merged) - set(arg_names)
    if unexpected:
        raise TypeError(f"{name}() got unexpected arguments {sorted(unexpected)}; expected {list(arg_names)}")
    for key, value in defaults.items():
        if key in arg_names:
            merged.setdefault(key, value)
    missing = [k for k in arg_names if k not in merged]
    if missing:
        raise TypeError(f"{name}() missing required arguments {missing}")
    return merged


class _TrainingPruner(BasicPruner):
    """A pruner that trains through an evaluator (abstract; the leaves are NNI's pruners)."""

    evaluator: Evaluator
    using_evaluator: bool
    new_api: Sequence[str] = ()
    old_api: Sequence[str] = ()
    defaults: Mapping[str, Any] = {}

    def _init_training(self, model: nn.Module | None, args: tuple, kwargs: Mapping[str, Any]) -> dict[str, Any]:
        name = type(self).__name__
        first = args[0] if args else kwargs.get("evaluator")
        if isinstance(first, Evaluator):
            parsed = _parse(name, self.new_api, args, kwargs, self.defaults)
            self.evaluator = parsed.pop("evaluator")
            self.using_evaluator = True
        else:
            parsed = _parse(name, self.old_api, args, kwargs, self.defaults)
            self.evaluator = LegacyEvaluator(parsed.pop("trainer"), parsed.pop("traced_optimizer"),
                                             parsed.pop("criterion"), parsed.get("dummy_input"))
            self.using_evaluator = False
        if model is not None and not self.evaluator._initialization_complete:
            self.evaluator._init_optimizer_helpers(model)
        return parsed

    def _bind_evaluator(self) -> None:
        self.evaluator.unbind_model()
        self.evaluator.bind_model(self._bound(), self.get_origin2wrapped_parameter_name_map())

    def _collect_trained_weights(self, loss_patch: Callable[[Tensor], Tensor], max_epochs: int) -> None:
        """Collect the weights after ``max_epochs`` of training with ``loss_patch`` added to the loss.

        A collector already set (a second ``reset_tools``, or one the script set) gets the patch again.
        """
        if self.data_collector is None:
            self.data_collector = EvaluatorBasedTargetDataCollector(self, self.evaluator, loss_patch=loss_patch,
                                                                    max_epochs=max_epochs)
        else:
            self.data_collector.reset(loss_patch=loss_patch)  # type: ignore[call-arg]

    def _collect_hooks(self, hooks: Mapping[str, Mapping[str, Hook]], max_steps: int) -> None:
        """Collect what ``hooks`` gather during ``max_steps`` training steps.

        A collector already set (a second ``reset_tools``, or one the script set) gets the new hooks.
        """
        if self.data_collector is None:
            self.data_collector = EvaluatorBasedHookDataCollector(self, self.evaluator, hooks=hooks,
                                                                  max_steps=max_steps)
        else:
            self.data_collector.reset(hooks=hooks)  # type: ignore[call-arg]

    def _dependency_allocator(self, dummy_input: Any, scalers: Scaling) -> DependencyAwareAllocator:
        if dummy_input is None:
            dummy_input = self.evaluator.get_dummy_input()
        return DependencyAwareAllocator(self, dummy_input, scalers)

    def compress(self) -> tuple[nn.Module, NniMasks]:
        """Train and collect, compute metrics, allocate, load masks; then unbind the evaluator."""
        result = super().compress()
        self.evaluator.unbind_model()
        return result
