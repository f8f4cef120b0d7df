"""NNI's ADMMPruner: rounds of training with the ADMM penalty, each followed by a projection."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import Tensor, nn

from purecompress.compat._schema import EXCLUDE, INTERNAL, NORMAL
from purecompress.compat.base import NniMasks
from purecompress.compat.metrics_calculator import NormMetricsCalculator
from purecompress.compat.pruning import _check_mode
from purecompress.compat.scaling import _channel_scaler
from purecompress.compat.sparsity_allocator import NormalSparsityAllocator
from purecompress.compat.training_base import _TrainingPruner
from purecompress.config import ConfigError, from_config_list
from purecompress.selection import select

__all__ = ["ADMMPruner"]


def _rho_of(config_list: Sequence[Mapping[str, Any]]) -> list[float | None]:
    out: list[float | None] = []
    for index, entry in enumerate(config_list):
        rho = entry.get("rho") if isinstance(entry, Mapping) else None
        if rho is not None and (not isinstance(rho, float) or rho <= 0):
            raise ConfigError(index, "rho", f"must be a float > 0, got {rho!r}")
        out.append(rho)
    return out


class ADMMPruner(_TrainingPruner):
    """ADMM pruning: ``iterations`` rounds of training with ``rho/2 * ...`` then projecting.

    ``(model, config_list, evaluator, iterations, training_epochs, granularity='fine-grained')``
    or the old ``(model, config_list, trainer, traced_optimizer, criterion, iterations,
    training_epochs, granularity)``. Config key ``rho`` (default 1e-4). The penalty is NNI's
    ``rho/2 * sqrt(||W - Z + U||)`` (see :func:`purecompress.admm_penalty`, ``form='nni'``).
    """

    new_api = ("evaluator", "iterations", "training_epochs", "granularity")
    old_api = ("trainer", "traced_optimizer", "criterion", "iterations", "training_epochs", "granularity")
    defaults = {"granularity": "fine-grained"}
    config_forms = (NORMAL, INTERNAL, EXCLUDE)

    def __init__(self, model: nn.Module | None, config_list: list[dict] | None, *args: Any, **kwargs: Any) -> None:
        parsed = self._init_training(model, args, kwargs)
        self.iterations: int = parsed["iterations"]
        self.training_epochs: int = parsed["training_epochs"]
        self.granularity = _check_mode("ADMMPruner granularity", parsed["granularity"],
                                       ("fine-grained", "coarse-grained"))
        self.Z: dict[str, dict[str, Tensor]] = {}
        self.U: dict[str, dict[str, Tensor]] = {}
        super().__init__(model, config_list)

    def reset(self, model: nn.Module | None = None, config_list: list[dict] | None = None) -> None:
        """Bind and wrap (``rho`` is read here and stored on each wrapper's config); Z = W, U = 0."""
        rhos = _rho_of(config_list or [])
        stripped = [{k: v for k, v in e.items() if k != "rho"} for e in (config_list or [])]
        self._unwrap_model()
        plan = select(model, from_config_list(stripped), warn=False) if isinstance(model, nn.Module) else ()
        super().reset(model, stripped)
        for entry in plan:
            if rhos[entry.index] is not None:
                self.get_modules_wrapper()[entry.module].config["rho"] = rhos[entry.index]
        self.Z = {n: {"weight": w.weight.detach().clone()} for n, w in self.get_modules_wrapper().items()}
        self.U = {n: {"weight": torch.zeros_like(z["weight"])} for n, z in self.Z.items()}

    def loss_patch(self, origin_loss: Tensor) -> Tensor:
        """``origin_loss + sum rho/2 * sqrt(||W - Z + U||)`` (NNI's form)."""
        from purecompress.admm import AdmmState, admm_penalty
        from purecompress.records import Block

        wrappers = self.get_modules_wrapper()
        state = AdmmState({n: z["weight"] for n, z in self.Z.items()}, {n: u["weight"] for n, u in self.U.items()},
                          {}, {n: float(wrappers[n].config.get("rho", 1e-4)) for n in self.Z}, {}, Block.element(), 0)
        return origin_loss + admm_penalty({n: w.weight for n, w in wrappers.items()}, state, form="nni")

    def reset_tools(self) -> None:
        """Train ``training_epochs`` per iteration with the penalty; L1 metric; per-layer allocator."""
        self._bind_evaluator()
        self._collect_trained_weights(self.loss_patch, self.training_epochs)
        scalers = None if self.granularity == "fine-grained" else _channel_scaler()
        self.metrics_calculator = self.metrics_calculator or NormMetricsCalculator(p=1, scalers=scalers)
        self.sparsity_allocator = self.sparsity_allocator or NormalSparsityAllocator(self, scalers)

    def compress(self) -> tuple[nn.Module, NniMasks]:
        """ADMM iterations (Z = prune(W + U), U += W - Z), then masks from the trained W."""
        model = self._bound()
        assert self.data_collector and self.metrics_calculator and self.sparsity_allocator
        data: dict[str, dict[str, Tensor]] = {}
        for _ in range(self.iterations):
            data = self.data_collector.collect()
            z = {n: {"weight": d["weight"] + self.U[n]["weight"]} for n, d in data.items()}
            masks = self.sparsity_allocator.generate_sparsity(self.metrics_calculator.calculate_metrics(z))
            for n in z:
                self.Z[n]["weight"] = z[n]["weight"] * masks[n]["weight"]
                self.U[n]["weight"] = self.U[n]["weight"] + data[n]["weight"] - self.Z[n]["weight"]
        self.Z, self.U = {}, {}
        masks = self.sparsity_allocator.generate_sparsity(self.metrics_calculator.calculate_metrics(data))
        self.load_masks(masks)
        self.evaluator.unbind_model()
        return model, masks

