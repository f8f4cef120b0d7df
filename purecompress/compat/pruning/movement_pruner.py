"""NNI's MovementPruner: weight scores trained through a straight-through mask, cubic schedule."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor, nn

from purecompress.compat.pruning.base import NniMasks
from purecompress.compat.pruning.basic_pruner import TrainingPruner, check_mode
from purecompress.compat.pruning.tools import (
    EvaluatorCollector,
    NormalSparsityAllocator,
    Scaling,
    StraightMetricsCalculator,
    ThresholdSparsityAllocator,
)
from purecompress.compat.schema import EXCLUDE, INTERNAL, NORMAL
from purecompress.pruning import (
    all_reduce_stats,
    cubic_sparsity,
    is_distributed,
    movement_regularizer,
    straight_through,
)

__all__ = [
    "MovementPruner",
]

__all__ = ["MovementPruner"]


class _ScoreCollector(EvaluatorCollector):
    """Trains, then returns the movement scores ``{module: {'weight': scores}}``."""

    def collect(self) -> dict[str, dict[str, Tensor]]:
        self.evaluator.train(max_steps=self.max_steps, max_epochs=self.max_epochs)
        scores = self.compressor._scores  # type: ignore[attr-defined]
        return {name: {"weight": s.detach().clone()} for name, s in scores.items()}


class MovementPruner(TrainingPruner):
    """Movement pruning: weight scores trained by a straight-through mask, cubic sparsity schedule.

    ``(model, config_list, evaluator, warm_up_step, cool_down_beginning_step, training_epochs=None,
    training_steps=None, regular_scale=None, movement_mode='hard', sparse_granularity='finegrained')``
    or the old ``(model, config_list, trainer, traced_optimizer, criterion, training_epochs,
    warm_up_step, cool_down_beginning_step)``. Scores are trained by Adam (lr 1e-2) after each
    step of the user's optimizer, and the masks follow :func:`purecompress.cubic_sparsity`.
    ``sparse_granularity='auto'`` (Hugging Face attention heads) is not provided.
    """

    new_api = ("evaluator", "warm_up_step", "cool_down_beginning_step", "training_epochs", "training_steps",
               "regular_scale", "movement_mode", "sparse_granularity")
    old_api = ("trainer", "traced_optimizer", "criterion", "training_epochs", "warm_up_step",
               "cool_down_beginning_step")
    defaults = {"training_epochs": None, "training_steps": None, "regular_scale": None, "movement_mode": "hard",
                "sparse_granularity": "finegrained"}
    config_forms = (NORMAL, EXCLUDE, INTERNAL)

    def __init__(self, model: nn.Module | None, config_list: list[dict] | None, *args: Any, **kwargs: Any) -> None:
        parsed = self._init_training(model, args, kwargs)
        self.training_epochs: int | None = parsed["training_epochs"]
        self.warm_up_step: int = parsed["warm_up_step"]
        self.cool_down_beginning_step: int = parsed["cool_down_beginning_step"]
        if not self.warm_up_step < self.cool_down_beginning_step:
            raise ValueError(f"MovementPruner: warm_up_step ({self.warm_up_step}) must be smaller than "
                             f"cool_down_beginning_step ({self.cool_down_beginning_step})")
        self.training_steps: int | None = parsed.get("training_steps")
        self.regular_scale: float | None = parsed.get("regular_scale")
        self.movement_mode = check_mode("MovementPruner movement_mode", parsed.get("movement_mode", "hard"),
                                         ("hard", "soft"))
        granularity = parsed.get("sparse_granularity", "finegrained")
        if granularity == "auto":
            raise NotImplementedError("MovementPruner(sparse_granularity='auto') needs NNI's Hugging Face model "
                                      "parsers and is not provided; use 'finegrained'")
        check_mode("MovementPruner sparse_granularity", granularity, ("finegrained",))
        self._scores: dict[str, nn.Parameter] = {}
        self._handles: list[Any] = []
        self.step_counter = 0
        super().__init__(model, config_list)

    def _scale(self, step: int) -> float:
        return cubic_sparsity(step, 1.0, warm_up=self.warm_up_step, cool_down=self.cool_down_beginning_step)

    def _remove_score_hooks(self) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles = []

    def _straight_through(self, name: str) -> Callable[[nn.Module, Any], None]:
        wrapper, score = self.get_modules_wrapper()[name], self._scores[name]

        def pre_hook(module: nn.Module, _inputs: Any) -> None:
            if self.is_wrapped:  # the wrapper has just set module.weight = W * mask; make the mask's grad reach S
                module._buffers["weight"] = wrapper.weight * straight_through(score, wrapper.weight_mask)
        return pre_hook

    def _sync_score_grads(self) -> None:
        # DDP averages the model's gradients, not the scores' (they are not model parameters):
        # average them the same way so every rank takes the same score step and gets the same masks.
        if not is_distributed():
            return
        grads = {n: s.grad for n, s in self._scores.items() if s.grad is not None}
        world = torch.distributed.get_world_size()
        for name, g in all_reduce_stats(grads).items():
            self._scores[name].grad = g / world

    def _after_step(self) -> None:
        self._sync_score_grads()
        self._score_optimizer.step()
        self._score_optimizer.zero_grad()
        self.step_counter += 1
        if self.step_counter > self.warm_up_step:
            self._schedule(self.step_counter)
            data = {n: {"weight": s.detach()} for n, s in self._scores.items()}
            assert self.metrics_calculator is not None and self.sparsity_allocator is not None
            self.load_masks(self.sparsity_allocator.generate_sparsity(self.metrics_calculator.calculate_metrics(data)))

    def _schedule(self, step: int) -> None:
        wrappers = self.get_modules_wrapper()
        for config in self.config_list or []:
            for name in config["op_names"]:
                wrappers[name].config["total_sparsity"] = config["total_sparsity"] * self._scale(step)

    def loss_patch(self, origin_loss: Tensor) -> Tensor:
        """Soft mode: ``+ regular_scale * cubic(step) * mean(sigmoid(S))`` (NNI's regularizer)."""
        if self.regular_scale is None:
            return origin_loss
        return origin_loss + self._scale(self.step_counter) * movement_regularizer(self._scores, self.regular_scale)

    def reset_tools(self) -> None:
        """Scores (zeros) with straight-through hooks, Adam on them, masks after every step."""
        self._remove_score_hooks()
        wrappers = self.get_modules_wrapper()
        self._scores = {n: nn.Parameter(torch.zeros_like(w.weight.detach())) for n, w in wrappers.items()}
        self._handles = [w.module.register_forward_pre_hook(self._straight_through(n)) for n, w in wrappers.items()]
        self._score_optimizer = torch.optim.Adam(list(self._scores.values()), 1e-2)
        self.step_counter = 0
        self.metrics_calculator = self.metrics_calculator or StraightMetricsCalculator()
        if self.sparsity_allocator is None:
            allocator = ThresholdSparsityAllocator if self.movement_mode == "soft" else NormalSparsityAllocator
            self.sparsity_allocator = allocator(self, Scaling([1]), continuous_mask=False)
        self._bind_evaluator()
        loss_patch = self.loss_patch if self.using_evaluator else None
        if self.data_collector is None:
            self.data_collector = _ScoreCollector(self, self.evaluator, after_opt_step_tasks=[self._after_step],
                                                  loss_patch=loss_patch, max_epochs=self.training_epochs,
                                                  max_steps=self.training_steps)
        else:
            self.data_collector.reset(after_opt_step_tasks=[self._after_step])  # type: ignore[call-arg]

    def compress(self) -> tuple[nn.Module, NniMasks]:
        """Train from sparsity 0 with the schedule; final masks from the scores."""
        for wrapper in self.get_modules_wrapper().values():
            wrapper.config["total_sparsity"] = 0
        try:
            return super().compress()
        finally:
            self._remove_score_hooks()
