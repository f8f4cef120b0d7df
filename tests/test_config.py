"""Example tests of config parsing: NNI's validation rules, each error naming index and key."""

from __future__ import annotations

import pytest

import purecompress as pc
from purecompress.selectors import check_op_types, parse_selector


def test_parses_nni_sparsity_keys() -> None:
    a, b, c = pc.from_config_list([
        {"sparsity": 0.5, "op_types": ["Conv2d"]},
        {"sparsity_per_layer": 0.25, "op_names": ["fc"]},
        {"total_sparsity": 0.8, "max_sparsity_per_layer": 0.9, "op_types": ["default"]},
    ])
    assert a.sparsity_per_layer == 0.5 and a.sparsity == 0.5 and a.selector.op_types == ("Conv2d",)
    assert b.sparsity_per_layer == 0.25 and b.selector.op_names == ("fc",)
    assert c.total_sparsity == 0.8 and c.sparsity == 0.8 and c.cap_for("any") == 0.9


def test_sparsity_edges_zero_and_close_to_one_are_valid() -> None:
    assert pc.from_config_list([{"sparsity": 0.0, "op_types": ["Linear"]}])[0].sparsity == 0.0
    assert pc.from_config_list([{"sparsity": 0.999999, "op_types": ["Linear"]}])[0].sparsity == 0.999999


def test_cap_for_default_float_and_per_module() -> None:
    plain, capped, per_module = pc.from_config_list([
        {"total_sparsity": 0.5, "op_types": ["Linear"]},
        {"total_sparsity": 0.5, "op_types": ["Linear"], "max_sparsity_per_layer": 1.0},
        {"total_sparsity": 0.5, "op_types": ["Linear"], "max_sparsity_per_layer": {"fc": 0.3}},
    ])
    assert plain.cap_for("fc") == 0.99
    assert capped.cap_for("fc") == 1.0
    assert per_module.cap_for("fc") == 0.3 and per_module.cap_for("other") == 0.99


def test_exclude_entry_needs_no_sparsity() -> None:
    (config,) = pc.from_config_list([{"exclude": True, "op_names": ["fc"]}])
    assert config.selector.exclude and config.sparsity is None


def test_extra_keys_go_to_options() -> None:
    (config,) = pc.from_config_list([{"sparsity": 0.5, "op_types": ["Linear"], "rho": 1e-4}], extra_keys=("rho",))
    assert config.options == {"rho": 1e-4}


def test_empty_config_list_is_valid() -> None:
    assert pc.from_config_list([]) == ()


def test_config_error_is_a_value_error_with_where_and_why() -> None:
    err = pc.ConfigError(2, "sparsity", "must be in [0, 1)")
    assert isinstance(err, ValueError)
    assert (err.index, err.key, err.reason) == (2, "sparsity", "must be in [0, 1)")
    assert str(err) == "config_list[2]['sparsity']: must be in [0, 1)"
    assert str(pc.ConfigError(None, None, "bad")) == "config: bad"


OK = {"op_types": ["Conv2d"]}

# NNI_PARITY.md's validation list: every invalid case, the index and key the error must name.
INVALID = [
    # sparsity values must be floats in [0, 1)
    ([OK | {"sparsity": 1.0}], 0, "sparsity", r"in \[0, 1\)"),
    ([OK | {"sparsity": -0.1}], 0, "sparsity", r"in \[0, 1\)"),
    ([OK | {"sparsity": float("nan")}], 0, "sparsity", r"in \[0, 1\)"),
    ([OK | {"sparsity": 1}], 0, "sparsity", "must be a float"),
    ([OK | {"sparsity": 0}], 0, "sparsity", "must be a float"),
    ([OK | {"sparsity": True}], 0, "sparsity", "must be a float"),
    ([OK | {"sparsity": "0.5"}], 0, "sparsity", "must be a float"),
    ([OK | {"sparsity_per_layer": 1.5}], 0, "sparsity_per_layer", r"in \[0, 1\)"),
    ([OK | {"total_sparsity": 1.0}], 0, "total_sparsity", r"in \[0, 1\)"),
    ([OK | {"total_sparsity": None}], 0, "total_sparsity", "must be a float"),
    ([OK | {"total_sparsity": 0.5, "max_sparsity_per_layer": 1.5}], 0, "max_sparsity_per_layer", r"\[0, 1\]"),
    ([OK | {"total_sparsity": 0.5, "max_sparsity_per_layer": {"fc": 2.0}}], 0, "max_sparsity_per_layer", r"\[0, 1\]"),
    ([OK | {"total_sparsity": 0.5, "max_sparsity_per_layer": "x"}], 0, "max_sparsity_per_layer", "float"),
    ([OK | {"total_sparsity": 0.5, "max_sparsity_per_layer": 0.0}], 0, "max_sparsity_per_layer", r"\(0, 1\]"),
    ([OK | {"total_sparsity": 0.5, "max_sparsity_per_layer": {"fc": 0.0}}], 0, "max_sparsity_per_layer",
     r"\(0, 1\]"),
    # max_sparsity_per_layer caps a global (total) sparsity only; per-layer and total are exclusive
    ([OK | {"sparsity": 0.5, "max_sparsity_per_layer": 0.9}], 0, "max_sparsity_per_layer", "'total_sparsity' only"),
    ([OK | {"exclude": True, "max_sparsity_per_layer": 0.9}], 0, "exclude", "would be ignored"),
    ([OK | {"sparsity": 0.5, "total_sparsity": 0.5}], 0, "total_sparsity", "not both"),
    # both spellings of the per-layer sparsity
    ([OK | {"sparsity": 0.5, "sparsity_per_layer": 0.5}], 0, "sparsity", "set one"),
    # at least one selector
    ([{"sparsity": 0.5}], 0, None, "at least one of op_types"),
    ([{"exclude": True}], 0, None, "at least one of op_types"),
    # selector values
    ([OK | {"sparsity": 0.5}, {"sparsity": 0.5, "op_types": "Conv2d"}], 1, "op_types", "list of strings"),
    ([{"sparsity": 0.5, "op_names": [1]}], 0, "op_names", "list of strings"),
    ([{"sparsity": 0.5, "op_partial_names": None}], 0, "op_partial_names", "list of strings"),
    ([{"sparsity": 0.5, "op_names_re": ["("]}], 0, "op_names_re", "bad regular expression"),
    ([{"sparsity": 0.5, "op_names_re": ["a{4294967296}"]}], 0, "op_names_re", "bad regular expression"),
    ([OK | {"exclude": "yes"}], 0, "exclude", "True or False"),
    ([OK | {"exclude": 1}], 0, "exclude", "True or False"),
    # unknown keys
    ([OK | {"sparsity": 0.5}, OK | {"sparsity": 0.5, "sparsty": 0.5}], 1, "sparsty", "unknown key"),
    ([OK | {"sparsity": 0.5, "quant_bits": 8}], 0, "quant_bits", "unknown key"),
    # no sparsity at all on a non-exclude entry
    ([OK], 0, None, "needs 'sparsity'"),
    ([OK | {"exclude": False}], 0, None, "needs 'sparsity'"),
    # entries and the list itself
    ([OK | {"sparsity": 0.5}, "Conv2d"], 1, None, "must be a dict"),
    ([None], 0, None, "must be a dict"),
    ({"sparsity": 0.5, "op_types": ["Conv2d"]}, None, None, "must be a list of dicts"),
    (None, None, None, "must be a list of dicts"),
    (5, None, None, "must be a list of dicts"),
]


