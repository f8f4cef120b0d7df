"""NNI's ``TaskGenerator`` base (2.10): the life cycle of an iterative run, its best result and its files.

:class:`TaskGenerator` hands out the pending tasks, records each result (the best one under
``best_result/``) and asks its subclass for the tasks that follow. The log directory has NNI's
layout, ``<log_dir>/<timestamp>/`` with ``origin/``, ``intermediate_result/``, ``best_result/``
and ``.tasks``, but NNI pickles whole modules there and reloads them with ``torch.load`` (unsafe,
and broken on torch >= 2.6). Here every ``model.pth`` is a ``state_dict``, every ``masks.pth`` a
dict of tensors, both read with ``weights_only=True``; config lists and ``.tasks`` are JSON. A
model is rebuilt from a skeleton kept in memory (the origin model, or the compact model when
shrinking changed its structure) plus its ``state_dict``. The concrete generators are in
:mod:`purecompress.compat.task_generator`, which re-exports :class:`TaskGenerator`.
"""

from __future__ import annotations

import copy
import json
from collections.abc import Mapping
from datetime import datetime
from pathlib import Path
from typing import Any, Literal

import torch
from torch import nn

from purecompress.compat.task import NniMasks, PathLike, Task, TaskResult, load_model, same_structure, save_model

__all__ = ["TaskGenerator"]


