"""purecompress: neural-network pruning and quantization as pure functions over parameter dicts.

The functional core: records (:class:`Mask`, :class:`Metric`, :class:`Block`), configs and
selection, metrics, allocators, and :func:`apply_masks` for
:func:`torch.func.functional_call`. ``purecompress.compat`` recreates NNI 2.x's object API on top.
"""

from __future__ import annotations

from purecompress._pytree import NAMESPACE, trees_equal
from purecompress.admm import AdmmState, admm, admm_masks, admm_metric, admm_penalty
from purecompress.allocate import (
    allocate_balanced,
    allocate_global,
    allocate_per_layer,
    allocate_threshold,
    bias_masks,
    keep_top,
    kept_count,
)
from purecompress.allocate_dependency import allocate_dependency_aware, dependency_kept_count, group_keep
from purecompress.collect import (
    ActivationStats,
    TaylorStats,
    batch_activation_stats,
    collect_activations,
    collect_taylor,
    taylor_accumulate,
)
from purecompress.config import DEFAULT_OP_TYPES, ConfigError, PruneConfig, Selector, from_config_list
from purecompress.distributed import all_reduce_stats, broadcast_masks
from purecompress.gradual import GradualState, Transform, agp, gradual, lottery_ticket, rewind
from purecompress.graph import GraphCaptureError, capture, channel_dependency, group_dependency
from purecompress.graph.propagate import ChannelPlan, channel_plan, propagate
from purecompress.graph.replace import ChannelSlice, Replacement
from purecompress.graph.shrink import LayerShrink, ShrinkReport, shrink
from purecompress.io import load_masks, load_nni_masks, masks_from_nni, masks_to_nni, save_masks
from purecompress.metrics import fpgm, l1_norm, l2_norm, level, lp_norm, metric_by
from purecompress.metrics_data import apoz, bn_scale, mean_activation, slim_penalty, taylor_fo
from purecompress.movement import (
    MovementState,
    apply_movement,
    cubic_sparsity,
    movement,
    movement_masks,
    movement_regularizer,
    movement_scores,
    straight_through,
)
from purecompress.params import apply_masks, params_of
from purecompress.pipeline import allocate, prune
from purecompress.records import Block, Mask, Masks, Metric, Metrics, Params
from purecompress.report import LayerSparsity, SparsityReport, sparsity_report
from purecompress.schedule import (
    Schedule,
    agp_schedule,
    compose_sparsity,
    constant_schedule,
    iteration_sparsities,
    linear_schedule,
    lottery_schedule,
    relative_sparsity,
)
from purecompress.search import Counts, amc_search, anneal_sparsities, count_flops_params, with_masks
from purecompress.selection import Plan, PlanEntry, UnmatchedSelectorWarning, select

__version__ = "0.1.0"

__all__ = [
    "ActivationStats",
    "AdmmState",
    "Block",
    "ChannelPlan",
    "ChannelSlice",
    "ConfigError",
    "Counts",
    "DEFAULT_OP_TYPES",
    "GradualState",
    "GraphCaptureError",
    "LayerShrink",
    "LayerSparsity",
    "Mask",
    "Masks",
    "Metric",
    "Metrics",
    "MovementState",
    "NAMESPACE",
    "Params",
    "Plan",
    "PlanEntry",
    "PruneConfig",
    "Replacement",
    "Schedule",
    "Selector",
    "ShrinkReport",
    "SparsityReport",
    "TaylorStats",
    "Transform",
    "UnmatchedSelectorWarning",
    "admm",
    "admm_masks",
    "admm_metric",
    "admm_penalty",
    "agp",
    "agp_schedule",
    "all_reduce_stats",
    "allocate",
    "allocate_balanced",
    "allocate_dependency_aware",
    "allocate_global",
    "allocate_per_layer",
    "allocate_threshold",
    "amc_search",
    "anneal_sparsities",
    "apoz",
    "apply_masks",
    "apply_movement",
    "batch_activation_stats",
    "bias_masks",
    "bn_scale",
    "broadcast_masks",
    "capture",
    "channel_dependency",
    "channel_plan",
    "collect_activations",
    "collect_taylor",
    "compose_sparsity",
    "constant_schedule",
    "count_flops_params",
    "cubic_sparsity",
    "dependency_kept_count",
    "fpgm",
    "from_config_list",
    "gradual",
    "group_dependency",
    "group_keep",
    "iteration_sparsities",
    "keep_top",
    "kept_count",
    "l1_norm",
    "l2_norm",
    "level",
    "linear_schedule",
    "load_masks",
    "load_nni_masks",
    "lottery_schedule",
    "lottery_ticket",
    "lp_norm",
    "masks_from_nni",
    "masks_to_nni",
    "mean_activation",
    "metric_by",
    "movement",
    "movement_masks",
    "movement_regularizer",
    "movement_scores",
    "params_of",
    "propagate",
    "prune",
    "relative_sparsity",
    "rewind",
    "save_masks",
    "select",
    "shrink",
    "slim_penalty",
    "sparsity_report",
    "straight_through",
    "taylor_accumulate",
    "taylor_fo",
    "trees_equal",
    "with_masks",
]
