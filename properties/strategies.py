"""Hypothesis strategies for purecompress's laws: shapes, blocks, metrics, masks, params, configs.

Tensor values come from a drawn seed and a drawn number of distinct ``levels`` (small integers),
so ties are common, scores are exact under scaling by powers of two, and failures shrink to
small, tie-heavy cases.
"""

from __future__ import annotations

import math

import torch
from hypothesis import strategies as st

import purecompress as pc

__all__ = [
    "blocks_for",
    "config_lists",
    "int_tensors",
    "malformed_config_lists",
    "masks_for",
    "metric_sets",
    "numel",
    "params_and_masks",
    "random_malformed_configs",
    "shapes",
    "sparsities",
    "valid_config_entries",
]

MAX_DIM = 6


def shapes(min_rank: int = 1, max_rank: int = 3, max_dim: int = MAX_DIM) -> st.SearchStrategy[tuple[int, ...]]:
    """Small parameter shapes (every dim >= 1)."""
    return st.lists(st.integers(1, max_dim), min_size=min_rank, max_size=max_rank).map(tuple)


def sparsities(max_value: float = 0.99) -> st.SearchStrategy[float]:
    """Sparsities in ``[0, max_value]``, including the edges and values close to 1."""
    return st.one_of(
        st.sampled_from([0.0, 0.5, 0.9, max_value]),
        st.floats(0.0, max_value, allow_nan=False),
    )


@st.composite
def int_tensors(draw: st.DrawFn, shape: tuple[int, ...], *, levels: int | None = None,
                dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """Integer-valued tensor of ``shape`` with values in ``[0, levels)`` (ties likely)."""
    seed = draw(st.integers(0, 2**16))
    levels = levels if levels is not None else draw(st.integers(1, 50))
    gen = torch.Generator().manual_seed(seed)
    return torch.randint(0, levels, shape, generator=gen).to(dtype)


def _divisors(n: int) -> list[int]:
    return [d for d in range(1, n + 1) if n % d == 0]


@st.composite
def blocks_for(draw: st.DrawFn, shape: tuple[int, ...]) -> pc.Block:
    """A :class:`~purecompress.Block` that tiles ``shape`` (element, channel or arbitrary)."""
    kind = draw(st.sampled_from(["element", "channel", "any"]))
    if kind == "element":
        return pc.Block.element()
    if kind == "channel":
        return pc.Block.channel()
    return pc.Block(tuple(draw(st.sampled_from(_divisors(n))) for n in shape))


@st.composite
def metric_sets(draw: st.DrawFn, *, min_layers: int = 1, max_layers: int = 3,
                element: bool = False) -> pc.Metrics:
    """``{'l<i>.weight': Metric}`` with integer scores on a block grid of each layer.

    With ``element=True`` every metric is at element granularity.
    """
    out = {}
    for i in range(draw(st.integers(min_layers, max_layers))):
        shape = draw(shapes())
        block = pc.Block.element() if element else draw(blocks_for(shape))
        out[f"l{i}.weight"] = pc.Metric(draw(int_tensors(block.grid(shape))), shape)
    return out


@st.composite
def masks_for(draw: st.DrawFn, shape: tuple[int, ...]) -> pc.Mask:
    """A random mask for a parameter of ``shape`` at a random block granularity."""
    grid = draw(blocks_for(shape)).grid(shape)
    return pc.Mask(draw(int_tensors(grid, levels=2)).bool(), shape)


@st.composite
def params_and_masks(draw: st.DrawFn) -> tuple[pc.Params, pc.Masks]:
    """A float params dict and masks for a subset of its keys."""
    n = draw(st.integers(1, 3))
    params, masks = {}, {}
    for i in range(n):
        shape = draw(shapes())
        gen = torch.Generator().manual_seed(draw(st.integers(0, 2**16)))
        params[f"m{i}.weight"] = torch.randn(shape, generator=gen)
        if draw(st.booleans()):
            masks[f"m{i}.weight"] = draw(masks_for(shape))
    return params, masks


# ----- configs -------------------------------------------------------------------------------

_TYPES = ["Conv2d", "Linear", "default", "BatchNorm2d", "ReLU"]
_NAMES = ["conv1", "fc", "layer1.0", "0", "features.3"]


@st.composite
def valid_config_entries(draw: st.DrawFn) -> dict[str, object]:
    """One valid NNI pruning config dict."""
    entry: dict[str, object] = {}
    selectors = draw(st.sets(st.sampled_from(["op_types", "op_names", "op_partial_names", "op_names_re"]),
                             min_size=1))
    for key in sorted(selectors):
        pool = _TYPES if key == "op_types" else _NAMES
        entry[key] = draw(st.lists(st.sampled_from(pool), min_size=1, max_size=3))
    if draw(st.booleans()) and draw(st.booleans()):
        entry["exclude"] = True
        return entry
    kind = draw(st.sampled_from(["sparsity", "sparsity_per_layer", "total_sparsity"]))
    entry[kind] = draw(st.floats(0.0, 1.0, exclude_max=True))
    if kind == "total_sparsity" and draw(st.booleans()):
        entry["max_sparsity_per_layer"] = draw(st.floats(0.0, 1.0, exclude_min=True))  # NNI: 0 < cap <= 1
    return entry


def config_lists() -> st.SearchStrategy[list[dict[str, object]]]:
    """Valid NNI pruning config lists."""
    return st.lists(valid_config_entries(), max_size=4)


_GARBAGE = st.recursive(
    st.none() | st.booleans() | st.integers(-3, 3) | st.floats() | st.text(max_size=5)
    | st.binary(max_size=3) | st.sampled_from([float("nan"), float("inf"), 1, 0, 1.0, -0.5, 2.0]),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=4), inner, max_size=3)
    | st.tuples(inner) | st.frozensets(st.integers(0, 3), max_size=2),
    max_leaves=6,
)

