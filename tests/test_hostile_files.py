"""Regression tests for issue 11, files: what the library saves loads back, and a hostile file is
refused with a FileFormatError that names the file and the entry."""

from __future__ import annotations

import json
import os
import pickle
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

import purecompress as pc
import purecompress.quant as pq
from purecompress import Metric

SHAPES = "purecompress.mask_shapes"
QP = "purecompress.quant_params"


def _dependency_masks() -> pc.Masks:
    metrics = {"a.weight": Metric(torch.tensor([[3.], [0.], [1.], [2.]]), (4, 2)),
               "b.weight": Metric(torch.tensor([[0.], [1.], [0.], [3.]]), (4, 2)),
               "c.weight": Metric(torch.tensor([[1.], [2.]]), (2, 3))}
    return pc.allocate_dependency_aware(metrics, 0.5, channel_sets=[("a", "b"), ("c",)])


def test_dependency_aware_masks_save_and_load_back_equal(tmp_path: Path) -> None:
    masks = _dependency_masks()
    assert masks["a.weight"].keep.data_ptr() == masks["b.weight"].keep.data_ptr()  # what made saving fail
    path = tmp_path / "m.safetensors"
    pc.save_masks(path, masks)
    loaded = pc.load_masks(path)
    assert loaded == masks
    assert masks["a.weight"].keep.data_ptr() == masks["b.weight"].keep.data_ptr()  # the input is untouched


def _mask_file(tmp_path: Path, shapes: object, keep: dict[str, torch.Tensor]) -> Path:
    path = tmp_path / "bad_masks.safetensors"
    save_file(keep, os.fspath(path), metadata={SHAPES: json.dumps(shapes)})
    return path


@pytest.mark.parametrize(("shape", "keep", "match"), [
    ([4], torch.ones(4, 1, dtype=torch.bool), "does not tile"),  # wrong rank
    ([4, -2], torch.ones(4, 1, dtype=torch.bool), "non-negative ints"),
    ([4, "2"], torch.ones(4, 1, dtype=torch.bool), "non-negative ints"),
    ("4,2", torch.ones(4, 1, dtype=torch.bool), "non-negative ints"),
    ([4, True], torch.ones(4, 1, dtype=torch.bool), "non-negative ints"),
    ([4, 2.0], torch.ones(4, 1, dtype=torch.bool), "non-negative ints"),
    ([3, 2], torch.ones(4, 1, dtype=torch.bool), "does not tile"),  # grid larger than the shape
    ([6, 2], torch.ones(4, 1, dtype=torch.bool), "does not tile"),  # block sizes inconsistent
    ([4, 2], torch.ones(4, 1, dtype=torch.float32), "not torch.bool"),
])
def test_load_masks_validates_the_header_and_names_file_and_mask(
        tmp_path: Path, shape: object, keep: torch.Tensor, match: str) -> None:
    path = _mask_file(tmp_path, {"fc.weight": shape}, {"fc.weight": keep})
    with pytest.raises(pc.FileFormatError, match=match) as info:
        pc.load_masks(path)
    assert "bad_masks.safetensors" in str(info.value) and "'fc.weight'" in str(info.value)


def test_load_masks_refuses_names_that_differ_and_a_header_that_is_not_a_mapping(tmp_path: Path) -> None:
    keep = {"fc.weight": torch.ones(2, 1, dtype=torch.bool)}
    with pytest.raises(pc.FileFormatError, match="in the header only: \\['other'\\]"):
        pc.load_masks(_mask_file(tmp_path, {"fc.weight": [2, 3], "other": [1]}, keep))
    with pytest.raises(pc.FileFormatError, match="not a mapping"):
        pc.load_masks(_mask_file(tmp_path, [[2, 3]], keep))


def _qp_file(tmp_path: Path, info: object, scale: torch.Tensor, zero_point: torch.Tensor) -> Path:
    path = tmp_path / "bad_qp.safetensors"
    save_file({"fc.weight/scale": scale, "fc.weight/zero_point": zero_point}, os.fspath(path),
              metadata={QP: json.dumps({"fc.weight": info})})
    return path


GOOD = {"qmin": -127, "qmax": 127, "axis": 0}
C2 = (torch.tensor([0.1, 0.2]), torch.zeros(2))


