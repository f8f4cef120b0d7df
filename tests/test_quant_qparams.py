"""Ranges, scales/zero points and (fake) quantization: NNI_PARITY.md vectors and NNI 2.10.1 parity."""

from __future__ import annotations

import itertools

import pytest
import torch

from purecompress.quant import (
    SCALE_EPS,
    SCHEMES,
    QuantParams,
    current_range,
    dequantize,
    fake_quantize,
    int_range,
    quant_params,
    quantize,
)

W = torch.arange(1.0, 19.0).view(2, 1, 3, 3)


def test_int_ranges() -> None:
    assert int_range(8, "int") == (-127, 127)
    assert int_range(8, "uint") == (0, 255)
    assert int_range(8, "int", narrow=False) == (-128, 127)
    assert int_range(4, "int") == (-7, 7)
    for bad in (0, 32, 8.0, True):
        with pytest.raises(ValueError, match="bits"):
            int_range(bad)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="dtype"):
        int_range(8, "float")


def _qp(x: torch.Tensor, dtype: str, scheme: str) -> QuantParams:
    r = current_range(x, axis=0 if scheme.startswith("per_channel") else None)
    return quant_params(r.min, r.max, bits=8, dtype=dtype, scheme=scheme)


def test_parity_vectors() -> None:
    qp = _qp(W, "int", "per_channel_symmetric")
    torch.testing.assert_close(qp.scale, torch.tensor([9 / 127, 18 / 127]))
    assert qp.zero_point.tolist() == [0, 0] and qp.axis == 0
    qp = _qp(W, "uint", "per_channel_symmetric")
    torch.testing.assert_close(qp.scale, torch.tensor([9 / 127.5, 18 / 127.5]))
    assert qp.zero_point.tolist() == [127, 127]
    qp = _qp(W, "int", "per_tensor_affine")
    torch.testing.assert_close(qp.scale, torch.tensor(18 / 254))
    assert qp.zero_point.item() == -127 and qp.axis is None
    qp = _qp(W, "uint", "per_tensor_affine")
    torch.testing.assert_close(qp.scale, torch.tensor(18 / 255))
    assert qp.zero_point.item() == 0
    qp = _qp(torch.tensor([[1.0, 2], [3, 5]]), "uint", "per_tensor_affine")
    torch.testing.assert_close(qp.scale, torch.tensor(5 / 255))
    assert qp.zero_point.item() == 0
    qp = _qp(torch.tensor([[-1.0, 2], [3, 5]]), "uint", "per_tensor_affine")
    torch.testing.assert_close(qp.scale, torch.tensor(6 / 255))
    assert qp.zero_point.item() == 42


def test_zero_and_constant_ranges_are_finite() -> None:
    """NNI divides by a zero scale (NaN); we floor the scale at SCALE_EPS."""
    for scheme, dtype in itertools.product(SCHEMES, ("int", "uint")):
        for x in (torch.zeros(3, 4), torch.full((3, 4), -2.5)):
            qp = _qp(x, dtype, scheme)
            assert torch.isfinite(qp.scale).all() and (qp.scale >= SCALE_EPS).all()
            out = fake_quantize(x, qp)
            assert torch.isfinite(out).all()
            torch.testing.assert_close(out, x, atol=float(qp.scale.max()), rtol=0)


def test_quantize_dequantize() -> None:
    qp = QuantParams(torch.tensor([0.5, 2.0]), torch.tensor([1.0, 0.0]), -4, 3, axis=1)
    x = torch.tensor([[1.0, 3.0], [-9.0, 100.0]])
    q = quantize(x, qp)
    assert q.tolist() == [[3.0, 2.0], [-4.0, 3.0]]
    assert dequantize(q, qp).tolist() == [[1.0, 4.0], [-2.5, 6.0]]
    assert torch.equal(fake_quantize(x, qp), dequantize(q, qp))


def test_bad_shapes() -> None:
    with pytest.raises(ValueError, match="1-D"):
        quant_params(torch.tensor(0.0), torch.tensor(1.0), scheme="per_channel_affine")
    with pytest.raises(ValueError, match="0-d"):
        quant_params(torch.zeros(2), torch.ones(2))
    with pytest.raises(ValueError, match="scheme"):
        quant_params(torch.tensor(0.0), torch.tensor(1.0), scheme="per_row")


def test_parity_with_nni() -> None:
    pytest.importorskip("nni", reason="NNI 2.10.1 is the oracle")
    from nni.algorithms.compression.pytorch.quantization.qat_quantizer import update_quantization_param
    from nni.compression.pytorch.quantization.literal import QuantDtype, QuantScheme, QuantType
    from nni.compression.pytorch.quantization.utils import calculate_qmin_qmax, get_min_max_value

    gen = torch.Generator().manual_seed(0)
    tensors = [W, torch.randn(4, 3, 3, 3, generator=gen), torch.rand(5, 7, generator=gen) + 0.1,
               -torch.rand(3, 6, generator=gen)]
    for x, scheme, dtype, bits in itertools.product(tensors, SCHEMES, ("int", "uint"), (2, 4, 8)):
        lo, hi = get_min_max_value(x, QuantType.WEIGHT, QuantScheme(scheme))
        scale, zp = update_quantization_param(bits, lo, hi, QuantDtype(dtype), QuantScheme(scheme))
        r = current_range(x, axis=0 if scheme.startswith("per_channel") else None)
        qp = quant_params(r.min, r.max, bits=bits, dtype=dtype, scheme=scheme)
        assert torch.equal(qp.scale, scale.reshape(qp.scale.shape)), (scheme, dtype, bits)
        assert torch.equal(qp.zero_point, zp.reshape(qp.zero_point.shape)), (scheme, dtype, bits)
        qmin, qmax = calculate_qmin_qmax(bits, QuantDtype(dtype))
        expected = scale * (torch.round(torch.clamp(zp + x / scale, qmin, qmax)) - zp)
        assert torch.equal(fake_quantize(x, qp), expected), (scheme, dtype, bits)
