"""Laws of fake quantization (Hypothesis). One law per test; found counterexamples stay as examples."""

from __future__ import annotations

import hypothesis.strategies as st
import torch
from hypothesis import example, given, settings

from purecompress.quant import (
    SCHEMES,
    Range,
    current_range,
    ema_range,
    fake_quantize,
    fake_quantize_ste,
    hostmath,
    quant_params,
    quantize,
)
from purecompress.quant.ste import _codes_in_range

FAST = settings(max_examples=60, deadline=None)
finite = st.floats(min_value=-1e6, max_value=1e6, allow_nan=False, allow_infinity=False, width=32)
any_finite = st.floats(allow_nan=False, allow_infinity=False, width=32)


@st.composite
def tensors(draw: st.DrawFn, elements: st.SearchStrategy[float] = finite) -> torch.Tensor:
    rows = draw(st.integers(1, 4))
    cols = draw(st.integers(1, 5))
    values = draw(st.lists(elements, min_size=rows * cols, max_size=rows * cols))
    return torch.tensor(values, dtype=torch.float32).view(rows, cols)


bits = st.integers(2, 8)
dtypes = st.sampled_from(["int", "uint"])
schemes = st.sampled_from(SCHEMES)


def _qp(x: torch.Tensor, b: int, dtype: str, scheme: str):  # noqa: ANN202
    axis = 0 if scheme.startswith("per_channel") else None
    r = current_range(x, axis=axis)
    return quant_params(r.min, r.max, bits=b, dtype=dtype, scheme=scheme)


@FAST
@given(tensors(), bits, dtypes, schemes)
def test_fake_quantize_is_idempotent(x: torch.Tensor, b: int, dtype: str, scheme: str) -> None:
    qp = _qp(x, b, dtype, scheme)
    once = fake_quantize(x, qp)
    assert torch.equal(quantize(once, qp), quantize(x, qp))
    torch.testing.assert_close(fake_quantize(once, qp), once, rtol=1e-6, atol=0)


@FAST
@given(tensors(), bits, dtypes, schemes)
def test_error_at_most_half_a_step_inside_the_range(x: torch.Tensor, b: int, dtype: str, scheme: str) -> None:
    qp = _qp(x, b, dtype, scheme)
    scale, zp = qp.broadcast(x.dim())
    lo, hi = scale * (qp.qmin - zp), scale * (qp.qmax - zp)
    inside = (x >= lo) & (x <= hi)
    err = (fake_quantize(x, qp) - x).abs()
    bound = (scale / 2) * (1 + 1e-4) + 1e-6 * x.abs()
    assert bool((err <= bound)[inside].all())


@FAST
@given(tensors(), bits, dtypes, schemes)
@example(torch.zeros(2, 3), 8, "uint", "per_tensor_affine")
def test_zero_is_exactly_representable(x: torch.Tensor, b: int, dtype: str, scheme: str) -> None:
    qp = _qp(x, b, dtype, scheme)
    zeros = torch.zeros_like(x)
    assert torch.equal(fake_quantize(zeros, qp), zeros)


@FAST
@given(tensors(any_finite), bits, dtypes, schemes)
@example(torch.zeros(3, 3), 8, "uint", "per_tensor_affine")
@example(torch.full((2, 2), 7.5), 8, "int", "per_channel_symmetric")
@example(torch.tensor([[3.4e38, -3.4e38]]), 8, "uint", "per_tensor_affine")
def test_scale_finite_and_positive(x: torch.Tensor, b: int, dtype: str, scheme: str) -> None:
    qp = _qp(x, b, dtype, scheme)
    assert bool(torch.isfinite(qp.scale).all()) and bool((qp.scale > 0).all())
    assert bool(((qp.zero_point >= qp.qmin) & (qp.zero_point <= qp.qmax)).all())


@FAST
@given(tensors(), bits, dtypes, schemes, st.floats(0.1, 3.0))
def test_clipped_ste_gradient_zero_exactly_where_values_clip(x: torch.Tensor, b: int, dtype: str, scheme: str,
                                                            stretch: float) -> None:
    qp = _qp(x, b, dtype, scheme)
    y = (x * stretch).requires_grad_()
    out = fake_quantize_ste(y, qp, clip=True)
    out.sum().backward()
    assert torch.equal(out, fake_quantize(y.detach(), qp))
    scale, zp = qp.broadcast(x.dim())
    code = torch.round(y.detach() / scale + zp)
    clipped = (code < qp.qmin) | (code > qp.qmax)
    assert torch.equal(y.grad == 0, clipped)


