"""The pruning core: records, configs, metrics, allocators, schedules and stateful pruning transforms.

Everything here is a pure function over a parameter dict (:data:`Params`) or an immutable record;
the modules behind this package are private, and every public name is re-exported here and at the
top level (``purecompress.l1_norm`` is ``purecompress.pruning.l1_norm``).

- records: :class:`Block` (granularity), :class:`Metric`, :class:`Mask`;
- configs: :class:`PruneConfig`, :func:`from_config_list`;
- metrics: :func:`level`, :func:`lp_norm`, :func:`fpgm`, :func:`taylor_fo`, :func:`apoz`, ...;
- statistics from data: :func:`collect_activations`, :func:`collect_taylor` (DDP-aware);
- allocators: :func:`allocate_per_layer`, :func:`allocate_global`, :func:`allocate_balanced`,
  :func:`allocate_threshold`, :func:`allocate_dependency_aware`, and the pipeline :func:`prune`;
- schedules and transforms: :func:`agp`, :func:`gradual`, :func:`movement`, :func:`admm`;
- files and reports: :func:`save_masks`, :func:`load_masks`, :func:`sparsity_report`.
"""

from __future__ import annotations

from purecompress.pruning._admm import (
    AdmmState,
    admm,
    admm_masks,
    admm_metric,
    admm_penalty,
)
from purecompress.pruning._allocators import (
    ChannelRange,
    ShuffleChain,
    allocate_balanced,
    allocate_dependency_aware,
    allocate_global,
    allocate_per_layer,
    allocate_threshold,
    bias_masks,
    dependency_kept_count,
    group_keep,
    keep_top,
    kept_count,
)
from purecompress.pruning._collect import (
    collect_activations,
    collect_taylor,
)
from purecompress.pruning._config import (
    PruneConfig,
    from_config_list,
)
from purecompress.pruning._conflict import (
    channel_keep,
    channel_mask,
    channel_sparsity,
    equalize_groups,
    is_channel_mask,
    unify_channels,
)
from purecompress.pruning._distributed import (
    Sync,
    all_reduce_stats,
    broadcast_masks,
    is_distributed,
    resolve_sync,
)
from purecompress.pruning._gradual import (
    GradualState,
    agp,
    gradual,
    lottery_ticket,
    rewind,
)
from purecompress.pruning._io import (
    load_masks,
    load_nni_masks,
    masks_from_nni,
    masks_to_nni,
    save_masks,
)
from purecompress.pruning._metrics import (
    apoz,
    bn_scale,
    fpgm,
    l1_norm,
    l2_norm,
    level,
    lp_norm,
    mean_activation,
    metric_by,
    slim_penalty,
    slim_penalty_grad,
    taylor_fo,
)
from purecompress.pruning._movement import (
    MovementState,
    apply_movement,
    cubic_sparsity,
    movement,
    movement_masks,
    movement_regularizer,
    movement_scores,
    straight_through,
)
from purecompress.pruning._n_m import allocate_n_m, gradual_n_m, n_m_keep, n_m_sparsity, parse_n_m
from purecompress.pruning._params import (
    apply_masks,
    output_mask,
    params_of,
    simplify_mask,
)
from purecompress.pruning._pipeline import (
    allocate,
    prune,
)
from purecompress.pruning._records import (
    Block,
    Mask,
    Masks,
    Metric,
    Metrics,
    blocks_of,
    expand_blocks,
    unblock,
)
from purecompress.pruning._report import (
    LayerSparsity,
    SparsityReport,
    sparsity_report,
)
from purecompress.pruning._schedule import (
    Schedule,
    agp_schedule,
    compose_sparsity,
    constant_schedule,
    iteration_sparsities,
    linear_schedule,
    lottery_schedule,
    progress,
    relative_sparsity,
)
from purecompress.pruning._sensitivity import Sensitivity, sensitivity
from purecompress.pruning._stats import (
    ActivationStats,
    TaylorStats,
    activation_fn,
    batch_activation_stats,
    channel_dim_of,
    taylor_accumulate,
    taylor_term,
)
from purecompress.transform import Params, Stateful, Transform

__all__ = [
    "allocate_n_m",
    "gradual_n_m",
    "n_m_keep",
    "n_m_sparsity",
    "parse_n_m",
    "Sensitivity",
    "sensitivity",
    "ActivationStats",
    "AdmmState",
    "Block",
    "ChannelRange",
    "ShuffleChain",
    "GradualState",
    "LayerSparsity",
    "Mask",
    "Masks",
    "Metric",
    "Metrics",
    "MovementState",
    "Params",
    "PruneConfig",
    "Schedule",
    "SparsityReport",
    "Stateful",
    "Sync",
    "TaylorStats",
    "Transform",
    "activation_fn",
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
    "apoz",
    "apply_masks",
    "apply_movement",
    "batch_activation_stats",
    "bias_masks",
    "blocks_of",
    "bn_scale",
    "broadcast_masks",
    "channel_dim_of",
    "collect_activations",
    "collect_taylor",
    "compose_sparsity",
    "constant_schedule",
    "cubic_sparsity",
    "dependency_kept_count",
    "expand_blocks",
    "fpgm",
    "from_config_list",
    "gradual",
    "group_keep",
    "is_distributed",
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
    "output_mask",
    "params_of",
    "progress",
    "prune",
    "relative_sparsity",
    "resolve_sync",
    "rewind",
    "save_masks",
    "slim_penalty",
    "slim_penalty_grad",
    "simplify_mask",
    "sparsity_report",
    "straight_through",
    "taylor_accumulate",
    "taylor_fo",
    "taylor_term",
    "unblock",
    "channel_keep",
    "channel_mask",
    "channel_sparsity",
    "equalize_groups",
    "is_channel_mask",
    "unify_channels",
]
