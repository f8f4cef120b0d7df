"""Graph work: capture (``torch.fx`` tracing, or a recording of a real run), channel dependencies,
mask propagation and shrinking.

The modules behind this package are private; every public name is re-exported here:
:func:`capture` (:func:`capture_info` says which method ran), :func:`channel_dependency` /
:func:`input_channel_dependency` / :func:`group_dependency` / :func:`attention_dependency` (NNI's
dependency sets),
:func:`propagate` / :func:`channel_plan` (which channels the masks kill), :func:`channel_ranges`
(the dependency sets as ranges of channels that shrink removes together), :func:`shuffle_chains`
(chains of ShuffleNetV2 units, for the allocator), :func:`shrink` (a compact
model equal to the masked one), the replacement table (:class:`Replacement`, :class:`ChannelSlice`) and
the composite layers whose stored sizes are set again after shrinking (:data:`COMPOSITES`).
"""

from __future__ import annotations

from purecompress.graph._capture import (
    METHODS,
    PRODUCER_TYPES,
    CaptureInfo,
    GraphCaptureError,
    bind_inputs,
    capture,
    capture_info,
    is_captured,
)
from purecompress.graph._dependency import (
    Kind,
    attention_dependency,
    channel_dependency,
    group_constraints,
    group_dependency,
    input_channel_dependency,
)
from purecompress.graph._propagate import (
    EXACT_TOL,
    FIRST_ONLY,
    Analysis,
    Call,
    ChannelPlan,
    Classes,
    EmptyLayerError,
    Liveness,
    Propagated,
    ShrinkError,
    Track,
    UnbalancedGroupsError,
    analyse,
    channel_plan,
    channel_ranges,
    kind_of,
    liveness,
    op_name,
    propagate,
    shuffle_chains,
    trace_channels,
)
from purecompress.graph._replace import (
    COMPOSITES,
    REPLACEMENTS,
    ChannelSlice,
    Replacement,
    composite_of,
    replacement_for,
)
from purecompress.graph._shrink import (
    LayerShrink,
    ShrinkReport,
    shrink,
)

__all__ = [
    "Analysis",
    "Call",
    "COMPOSITES",
    "CaptureInfo",
    "ChannelPlan",
    "ChannelSlice",
    "Classes",
    "EXACT_TOL",
    "EmptyLayerError",
    "FIRST_ONLY",
    "GraphCaptureError",
    "Kind",
    "LayerShrink",
    "Liveness",
    "METHODS",
    "PRODUCER_TYPES",
    "Propagated",
    "REPLACEMENTS",
    "Replacement",
    "ShrinkError",
    "ShrinkReport",
    "Track",
    "UnbalancedGroupsError",
    "analyse",
    "attention_dependency",
    "bind_inputs",
    "capture",
    "capture_info",
    "channel_dependency",
    "channel_plan",
    "channel_ranges",
    "composite_of",
    "group_constraints",
    "group_dependency",
    "input_channel_dependency",
    "is_captured",
    "kind_of",
    "liveness",
    "op_name",
    "propagate",
    "replacement_for",
    "shrink",
    "shuffle_chains",
    "trace_channels",
]