@FAST
@given(tensors(), bits, dtypes, st.sampled_from(["affine", "symmetric"]))
def test_per_channel_equals_per_tensor_on_each_slice(x: torch.Tensor, b: int, dtype: str, kind: str) -> None:
    per_channel = fake_quantize(x, _qp(x, b, dtype, f"per_channel_{kind}"))
    for c in range(x.shape[0]):
        row = x[c]
        assert torch.equal(per_channel[c], fake_quantize(row, _qp(row, b, dtype, f"per_tensor_{kind}")))


# --- Host scalar math (eager per-tensor fast path) equals the tensor ops bit for bit ----------------

scalar_dtypes = st.sampled_from([torch.float32, torch.float64])
tensor_schemes = st.sampled_from(["per_tensor_affine", "per_tensor_symmetric"])
edge = st.sampled_from([0.0, -0.0, 1e-45, -1e-45, 1.17549435e-38, 3.4028235e38, -3.4028235e38, 0.5, -0.5])
any_value = st.one_of(any_finite, edge, st.floats(-300.0, 300.0, width=32))


def _both(fn):  # noqa: ANN001, ANN202
    fast = fn()
    with hostmath.disabled():
        slow = fn()
    return fast, slow


@FAST
@given(any_value, any_value, bits, dtypes, tensor_schemes, scalar_dtypes)
@example(0.0, 0.0, 8, "uint", "per_tensor_affine", torch.float32)
@example(-3.4028235e38, 3.4028235e38, 8, "uint", "per_tensor_affine", torch.float32)
@example(-1e-45, 1e-45, 2, "int", "per_tensor_symmetric", torch.float32)
def test_host_qparams_equal_tensor_qparams(a: float, b: float, nbits: int, dtype: str, scheme: str,
                                           fdtype: torch.dtype) -> None:
    lo, hi = torch.tensor(min(a, b), dtype=fdtype), torch.tensor(max(a, b), dtype=fdtype)
    fast, slow = _both(lambda: quant_params(lo, hi, bits=nbits, dtype=dtype, scheme=scheme))
    assert fast.scale.dtype == slow.scale.dtype == fdtype
    assert torch.equal(fast.scale, slow.scale) and torch.equal(fast.zero_point, slow.zero_point)


@FAST
@given(any_value, any_value, any_value, any_value, scalar_dtypes, st.sampled_from([0.99, 0.9, 0.5]))
def test_host_ema_equals_tensor_ema(p0: float, p1: float, c0: float, c1: float, fdtype: torch.dtype,
                                    decay: float) -> None:
    prev = Range(torch.tensor(min(p0, p1), dtype=fdtype), torch.tensor(max(p0, p1), dtype=fdtype))
    cur = Range(torch.tensor(min(c0, c1), dtype=fdtype), torch.tensor(max(c0, c1), dtype=fdtype))
    x = torch.stack([cur.min, cur.max])
    fast, slow = _both(lambda: ema_range(prev, x, decay=decay, first=False, current=cur))
    assert torch.equal(fast.min, slow.min) and torch.equal(fast.max, slow.max)
    assert torch.equal(fast.min, ema_range(prev, x, decay=decay, first=False).min)


@FAST
@given(tensors(any_value), bits, dtypes, tensor_schemes, st.floats(0.1, 3.0))
def test_host_in_range_test_equals_tensor_test(x: torch.Tensor, nbits: int, dtype: str, scheme: str,
                                               stretch: float) -> None:
    """The eager clipped STE picks its backward from the codes of x's ends: host and tensor
    arithmetic pick the same one, and the gradient is the mask either way."""
    qp = _qp(x, nbits, dtype, scheme)
    y = x * stretch
    lo, hi = torch.aminmax(y)
    assert _codes_in_range((lo, hi), qp) == hostmath.disabled()(_codes_in_range)((lo, hi), qp)