@pytest.mark.parametrize(("info", "tensors", "match"), [
    (GOOD | {"qmin": 5, "qmax": 3}, C2, "qmin < qmax"),
    (GOOD | {"qmin": "x"}, C2, "must be ints"),
    (GOOD | {"qmax": 127.0}, C2, "must be ints"),
    (GOOD | {"qmin": True}, C2, "must be ints"),
    ({"qmin": -127, "axis": 0}, C2, "misses \\['qmax'\\]"),
    (GOOD | {"extra": 1}, C2, "unknown keys \\['extra'\\]"),
    (GOOD | {"axis": -1}, C2, "axis=-1"),
    (GOOD | {"axis": "0"}, C2, "axis='0'"),
    (GOOD | {"axis": None}, C2, "does not fit axis=None"),
    (GOOD, (torch.tensor(0.1), torch.tensor(0.0)), "does not fit axis=0"),
    (GOOD, (torch.tensor([0.1, float("nan")]), torch.zeros(2)), "finite and > 0"),
    (GOOD, (torch.tensor([0.1, float("inf")]), torch.zeros(2)), "finite and > 0"),
    (GOOD, (torch.tensor([0.1, 0.0]), torch.zeros(2)), "finite and > 0"),
    (GOOD, (torch.tensor([0.1, -0.2]), torch.zeros(2)), "finite and > 0"),
    (GOOD, (torch.tensor([0.1, 0.2]), torch.tensor([0.0, 300.0])), "zero point"),
    (GOOD, (torch.tensor([0.1, 0.2]), torch.tensor([0.0, 0.5])), "zero point"),
    (GOOD, (torch.tensor([0.1, 0.2]), torch.zeros(3)), "one shape"),
    (GOOD, (torch.tensor([1, 2]), torch.zeros(2, dtype=torch.int64)), "float tensors"),
    (GOOD | {"group_size": 0}, C2, "group_size=0"),
    (GOOD | {"group_size": 2, "axis": None}, (torch.tensor(0.1), torch.tensor(0.0)), "group_size=2"),
    ("qmin=-127", C2, "not a mapping"),
])
def test_load_quant_params_validates_and_names_file_and_tensor(
        tmp_path: Path, info: object, tensors: tuple[torch.Tensor, torch.Tensor], match: str) -> None:
    path = _qp_file(tmp_path, info, *tensors)
    with pytest.raises(pq.FileFormatError, match=match) as err:
        pq.load_quant_params(path)
    assert "bad_qp.safetensors" in str(err.value) and "'fc.weight'" in str(err.value)


def test_valid_group_wise_and_per_tensor_params_still_load(tmp_path: Path) -> None:
    qp = {"g": pq.QuantParams(torch.tensor([0.1, 0.2]), torch.tensor([0.0, -3.0]), -8, 7, 0, group_size=4),
          "t": pq.QuantParams(torch.tensor(0.5, dtype=torch.bfloat16), torch.tensor(3.0), 0, 255)}
    pq.save_quant_params(tmp_path / "qp.safetensors", qp)
    assert pq.load_quant_params(tmp_path / "qp.safetensors") == qp


def test_per_channel_params_on_an_axis_the_tensor_lacks_are_a_clear_error() -> None:
    qp = pq.QuantParams(torch.tensor([0.1, 0.2]), torch.zeros(2), -127, 127, 3)
    with pytest.raises(ValueError, match="axis 3 applied to a tensor of rank 2"):
        pq.fake_quantize(torch.ones(2, 2), qp)


def _not_safetensors(kind: str, path: Path) -> None:
    if kind == "pickle":
        path.write_bytes(pickle.dumps({"fc.weight": [1, 2, 3]}))
    elif kind == "torch.save":
        torch.save({"fc.weight": torch.ones(2)}, path)
    elif kind == "random":
        path.write_bytes(bytes(range(256)) * 4)
    else:
        path.write_bytes(b"")


LOADERS = [pc.load_masks, pq.load_quant_params, pq.load_calibration]


@pytest.mark.parametrize("kind", ["pickle", "torch.save", "random", "empty"])
@pytest.mark.parametrize("load", LOADERS)
def test_a_file_that_is_not_safetensors_says_so(tmp_path: Path, kind: str, load: object) -> None:
    path = tmp_path / f"{kind}.safetensors"
    _not_safetensors(kind, path)
    with pytest.raises(pc.FileFormatError, match="is not a safetensors file") as err:
        load(path)  # type: ignore[operator]
    assert f"{kind}.safetensors" in str(err.value)


@pytest.mark.parametrize(("load", "key"), [(pc.load_masks, SHAPES), (pq.load_quant_params, QP),
                                           (pq.load_calibration, "purecompress.calibration")])
def test_a_header_that_is_not_json_names_the_file(tmp_path: Path, load: object, key: str) -> None:
    path = tmp_path / "notjson.safetensors"
    save_file({"x": torch.ones(1)}, os.fspath(path), metadata={key: "{not json"})
    with pytest.raises(pc.FileFormatError, match="notjson.safetensors.*is not JSON"):
        load(path)  # type: ignore[operator]


def test_file_format_error_is_a_value_error_and_a_missing_file_is_not_one(tmp_path: Path) -> None:
    assert issubclass(pc.FileFormatError, ValueError) and pq.FileFormatError is pc.FileFormatError
    with pytest.raises(FileNotFoundError):
        pc.load_masks(tmp_path / "absent.safetensors")


def test_a_calibration_header_that_is_not_a_layer_mapping_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "cal.safetensors"
    save_file({"x": torch.ones(1)}, os.fspath(path), metadata={"purecompress.calibration": json.dumps({"fc": 8})})
    with pytest.raises(pc.FileFormatError, match="cal.safetensors.*not a \\{layer"):
        pq.load_calibration(path)