_BAD_REGEX = st.sampled_from(["(", "a{4294967296}", "(" * 5000 + ")" * 5000, "[", "\\", "*a"])


@st.composite
def _malformed_entry(draw: st.DrawFn) -> object:
    """A config entry that may be broken in one or more ways (or be fine)."""
    if draw(st.integers(0, 9)) == 0:
        return draw(_GARBAGE)  # not a dict at all
    entry = dict(draw(valid_config_entries()))
    for _ in range(draw(st.integers(0, 3))):
        how = draw(st.sampled_from(["drop", "garbage", "unknown", "range", "regex", "both"]))
        keys = ["op_types", "op_names", "op_partial_names", "op_names_re", "exclude", "sparsity",
                "sparsity_per_layer", "total_sparsity", "max_sparsity_per_layer"]
        key = draw(st.sampled_from(keys))
        if how == "drop":
            entry.pop(key, None)
        elif how == "garbage":
            entry[key] = draw(_GARBAGE)
        elif how == "unknown":
            entry[draw(st.text(max_size=6) | st.integers() | st.none())] = draw(_GARBAGE)
        elif how == "range":
            entry[key] = draw(st.floats() | st.sampled_from([-0.1, 1.0, 1.5, 1, 0, True]))
        elif how == "regex":
            entry["op_names_re"] = [draw(_BAD_REGEX)]
        else:
            entry["sparsity"] = entry["sparsity_per_layer"] = 0.5
    return entry


def malformed_config_lists() -> st.SearchStrategy[object]:
    """Config lists that are often malformed: wrong types, unknown keys, bad values, non-lists."""
    return st.one_of(
        st.lists(_malformed_entry(), max_size=4),
        st.tuples(_malformed_entry()),
        _GARBAGE,
    )


def numel(shape: tuple[int, ...]) -> int:
    """Number of elements of ``shape``."""
    return math.prod(shape)


