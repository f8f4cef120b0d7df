"""NNI's MovementPruner on the core transform :func:`purecompress.movement`.

The pruner holds the transform and its :class:`~purecompress.MovementState`; it maps NNI's call
order onto it: a forward pre-hook on each wrapped module records the gradient of the loss with
respect to the masked weight the forward used, and just before each step of the user's optimizer
the pruner calls ``update`` (scores by Adam, lr 1e-2; masks on the cubic schedule) and loads the
new masks into the wrappers.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor, nn

from purecompress.compat.pruning.base import NniMasks, sparsities
from purecompress.compat.pruning.basic_pruner import TrainingPruner, check_mode
from purecompress.compat.pruning.tools import EvaluatorBasedDataCollector
from purecompress.compat.schema import EXCLUDE, INTERNAL, NORMAL
from purecompress.heads import HeadBlock, head_blocks
from purecompress.pruning import (
    Block,
    Mask,
    Masks,
    MovementState,
    all_reduce_stats,
    bias_masks,
    is_distributed,
    movement,
)
from purecompress.transform import Transform

__all__ = ["MovementPruner", "auto_blocks"]


def auto_blocks(blocks: tuple[HeadBlock, ...], shapes: dict[str, tuple[int, ...]]) -> dict[str, Block]:
    """NNI 2.10's ``sparse_granularity='auto'`` score blocks for the weights in ``shapes``.

    An attention weight of ``units`` heads gets ``[units, units]`` blocks (NNI's ``[h / heads,
    w / heads]``: a head's rows, or columns, in ``units`` pieces); an MLP's first weight one score
    per output row, its second one per input column; every other weight stays element-wise. NNI
    finds these modules by name for BERT, BART and T5 only; here :func:`~purecompress.head_blocks`
    finds them by structure (GPT-2's fused ``c_attn`` and Llama's grouped query heads included: a
    unit is a key/value head's group). NNI's parser lists the output projection among the
    attention weights but finds no head count for it (it looks under ``attention.self``) and scores
    it per element; it gets the per-head blocks meant for it here.
    """
    out = {}
    for block in blocks:
        for cut in block.cuts:
            shape = shapes.get(cut.param)
            if shape is None or len(shape) != 2 or cut.role == "head":  # a position bias MLP stays element-wise
                continue
            kernel = [-1, -1]
            if block.kind == "attention":
                other = 1 - cut.dim
                kernel[cut.dim] = cut.unit
                kernel[other] = shape[other] // block.units if shape[other] % block.units == 0 else -1
            else:  # an MLP: one score per neuron, a row of the first weight or a column of the second
                kernel[cut.dim] = 1
            out[cut.param] = Block(tuple(kernel))
    return out


class _ScoreCollector(EvaluatorBasedDataCollector):
    """Trains (the movement updates run in the optimizer patch), then returns the scores."""

    def collect(self) -> dict[str, dict[str, Tensor]]:
        self.evaluator.train(max_steps=self.max_steps, max_epochs=self.max_epochs)
        state = self.compressor._state  # type: ignore[attr-defined]
        return {name.rpartition(".")[0]: {"weight": s} for name, s in state.scores.items()}


class MovementPruner(TrainingPruner):
    """Movement pruning: weight scores trained through the mask, cubic sparsity schedule.

    ``(model, config_list, evaluator, warm_up_step, cool_down_beginning_step, training_epochs=None,
    training_steps=None, regular_scale=None, movement_mode='hard', sparse_granularity='finegrained')``
    or the old ``(model, config_list, trainer, traced_optimizer, criterion, training_epochs,
    warm_up_step, cool_down_beginning_step)``. Every number comes from :func:`purecompress.movement`
    (``regular_scale`` with the evaluator API only, as NNI). ``sparse_granularity='auto'`` learns
    one score per block of the attention weights and per row/column of the MLP weights
    (:func:`auto_blocks`), as NNI 2.10 does for BERT, BART and T5; the blocks are found by structure
    (:func:`~purecompress.head_blocks`), so GPT-2, ViT and Llama get them too.
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
        self.sparse_granularity = check_mode("MovementPruner sparse_granularity",
                                             parsed.get("sparse_granularity", "finegrained"), ("finegrained", "auto"))
        # found before wrapping: the wrappers hide the layer types the structure is read from
        self._head_blocks = head_blocks(model, required=False) if model is not None else ()
        self._transform: Transform | None = None
        self._state: MovementState | None = None
        self._grads: dict[str, Tensor] = {}
        self._handles: list[Any] = []
        super().__init__(model, config_list)

    @property
    def step_counter(self) -> int:
        """Optimizer steps done in this compress (the schedule's step)."""
        return 0 if self._state is None else self._state.step

    def _weights(self) -> dict[str, Tensor]:
        return {f"{name}.weight": w.weight.detach() for name, w in self.get_modules_wrapper().items()}

    def _start(self) -> None:
        """The core transform for the wrappers' configs (final sparsities) and its first state."""
        targets = self.targets()
        block = None
        if self.sparse_granularity == "auto":
            block = auto_blocks(self._head_blocks, {n: t.shape for n, t in targets.items()})
        self._transform = movement(list(targets), sparsities(targets), warm_up=self.warm_up_step,
                                   cool_down=self.cool_down_beginning_step, mode=self.movement_mode,
                                   regular_scale=self.regular_scale if self.using_evaluator else None, block=block)
        self._state = self._transform.init(self._weights())
        self._grads = {}

    def _remove_hooks(self) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles = []

    def _grad_recorder(self, name: str) -> Callable[[nn.Module, Any], None]:
        def record(grad: Tensor) -> None:
            self._grads[name] = grad if name not in self._grads else self._grads[name] + grad

        def pre_hook(module: nn.Module, _inputs: Any) -> None:
            weight = module._buffers["weight"]  # the wrapper has just set it to the masked weight
            if self.is_wrapped and weight is not None and weight.requires_grad and torch.is_grad_enabled():
                weight = weight.view_as(weight)  # a view: its hook dies with this forward's graph
                weight.register_hook(record)
                module._buffers["weight"] = weight
        return pre_hook

    def _sync_grads(self, grads: dict[str, Tensor]) -> dict[str, Tensor]:
        # DDP averages the model's gradients, not these (taken before its reduction): average them the
        # same way so every rank takes the same score step and gets the same masks.
        if not is_distributed():
            return grads
        world = torch.distributed.get_world_size()
        return {name: g / world for name, g in all_reduce_stats(grads).items()}

    def _before_step(self) -> None:
        """One core ``update`` with the weights and masked-weight gradients of this step."""
        assert self._transform is not None and self._state is not None
        grads, self._grads = self._sync_grads(self._grads), {}
        weights = self._weights()
        grads = {n: grads.get(n, torch.zeros_like(w)) for n, w in weights.items()}
        _, self._state = self._transform.update(weights, self._state, grads=grads)
        if self._state.masks:
            self.load_records(self._state.masks)

    def reset_tools(self) -> None:
        """Gradient recorders on the wrapped modules; the core update before every optimizer step."""
        self._remove_hooks()
        self._start()
        self._bind_evaluator()
        if self.data_collector is None:
            self.data_collector = _ScoreCollector(self, self.evaluator, before_opt_step_tasks=[self._before_step],
                                                  max_epochs=self.training_epochs, max_steps=self.training_steps)
        else:
            self.data_collector.reset(before_opt_step_tasks=[self._before_step])  # type: ignore[call-arg]

    def compress(self) -> tuple[nn.Module, NniMasks]:
        """Train from sparsity 0 on the schedule; the final masks are the state's (plus NNI's bias masks)."""
        model = self._bound()
        assert self.data_collector is not None
        self._remove_hooks()
        self._start()
        wrappers = self.get_modules_wrapper()
        self._handles = [w.module.register_forward_pre_hook(self._grad_recorder(f"{n}.weight"))
                         for n, w in wrappers.items()]
        try:
            self.data_collector.collect()
        finally:
            self._remove_hooks()
        assert self._state is not None
        targets = self.targets()
        masks: Masks = {n: self._state.masks.get(n, Mask.dense(t.shape)) for n, t in targets.items()}
        shapes = {n[: -len("weight")] + "bias": t.bias for n, t in targets.items() if t.bias is not None}
        masks = bias_masks(masks, shapes)  # type: ignore[arg-type]
        self.load_records(masks)
        self.evaluator.unbind_model()
        return model, self.nni_masks(masks)
