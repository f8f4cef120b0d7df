"""Laws of config parsing: it accepts, or raises ConfigError naming where, and nothing else."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch
from hypothesis import example, given
from hypothesis import strategies as st

import purecompress as pc
from properties.strategies import config_lists, malformed_config_lists, valid_config_entries


def _parse(config_list: object) -> tuple[pc.PruneConfig, ...] | pc.ConfigError:
    try:
        return pc.from_config_list(config_list)  # type: ignore[arg-type]
    except pc.ConfigError as err:
        return err


@given(malformed_config_lists())
@example([{"sparsity": 0.5, "op_names_re": ["a{4294967296}"]}])  # re raised OverflowError
@example([{"sparsity": 0.5, "op_names_re": ["(" * 5000 + ")" * 5000]}])  # re raised RecursionError
@example({"sparsity": 0.5, "op_types": ["Conv2d"]})  # a dict, not a list of dicts
@example("sparsity")  # a string is a Sequence, of strings
@example([{"sparsity": 0.5, "op_types": "Conv2d"}])  # a string where a list is expected
@example([{"sparsity": 0.5, "op_types": [b"Conv2d"]}])
@example([{"sparsity": 0.5, "op_types": ["Conv2d"], None: 1}])
@example([{"sparsity": 0.5, "op_types": ["Conv2d"], "max_sparsity_per_layer": {"a": "x"}}])
def test_config_parsing_accepts_or_raises_config_error(config_list: object) -> None:
    result = _parse(config_list)
    if isinstance(result, pc.ConfigError):
        assert isinstance(result, ValueError)
        assert str(result).startswith("config")
    else:
        assert all(isinstance(c, pc.PruneConfig) for c in result)


@given(st.lists(valid_config_entries(), min_size=1, max_size=4), st.data())
def test_config_error_names_the_first_invalid_entry(entries: list[dict[str, object]], data: st.DataObject) -> None:
    bad = data.draw(st.integers(0, len(entries) - 1))
    entries = [dict(e) for e in entries]
    entries[bad]["sparsity_typo"] = 0.5
    result = _parse(entries)
    assert isinstance(result, pc.ConfigError)
    assert (result.index, result.key) == (bad, "sparsity_typo")


@given(config_lists())
def test_valid_config_lists_are_accepted_with_their_values(config_list: list[dict[str, object]]) -> None:
    configs = pc.from_config_list(config_list)
    assert len(configs) == len(config_list)
    for entry, config in zip(config_list, configs):
        sel = config.selector
        assert sel.exclude == entry.get("exclude", False)
        for key in ("op_types", "op_names", "op_partial_names", "op_names_re"):
            assert getattr(sel, key) == (tuple(entry[key]) if key in entry else None)
        if not sel.exclude:
            per_layer = entry.get("sparsity", entry.get("sparsity_per_layer"))
            assert config.sparsity == (per_layer if per_layer is not None else entry["total_sparsity"])


@given(config_lists())
def test_config_parsing_is_deterministic_and_does_not_modify_its_input(config_list: list[dict[str, object]]) -> None:
    snapshot = repr(config_list)
    assert pc.from_config_list(config_list) == pc.from_config_list(config_list)
    assert repr(config_list) == snapshot


_LAYERS = {
    "Conv2d": lambda: torch.nn.Conv2d(2, 2, 1),
    "Linear": lambda: torch.nn.Linear(2, 2),
    "BatchNorm2d": lambda: torch.nn.BatchNorm2d(2),
    "ReLU": torch.nn.ReLU,
    "Embedding": lambda: torch.nn.Embedding(3, 2),
}


@st.composite
def _models(draw: st.DrawFn) -> torch.nn.Module:
    def layer() -> torch.nn.Module:
        return _LAYERS[draw(st.sampled_from(sorted(_LAYERS)))]()

    return torch.nn.Sequential(*[
        torch.nn.Sequential(*[layer() for _ in range(draw(st.integers(1, 2)))]) if draw(st.booleans()) else layer()
        for _ in range(draw(st.integers(1, 4)))
    ])


@st.composite
def _model_and_nni_configs(draw: st.DrawFn) -> tuple[torch.nn.Module, list[dict[str, object]]]:
    model = draw(_models())
    names = [n for n, _ in model.named_modules() if n] + ["missing"]
    entries = []
    for i in range(draw(st.integers(1, 4))):
        entry: dict[str, object] = {}
        if draw(st.booleans()):
            entry["op_types"] = draw(st.lists(st.sampled_from([*_LAYERS, "default"]), min_size=1, max_size=2))
        if draw(st.booleans()) or not entry:
            entry["op_names"] = draw(st.lists(st.sampled_from(names), min_size=1, max_size=3))
        if draw(st.integers(0, 3)) == 0:
            entry["exclude"] = True  # NNI excludes for exclude: False too; purecompress does not
        else:
            entry["sparsity"] = (i + 1) / 10  # identifies the winning entry
        entries.append(entry)
    return model, entries


@given(_model_and_nni_configs())
def test_config_selection_equals_nnis(case: tuple[torch.nn.Module, list[dict[str, object]]]) -> None:
    nni_base = pytest.importorskip("nni.algorithms.compression.v2.pytorch.base.compressor",
                                   reason="NNI 2.10.1 is the oracle for selection")
    model, config_list = case
    plan = pc.select(model, pc.from_config_list(config_list), warn=False)
    nni = SimpleNamespace(config_list=config_list)
    for name, module in model.named_modules():
        if module is model:
            continue
        theirs = nni_base.Compressor._select_config(nni, nni_base.LayerInfo(name, module))
        ours = plan[name].config.sparsity if name in plan else None
        assert ours == (None if theirs is None else theirs["sparsity"]), name