class TaskGenerator:
    """Generates the tasks of an iterative pruning run and keeps the best result.

    Args:
        origin_model: the unwrapped model to prune (kept in memory as the skeleton of every file).
        origin_masks: masks already on it ``{module: {'weight': t, 'bias': t}}``.
        origin_config_list: the user's config list.
        log_dir: where ``<timestamp>/`` goes.
        keep_intermediate_result: keep every task's model, masks and config list.
        best_result_mode: ``'latest'``, ``'maximize'`` or ``'minimize'`` the score; while no
            scored result exists, any result is best.
    """

    def __init__(self, origin_model: nn.Module | None, origin_masks: NniMasks | None = None,
                 origin_config_list: list[dict] | None = None, log_dir: PathLike = ".",
                 keep_intermediate_result: bool = False,
                 best_result_mode: Literal["latest", "maximize", "minimize"] = "maximize") -> None:
        if best_result_mode not in ("latest", "maximize", "minimize"):
            raise ValueError(f"best_result_mode must be 'latest', 'maximize' or 'minimize', got {best_result_mode!r}")
        self._log_dir = log_dir
        self._keep_intermediate_result = keep_intermediate_result
        self._best_result_mode = best_result_mode
        if origin_model is not None:
            self.reset(origin_model, list(origin_config_list or []), dict(origin_masks or {}))

    # -- life cycle ---------------------------------------------------------------------------
    def reset(self, model: nn.Module, config_list: list[dict] | None = None, masks: NniMasks | None = None) -> None:
        """Start a new run on ``model`` in a new ``<log_dir>/<timestamp>/``."""
        if not isinstance(model, nn.Module):
            raise TypeError(f"Only a torch.nn.Module can be pruned, got {type(model).__name__}")
        config_list, masks = list(config_list or []), dict(masks or {})
        self._log_dir_root = Path(self._log_dir, datetime.now().strftime("%Y-%m-%d-%H-%M-%S-%f")).absolute()
        self._intermediate_result_dir = self._log_dir_root / "intermediate_result"
        self._intermediate_result_dir.mkdir(parents=True, exist_ok=True)
        self._origin_skeleton = copy.deepcopy(model)
        self._skeletons: dict[str, nn.Module] = {}
        self._origin_model_path = self._log_dir_root / "origin" / "model.pth"
        self._origin_masks_path = self._log_dir_root / "origin" / "masks.pth"
        self._origin_config_list_path = self._log_dir_root / "origin" / "config_list.json"
        self._save_data("origin", model, masks, config_list)
        self._task_id_candidate = 0
        self._tasks: dict[int | str, Task] = {}
        self._best_score: float | None = None
        self._best_task_id: int | str | None = None
        self._best_skeleton: nn.Module = self._origin_skeleton
        self._pending_tasks: list[Task] = self.init_pending_tasks()
        self._dump_tasks_info()

    def init_pending_tasks(self) -> list[Task]:
        """The first tasks (subclasses)."""
        raise NotImplementedError

    def generate_tasks(self, task_result: TaskResult) -> list[Task]:
        """The tasks that follow ``task_result`` (subclasses)."""
        raise NotImplementedError

    def next(self) -> Task | None:
        """Pop the next pending task (None when the run is over)."""
        if not self._pending_tasks:
            return None
        task = self._pending_tasks.pop(0)
        task.status = "Running"
        self._dump_tasks_info()
        return task

    def receive_task_result(self, task_result: TaskResult) -> None:
        """Record a result: best result, task status, the next tasks, file clean-up."""
        task_id = task_result.task_id
        if task_id not in self._tasks:
            raise KeyError(f"Task {task_id} does not exist")
        self.update_best_result(task_result)
        self._tasks[task_id].status = "Finished"
        self._pending_tasks.extend(self.generate_tasks(task_result))
        self._dump_tasks_info()
        if not self._keep_intermediate_result:
            self._tasks[task_id].clean_up()

    def update_best_result(self, task_result: TaskResult) -> None:
        """Save ``task_result`` under ``best_result/`` if it is the best so far."""
        task = self._tasks[task_result.task_id]
        task.score = task_result.score
        mode, score, best = self._best_result_mode, task.score, self._best_score
        better = mode == "latest" or best is None or (
            score is not None and (score > best if mode == "maximize" else score < best))
        if not better:
            return
        if mode != "latest":
            self._best_score = score
        self._best_task_id = task_result.task_id
        with Path(task.config_list_path).open() as f:
            config_list = json.load(f)
        self._save_data("best_result", task_result.compact_model, task_result.compact_model_masks, config_list)
        self._best_skeleton = self._skeleton_for(task_result.compact_model)

    def get_best_result(self) -> tuple[int | str, nn.Module, NniMasks, float | None, list[dict]] | None:
        """``(task_id, compact model, its masks, score, config list)`` of the best result, or None."""
        if self._best_task_id is None:
            return None
        root = self._log_dir_root / "best_result"
        model = load_model(self._best_skeleton, root / "model.pth")
        masks = torch.load(root / "masks.pth", weights_only=True)
        with (root / "config_list.json").open() as f:
            config_list = json.load(f)
        return self._best_task_id, model, masks, self._best_score, config_list

    # -- files --------------------------------------------------------------------------------
    def _skeleton_for(self, model: nn.Module) -> nn.Module:
        if same_structure(model, self._origin_skeleton):
            return self._origin_skeleton
        return copy.deepcopy(model)

    def _save_model(self, model: nn.Module, path: Path) -> None:
        save_model(model, path)
        self._skeletons[str(path)] = self._skeleton_for(model)

    def _load_model(self, path: PathLike) -> nn.Module:
        return load_model(self._skeletons.get(str(path), self._origin_skeleton), path)

    def _new_task(self, model_path: Path, masks_path: Path, config_list: list[dict], **flags: bool) -> Task:
        """Write the config list, create and register task ``_task_id_candidate``."""
        task_id = self._task_id_candidate
        config_list_path = self._intermediate_result_dir / f"{task_id}_config_list.json"
        with config_list_path.open("w") as f:
            json.dump(config_list, f, indent=4)
        task = Task(task_id, model_path, masks_path, config_list_path, **flags)
        task.skeleton = self._skeletons.get(str(model_path), self._origin_skeleton)
        self._tasks[task_id] = task
        self._task_id_candidate += 1
        return task

    def _save_data(self, folder: str, model: nn.Module, masks: Mapping[str, Any], config_list: list[dict]) -> None:
        root = self._log_dir_root / folder
        root.mkdir(parents=True, exist_ok=True)
        save_model(model, root / "model.pth")
        torch.save(dict(masks), root / "masks.pth")
        with (root / "config_list.json").open("w") as f:
            json.dump(config_list, f, indent=4)

    def _dump_tasks_info(self) -> None:
        tasks = {str(task_id): task.to_dict() for task_id, task in self._tasks.items()}
        with (self._log_dir_root / ".tasks").open("w") as f:
            json.dump(tasks, f, indent=4)
