"""NNI 2.10's ``SensitivityAnalysis`` (``nni.compression.pytorch.utils.sensitivity_analysis``) on
:func:`purecompress.sensitivity`.

Same constructor, ``analysis()`` result (``{layer: {sparsity: val_func()}}``), early-stop modes and
CSV ``export``. The difference: the candidates of a layer are evaluated in one
``torch.func.vmap``-ped call of ``val_func`` when it allows (it returns a tensor computed from the
model's outputs); a ``val_func`` that returns a Python number (``.item()``, ``float()``) or trains
cannot be vmapped and runs as NNI's loop. :attr:`SensitivityAnalysis.looped` says which layers
looped and why. The model is never modified (NNI prunes it in place and reloads its state_dict).
"""

from __future__ import annotations

import csv
import os
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch
from torch import Tensor, nn
from torch.func import functional_call

from purecompress.pruning import Params, l1_norm, l2_norm, level, params_of, sensitivity

__all__ = ["SensitivityAnalysis"]

_PRUNE_TYPES = {"l1": l1_norm, "l2": l2_norm, "fine-grained": level}
_EARLY_STOP = ("minimize", "maximize", "dropped", "raised")


class _Evaluation(nn.Module):
    """``val_func`` as a module whose parameters are the model's, so ``functional_call`` can run it
    with other weights (``val_func`` reads the model it closes over)."""

    def __init__(self, model: nn.Module, val_func: Callable[..., Any]) -> None:
        super().__init__()
        self.model = model
        self.val_func = val_func

    def forward(self, args: Sequence[Any], kwargs: Mapping[str, Any]) -> Tensor:
        return torch.as_tensor(self.val_func(*args, **kwargs), dtype=torch.float64)


class SensitivityAnalysis:
    """NNI's sensitivity analysis of the Conv1d/Conv2d layers of ``model``.

    Args:
        model: the model; ``val_func`` must evaluate this object.
        val_func: ``(*val_args, **val_kwargs) -> metric`` (accuracy, loss).
        sparsities: the candidates (sorted and rounded to 2 decimals, as NNI); default 0.1..0.9.
        prune_type: ``'l1'`` / ``'l2'`` (filters, by norm) or ``'fine-grained'`` (elements, by |w|).
        early_stop_mode: None, 'minimize', 'maximize', 'dropped' or 'raised' (NNI's meanings).
        early_stop_value: the threshold of ``early_stop_mode``.
    """

    def __init__(self, model: nn.Module, val_func: Callable[..., Any], sparsities: Sequence[float] | None = None,
                 prune_type: str = "l1", early_stop_mode: str | None = None,
                 early_stop_value: float | None = None) -> None:
        if prune_type not in _PRUNE_TYPES:
            raise ValueError(f"prune_type must be one of {list(_PRUNE_TYPES)}, got {prune_type!r}")
        if early_stop_mode is not None and early_stop_mode not in _EARLY_STOP:
            raise ValueError(f"early_stop_mode must be None or one of {list(_EARLY_STOP)}, got {early_stop_mode!r}")
        if early_stop_mode is not None and early_stop_value is None:
            raise ValueError(f"early_stop_mode={early_stop_mode!r} needs early_stop_value")
        self.model = model
        self.val_func = val_func
        values = sorted(sparsities) if sparsities is not None else [i / 10 for i in range(1, 10)]
        self.sparsities = [round(float(s), 2) for s in values]
        self.prune_type = prune_type
        self.early_stop_mode = early_stop_mode
        self.early_stop_value = early_stop_value
        self.target_layer = {name: m for name, m in model.named_modules() if isinstance(m, (nn.Conv1d, nn.Conv2d))}
        self.already_pruned = dict.fromkeys(self.target_layer, 0.0)
        self.sensitivities: dict[str, dict[float, float]] = {}
        self.ori_metric: float | None = None
        self.ori_state_dict = {k: v.clone() for k, v in model.state_dict().items()}
        self.looped: dict[str, str] = {}

    @property
    def layers_count(self) -> int:
        """Number of layers analysed."""
        return len(self.target_layer)

    def _need_to_stop(self, ori_metric: float, cur_metric: float) -> bool:
        value = float(self.early_stop_value) if self.early_stop_value is not None else 0.0
        return {
            None: False,
            "minimize": cur_metric < value,
            "maximize": cur_metric > value,
            "dropped": cur_metric < ori_metric - value,
            "raised": cur_metric > ori_metric + value,
        }[self.early_stop_mode]

    def analysis(self, val_args: Sequence[Any] | None = None, val_kwargs: Mapping[str, Any] | None = None,
                 specified_layers: Sequence[str] | None = None) -> dict[str, dict[float, float]]:
        """``{layer: {sparsity: val_func()}}`` with only that layer pruned (up to the early stop)."""
        args, kwargs = tuple(val_args or ()), dict(val_kwargs or {})
        metric = self.val_func(*args, **kwargs)
        self.ori_metric = float(metric.detach() if isinstance(metric, Tensor) else metric)
        names = [n for n in self.target_layer if specified_layers is None or n in specified_layers]
        evaluation = _Evaluation(self.model, self.val_func)
        params: Params = params_of(self.model)

        def evaluate(p: Params) -> Tensor:
            return functional_call(evaluation, {f"model.{k}": v for k, v in p.items()}, (args, kwargs))

        for name in names:
            done = self.already_pruned[name]
            real = [(1.0 - done) * s + done for s in self.sparsities]
            result = sensitivity(params, [f"{name}.weight"], real, evaluate, metric=_PRUNE_TYPES[self.prune_type])
            if result.looped:
                self.looped[name] = result.looped[f"{name}.weight"]
            self.sensitivities[name] = {}
            for sparsity, score in zip(self.sparsities, result.scores[0].tolist()):
                self.sensitivities[name][sparsity] = score
                if self._need_to_stop(self.ori_metric, score):
                    break
        return self.sensitivities

    def export(self, filepath: str | os.PathLike[str]) -> None:
        """Write the results as NNI's CSV: ``layername, s1, s2, ...`` then one row per layer."""
        with open(filepath, "w", newline="") as f:
            writer = csv.writer(f)
            writer.writerow(["layername"] + [str(s) for s in self.sparsities])
            for layer, scores in self.sensitivities.items():
                writer.writerow([layer] + [scores[s] for s in sorted(scores)])

    def update_already_pruned(self, layername: str, ratio: float) -> None:
        """Set the already-pruned ratio of ``layername`` (NNI's iterative sensitivity pruning)."""
        self.already_pruned[layername] = ratio

    def load_state_dict(self, state_dict: Mapping[str, Tensor]) -> None:
        """Load ``state_dict`` into the model and use it as the analysis' starting point."""
        self.ori_state_dict = {k: v.clone() for k, v in state_dict.items()}
        self.model.load_state_dict(self.ori_state_dict)
