"""NNI's sparsity allocators: metrics -> masks, computed by the core allocators.

Same as ``nni...pruning.tools.sparsity_allocator`` (2.10), but each allocator turns NNI's metric
dict ``{module: {target: tensor}}`` into core :class:`~purecompress.Metric` records (using its
``scalers`` for the block grid), calls one core allocator with the wrappers' current masks as
``prior`` (continuous masking: pruned stays pruned), and returns NNI's dense 0/1 masks.

The allocator reads from its pruner only what NNI's API gives it no other way to receive: the
wrappers' target shapes, current masks and canonical configs (``total_sparsity``,
``max_sparsity_per_layer``).
"""

from __future__ import annotations

import abc
import math
from collections.abc import Mapping, Sequence

import torch
from torch import Tensor

from purecompress.allocate import (
    allocate_balanced,
    allocate_global,
    allocate_per_layer,
    allocate_threshold,
    bias_masks,
)
from purecompress.compat.base import NniMasks, Pruner
from purecompress.compat.scaling import Scaling
from purecompress.compat.wrapper import PrunerModuleWrapper
from purecompress.records import Mask, Masks, Metric, Metrics

__all__ = [
    "BankSparsityAllocator",
    "GlobalSparsityAllocator",
    "NormalSparsityAllocator",
    "Scalers",
    "SparsityAllocator",
    "ThresholdSparsityAllocator",
    "get_scaler",
    "normalize_scalers",
]

Scalers = Mapping[str, Mapping[str, Scaling]]
NniMetrics = Mapping[str, Mapping[str, Tensor]]


def normalize_scalers(scalers: Scalers | Scaling | None) -> Scalers | None:
    """NNI's rule: one :class:`Scaling` means ``{'_default': {'_default': scaling}}``."""
    return {"_default": {"_default": scalers}} if isinstance(scalers, Scaling) else scalers


def get_scaler(scalers: Scalers | None, module_name: str, target_name: str) -> Scaling | None:
    """Look up ``scalers[module][target]``, then ``[module]['_default']``, ``['_default'][target]``,
    ``['_default']['_default']``; None when none is given."""
    if not scalers:
        return None
    default = scalers.get("_default", {})
    fallback = default.get(target_name, default.get("_default"))
    module = scalers.get(module_name, {})
    return module.get(target_name, module.get("_default", fallback))


class SparsityAllocator(abc.ABC):
    """Abstract allocator: :meth:`common_target_masks_generation` makes the weight masks.

    Args:
        pruner: the pruner whose wrappers receive the masks.
        scalers: the block granularity of the metrics (None: one metric value per element).
        continuous_mask: already-pruned blocks stay pruned.
    """

    def __init__(self, pruner: Pruner, scalers: Scalers | Scaling | None = None, continuous_mask: bool = True) -> None:
        self.pruner = pruner
        self.scalers = normalize_scalers(scalers)
        self.continuous_mask = continuous_mask
        # Dense masks this allocator made in to_nni -> the core masks they came from (already
        # intersected with the prior): generate_sparsity then needs no second pass over them.
        self._made: dict[str, tuple[Tensor, Mask]] = {}

    def _get_scaler(self, module_name: str, target_name: str) -> Scaling | None:
        return get_scaler(self.scalers, module_name, target_name)

    def _wrapper(self, module_name: str) -> PrunerModuleWrapper:
        return self.pruner.get_modules_wrapper()[module_name]

    def core_metrics(self, metrics: NniMetrics) -> Metrics:
        """NNI metrics as core records keyed ``'module.target'`` (grid from this allocator's scalers)."""
        out = {}
        for module_name, targets in metrics.items():
            wrapper = self._wrapper(module_name)
            for target, metric in targets.items():
                holder = getattr(wrapper, f"{target}_mask")
                shape = tuple(holder.shape)
                scaler = self._get_scaler(module_name, target)
                grid = scaler.grid(shape) if scaler is not None else shape
                if metric.numel() != math.prod(grid):
                    raise ValueError(f"{module_name}.{target}: metric of shape {tuple(metric.shape)} does not fit "
                                     f"a target of shape {shape} with scaler {scaler}")
                out[f"{module_name}.{target}"] = Metric(metric.detach().to(holder.device).reshape(grid), shape)
        return out

    def prior_masks(self, names: Sequence[str]) -> Masks | None:
        """The wrappers' current weight masks for core ``names`` (None without continuous masking)."""
        if not self.continuous_mask:
            return None
        out = {}
        for name in names:
            module_name, _, target = name.rpartition(".")
            mask = self._wrapper(module_name).mask_record(target) if target == "weight" else None
            if mask is not None:  # dense masks prune nothing: no prior needed
                out[name] = mask
        return out

    def sparsity_of(self, names: Sequence[str]) -> dict[str, float]:
        """Each target's ``total_sparsity`` from its wrapper's canonical config."""
        return {name: float(self._wrapper(name.rpartition(".")[0]).config["total_sparsity"]) for name in names}

    def to_nni(self, masks: Masks) -> NniMasks:
        """Core masks as NNI's ``{module: {target: dense 0/1 mask}}`` on the targets' devices."""
        out: NniMasks = {}
        for name, mask in masks.items():
            module_name, _, target = name.rpartition(".")
            holder = getattr(self._wrapper(module_name), f"{target}_mask")
            dense = mask.to_dense(holder.dtype).to(holder.device)
            out.setdefault(module_name, {})[target] = dense
            self._made[name] = (dense, mask)
        return out

    def _core_mask(self, name: str, dense: Tensor) -> tuple[Mask, bool]:
        """(core mask of ``dense``, whether this allocator made it from a core mask)."""
        made = self._made.get(name)
        if made is not None and made[0] is dense:
            return made[1], True
        return Mask.from_dense(dense), False

    @abc.abstractmethod
    def common_target_masks_generation(self, metrics: NniMetrics) -> NniMasks:
        """Masks ``{module: {target: mask}}`` of the targets' shapes for metric-driven targets."""

    def special_target_masks_generation(self, masks: NniMasks) -> NniMasks:
        """Add bias masks from weight masks (NNI's rule, :func:`purecompress.bias_masks`)."""
        core, shapes = {}, {}
        for module_name, targets in masks.items():
            wrapper = self._wrapper(module_name)
            weight = targets.get("weight")
            if weight is not None and wrapper.bias_mask is not None:
                core[f"{module_name}.weight"] = self._core_mask(f"{module_name}.weight", weight)[0]
                shapes[f"{module_name}.bias"] = tuple(wrapper.bias_mask.shape)
        for name, mask in bias_masks(core, shapes).items():
            module_name, _, target = name.rpartition(".")
            if target == "bias":
                masks[module_name]["bias"] = mask.to_dense(masks[module_name]["weight"].dtype)  # type: ignore[union-attr]
        return masks

    def generate_sparsity(self, metrics: NniMetrics) -> NniMasks:
        """Weight masks, kept pruned where already pruned (continuous masking), then bias masks."""
        self._made = {}
        masks = self.common_target_masks_generation(metrics)
        if self.continuous_mask:  # done by the core's prior= for masks made here; a guarantee for subclasses
            for module_name, targets in masks.items():
                wrapper = self._wrapper(module_name)
                weight = targets.get("weight")
                if weight is None or wrapper.mask_record("weight") is None \
                        or self._core_mask(f"{module_name}.weight", weight)[1]:
                    continue
                targets["weight"] = torch.minimum(weight, wrapper.weight_mask.to(weight))
        return self.special_target_masks_generation(masks)


