"""purecompress: neural-network pruning and quantization as pure functions over parameter dicts.

The functional core: records (:class:`Mask`, :class:`Metric`, :class:`Block`), configs and
selection, metrics, allocators, and :func:`apply_masks` for
:func:`torch.func.functional_call`. ``purecompress.compat`` recreates NNI 2.x's object API on top.
"""

from __future__ import annotations

from purecompress._pytree import NAMESPACE, trees_equal
from purecompress.allocate import (
    allocate_balanced,
    allocate_global,
    allocate_per_layer,
    allocate_threshold,
    bias_masks,
    keep_top,
    kept_count,
)
from purecompress.config import DEFAULT_OP_TYPES, ConfigError, PruneConfig, Selector, from_config_list
from purecompress.graph import GraphCaptureError, capture, channel_dependency, group_dependency
from purecompress.io import load_masks, load_nni_masks, masks_from_nni, masks_to_nni, save_masks
from purecompress.metrics import fpgm, l1_norm, l2_norm, level, lp_norm, metric_by
from purecompress.params import apply_masks, params_of
from purecompress.pipeline import allocate, prune
from purecompress.records import Block, Mask, Masks, Metric, Metrics, Params
from purecompress.report import LayerSparsity, SparsityReport, sparsity_report
from purecompress.selection import Plan, PlanEntry, UnmatchedSelectorWarning, select

__version__ = "0.1.0"

__all__ = [
    "DEFAULT_OP_TYPES",
    "NAMESPACE",
    "Block",
    "ConfigError",
    "GraphCaptureError",
    "LayerSparsity",
    "Mask",
    "Masks",
    "Metric",
    "Metrics",
    "Params",
    "Plan",
    "PlanEntry",
    "PruneConfig",
    "Selector",
    "SparsityReport",
    "UnmatchedSelectorWarning",
    "allocate",
    "allocate_balanced",
    "allocate_global",
    "allocate_per_layer",
    "allocate_threshold",
    "apply_masks",
    "bias_masks",
    "capture",
    "channel_dependency",
    "fpgm",
    "from_config_list",
    "group_dependency",
    "keep_top",
    "kept_count",
    "l1_norm",
    "load_masks",
    "load_nni_masks",
    "masks_from_nni",
    "masks_to_nni",
    "l2_norm",
    "level",
    "lp_norm",
    "metric_by",
    "params_of",
    "prune",
    "save_masks",
    "select",
    "sparsity_report",
    "trees_equal",
]