@pytest.mark.parametrize(("config_list", "index", "key", "reason"), INVALID)
def test_invalid_configs_raise_config_error_naming_index_and_key(
    config_list: object, index: int | None, key: str | None, reason: str
) -> None:
    with pytest.raises(pc.ConfigError, match=reason) as info:
        pc.from_config_list(config_list)  # type: ignore[arg-type]
    assert (info.value.index, info.value.key) == (index, key)
    if index is not None:
        assert str(info.value).startswith(f"config_list[{index}]")


@pytest.mark.parametrize("op_types", [["Conv2d", "BatchNorm2d"], ["default"]])
def test_op_types_outside_the_allowed_ones_are_rejected(op_types: list[str]) -> None:
    with pytest.raises(pc.ConfigError, match="not supported here") as info:
        pc.from_config_list([{"sparsity": 0.5, "op_types": ["Linear"]}, {"sparsity": 0.5, "op_types": op_types}],
                            allowed_op_types=("Conv2d", "Linear"))
    assert (info.value.index, info.value.key) == (1, "op_types")


def test_allowed_op_types_do_not_apply_to_exclude_entries() -> None:
    configs = pc.from_config_list([{"sparsity": 0.5, "op_types": ["Conv2d"]},
                                   {"exclude": True, "op_types": ["BatchNorm2d"]}],
                                  allowed_op_types=("Conv2d", "Linear"))
    assert len(configs) == 2
    check_op_types(0, configs[1].selector, ("Conv2d",))  # no error


def test_parse_selector_and_default_expansion() -> None:
    sel = parse_selector(3, {"op_types": ["default", "BatchNorm2d"], "op_partial_names": ["conv"]})
    assert sel.types is not None
    assert sel.types[0] == "BatchNorm2d" and set(pc.DEFAULT_OP_TYPES) <= set(sel.types)
    assert "BatchNorm2d" not in pc.DEFAULT_OP_TYPES
    assert sel.matches("conv1", "Linear") and not sel.matches("fc", "Linear")
    assert not sel.matches("conv1", "ReLU")
    with pytest.raises(pc.ConfigError) as info:
        parse_selector(3, {"sparsity": 0.5})
    assert info.value.index == 3


def test_selector_name_rules() -> None:
    assert pc.Selector(op_names=("a.b",)).matches("a.b", "Linear")
    assert not pc.Selector(op_names=("a",)).matches("a.b", "Linear")
    assert pc.Selector(op_partial_names=("b",)).matches("a.b", "Linear")
    assert pc.Selector(op_names_re=(r"a\.\d",)).matches("a.1", "Conv2d")
    assert not pc.Selector(op_names_re=(r"a",)).matches("a.1", "Conv2d")  # full match only
    # names are a union, types an intersection with them
    sel = pc.Selector(op_types=("Linear",), op_names=("x",), op_partial_names=("y",))
    assert sel.matches("x", "Linear") and sel.matches("ay", "Linear") and not sel.matches("x", "Conv2d")
    assert pc.Selector(op_types=("Linear",)).types == ("Linear",)
    assert pc.Selector(op_names=("x",)).types is None


def test_configs_are_frozen_records() -> None:
    (config,) = pc.from_config_list([{"sparsity": 0.5, "op_types": ["Linear"]}])
    with pytest.raises(AttributeError):
        config.sparsity_per_layer = 0.1  # type: ignore[misc]
    assert config == pc.from_config_list([{"sparsity": 0.5, "op_types": ["Linear"]}])[0]