class NormalSparsityAllocator(SparsityAllocator):
    """Each layer prunes its ``total_sparsity`` lowest-metric blocks (:func:`purecompress.allocate_per_layer`)."""

    def common_target_masks_generation(self, metrics: NniMetrics) -> NniMasks:
        core = self.core_metrics(metrics)
        return self.to_nni(allocate_per_layer(core, self.sparsity_of(list(core)), prior=self.prior_masks(list(core))))


class BankSparsityAllocator(SparsityAllocator):
    """Every bank of shape ``balance_gran`` prunes the layer's sparsity (:func:`purecompress.allocate_balanced`).

    Args:
        pruner: the pruner.
        balance_gran: bank shape, right-aligned to the metric's dims (e.g. ``[5]``).
    """

    def __init__(self, pruner: Pruner, balance_gran: Sequence[int]) -> None:
        if any(not isinstance(g, int) or g <= 0 for g in balance_gran):
            raise ValueError(f"All values in balance_gran should be positive ints, got {list(balance_gran)}")
        super().__init__(pruner)
        self.balance_gran = list(balance_gran)

    def common_target_masks_generation(self, metrics: NniMetrics) -> NniMasks:
        core = self.core_metrics(metrics)
        return self.to_nni(allocate_balanced(core, self.sparsity_of(list(core)), gran=self.balance_gran,
                                             prior=self.prior_masks(list(core))))


class GlobalSparsityAllocator(SparsityAllocator):
    """All metrics pooled, one ``total_sparsity``, per-layer cap ``max_sparsity_per_layer`` (default 0.99).

    Uses :func:`purecompress.allocate_global`. Unlike NNI 2.10, already-pruned blocks count toward
    the total first (NNI gives them ``min - 1`` per layer, which can prune more than asked).
    """

    def common_target_masks_generation(self, metrics: NniMetrics) -> NniMasks:
        core = self.core_metrics(metrics)
        if not core:
            return {}
        sparsity = self.sparsity_of(list(core))
        if len(set(sparsity.values())) > 1:
            raise ValueError(f"GlobalSparsityAllocator needs one total_sparsity for all its layers, got {sparsity}")
        caps = {}
        for name in core:
            module_name = name.rpartition(".")[0]
            config = self._wrapper(module_name).config
            caps[name] = float(config.get("max_sparsity_per_layer", {}).get(module_name, 0.99))
        return self.to_nni(allocate_global(core, next(iter(sparsity.values())), max_sparsity=caps,
                                           prior=self.prior_masks(list(core))))


class ThresholdSparsityAllocator(SparsityAllocator):
    """Keeps blocks whose ``sigmoid(metric)`` exceeds ``total_sparsity`` (NNI's experimental allocator)."""

    def common_target_masks_generation(self, metrics: NniMetrics) -> NniMasks:
        core = self.core_metrics(metrics)
        # NNI compares sigmoid(metric) with the config's 'total_sparsity' used as a threshold.
        squashed = {n: Metric(torch.sigmoid(m.score), m.shape) for n, m in core.items()}
        return self.to_nni(allocate_threshold(squashed, self.sparsity_of(list(core)),
                                              prior=self.prior_masks(list(core))))