# ----- malformed configs in bulk (issue 11: 10^4 per run, from a drawn seed) ----------------------

_VALID_PRUNE = [
    {"sparsity": 0.5, "op_types": ["Conv2d"]}, {"sparsity_per_layer": 0.25, "op_types": ["default"]},
    {"total_sparsity": 0.5, "op_types": ["Conv2d", "Linear"], "max_sparsity_per_layer": 0.9},
    {"exclude": True, "op_names": ["0"]}, {"sparsity": 0.3, "op_names": ["3"], "op_partial_names": ["0"]},
]
_VALID_QUANT = [
    {"quant_types": ["weight"], "quant_bits": 8, "op_types": ["Conv2d"]},
    {"quant_types": ["weight", "input", "output"], "quant_bits": {"weight": 4, "input": 8, "output": 8},
     "quant_dtype": "int", "quant_scheme": "per_channel_symmetric", "op_types": ["Conv2d", "Linear"]},
    {"quant_types": ["output"], "quant_bits": 2, "op_types": ["ReLU"], "quant_start_step": 3},
    {"exclude": True, "op_names": ["3"]},
]
_KEYS = ["op_types", "op_names", "op_partial_names", "op_names_re", "exclude", "sparsity", "sparsity_per_layer",
         "total_sparsity", "max_sparsity_per_layer", "quant_types", "quant_bits", "quant_dtype", "quant_scheme",
         "quant_start_step", "rho", "bogus"]
_LEAVES: list[object] = [None, True, False, 0, 1, -1, 8, 1, 32, 2**64, 10**20, 0.0, 0.5, 0.99, 1.0, -0.5, 1.5,
                         float("nan"), float("inf"), "", "x", "int", "uint", "weight", "Conv2d", "ReLU", "default",
                         "per_channel_affine", "(", b"Conv2d", (), [], {}]


def _garbage(rng: object, depth: int = 0) -> object:
    kind = rng.randrange(8) if depth < 2 else 0  # type: ignore[attr-defined]
    if kind <= 3:
        return rng.choice(_LEAVES)  # type: ignore[attr-defined]
    items = [_garbage(rng, depth + 1) for _ in range(rng.randrange(3))]  # type: ignore[attr-defined]
    if kind == 4:
        return items
    if kind == 5:
        return tuple(items)
    if kind == 6:
        return {rng.choice(["weight", "input", "output", "x", "0"]): v for v in items}  # type: ignore[attr-defined]
    return {v for v in items if isinstance(v, (str, int, float, type(None)))}


def _mutated_entry(rng: object) -> object:
    if rng.randrange(12) == 0:  # type: ignore[attr-defined]
        return _garbage(rng)
    entry = dict(rng.choice(_VALID_PRUNE + _VALID_QUANT))  # type: ignore[attr-defined]
    for _ in range(rng.randrange(4)):  # type: ignore[attr-defined]
        key = rng.choice(_KEYS)  # type: ignore[attr-defined]
        how = rng.randrange(4)  # type: ignore[attr-defined]
        if how == 0:
            entry.pop(key, None)
        elif how == 1 and isinstance(entry.get(key), list):
            convert = rng.choice([tuple, set, dict.fromkeys, lambda v: ",".join(map(str, v))])  # type: ignore[attr-defined]
            try:
                entry[key] = convert(entry[key])
            except TypeError:  # unhashable items: leave the list
                pass
        else:
            entry[key] = _garbage(rng)
    return entry


def random_malformed_configs(seed: int, n: int) -> list[object]:
    """``n`` config lists mutated from valid pruning and quantization entries (often malformed)."""
    import random

    rng = random.Random(seed)
    out: list[object] = []
    for _ in range(n):
        if rng.randrange(15) == 0:
            out.append(_garbage(rng))
        else:
            out.append([_mutated_entry(rng) for _ in range(rng.randrange(1, 4))])
    return out
