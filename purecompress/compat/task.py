"""NNI's ``Task`` and ``TaskResult`` (2.10): one step of an iterative pruning run, and its files.

A :class:`Task` names the model, masks and config list a pruning step starts from (files on
disk, reference counted and removed after their last user); a :class:`TaskResult` is what the
step produced. Task files are safe to load: a ``model.pth`` is a ``state_dict`` written by
:func:`save_model` and a ``masks.pth`` a dict of tensors, both read with ``weights_only=True``;
:func:`load_model` rebuilds a model from a skeleton module kept in memory plus its ``state_dict``
(see :mod:`purecompress.compat.task_generator_base`). :mod:`purecompress.compat.scheduler`
re-exports every name here.
"""

from __future__ import annotations

import copy
import json
import logging
import os
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

__all__ = ["NniMasks", "Task", "TaskResult", "load_model", "save_model"]

_logger = logging.getLogger(__name__)

NniMasks = dict[str, dict[str, Tensor | None]]
PathLike = str | os.PathLike[str]


def save_model(model: nn.Module, path: PathLike) -> None:
    """Save ``model.state_dict()`` (never the pickled module)."""
    torch.save(model.state_dict(), path)


def load_model(skeleton: nn.Module, path: PathLike) -> nn.Module:
    """A deep copy of ``skeleton`` with the ``state_dict`` at ``path`` (``weights_only=True``)."""
    model = copy.deepcopy(skeleton)
    model.load_state_dict(torch.load(path, weights_only=True))
    return model


def same_structure(a: nn.Module, b: nn.Module) -> bool:
    """Whether ``a`` and ``b`` have the same state-dict keys and shapes and the same module types."""
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(sa[k].shape == sb[k].shape for k in sa) and \
        [type(m) for m in a.modules()] == [type(m) for m in b.modules()]


class Task:
    """One pruning step: the model and masks to start from and the config list to prune with.

    Args:
        task_id: unique id; model_path, masks_path, config_list_path: its inputs on disk.
        speedup, finetune, evaluate: False turns the scheduler's step off for this task.
    """

    _reference_counter: dict[str, int] = {}

    def __init__(self, task_id: int | str, model_path: PathLike, masks_path: PathLike, config_list_path: PathLike,
                 speedup: bool = True, finetune: bool = True, evaluate: bool = True) -> None:
        self.task_id = task_id
        self.model_path = model_path
        self.masks_path = masks_path
        self.config_list_path = config_list_path
        self.speedup = speedup
        self.finetune = finetune
        self.evaluate = evaluate
        self.status = "Pending"
        self.score: float | None = None
        self.state: dict[str, Any] = {}
        self.skeleton: nn.Module | None = None
        for ref in self.referenced_paths():
            self._reference_counter[str(ref)] = self._reference_counter.get(str(ref), 0) + 1
        self._cleaned = False

    def to_dict(self) -> dict[str, Any]:
        """The JSON record written to ``.tasks``."""
        return {"task_id": self.task_id, "model_path": str(self.model_path), "masks_path": str(self.masks_path),
                "config_list_path": str(self.config_list_path), "speedup": self.speedup,
                "finetune": self.finetune, "evaluate": self.evaluate, "status": self.status,
                "score": self.score, "state": self.state}

    def load_data(self) -> tuple[nn.Module, NniMasks, list[dict]]:
        """``(model, masks before pruning, config list)``, all read with ``weights_only=True``."""
        if self.skeleton is None:
            raise RuntimeError(f"task {self.task_id} has no model skeleton: models are stored as state_dicts "
                               "and rebuilt from the generator's in-memory model, not unpickled")
        model = load_model(self.skeleton, self.model_path)
        masks = torch.load(self.masks_path, weights_only=True)
        with Path(self.config_list_path).open() as f:
            config_list = json.load(f)
        return model, masks, config_list

    def referenced_paths(self) -> list[PathLike]:
        """The files this task reads (reference counted, removed after the last user)."""
        return [self.model_path, self.masks_path, self.config_list_path]

    def clean_up(self) -> None:
        """Release this task's files; delete the ones no other task needs."""
        if self._cleaned:
            _logger.debug("task %s already cleaned up", self.task_id)
            return
        for ref in map(str, self.referenced_paths()):
            self._reference_counter[ref] -= 1
            if self._reference_counter[ref] <= 0 and os.path.exists(ref):
                os.remove(ref)
        self._cleaned = True


class TaskResult:
    """What a pruning step produced.

    Args:
        task_id: the task's id; compact_model: the pruned (maybe shrunk) model;
        compact_model_masks: masks on the compact model (``{}`` after shrinking);
        pruner_generated_masks: masks on the model the task started from; score: or None.
    """

    def __init__(self, task_id: int | str, compact_model: nn.Module, compact_model_masks: NniMasks,
                 pruner_generated_masks: NniMasks, score: float | None) -> None:
        self.task_id = task_id
        self.compact_model = compact_model
        self.compact_model_masks = compact_model_masks
        self.pruner_generated_masks = pruner_generated_masks
        self.score = score
