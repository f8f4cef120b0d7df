"""The evaluator contract: the hooks a pruner registers and the abstract :class:`Evaluator`.

This module holds what every evaluator shares with the pruners that drive it: :class:`Hook` and
its tensor, forward and backward kinds (a hook made by a factory from a buffer it fills), and the
abstract :class:`Evaluator` (NNI 2.10's ``bind_model``/``patch_loss``/``train``/``evaluate`` API,
with the hook bookkeeping). The concrete evaluators are in :mod:`purecompress.compat.evaluator`,
which re-exports every name here.
"""

from __future__ import annotations

import abc
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from torch import Tensor, nn
from torch.utils.hooks import RemovableHandle

__all__ = ["BackwardHook", "Evaluator", "ForwardHook", "Hook", "TensorHook"]


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
