"""Straight-through fake quantization: gradients, NNI parity, torch.func.vmap / grad, torch.compile."""

from __future__ import annotations

import contextlib
import math

import pytest
import torch
from torch.func import grad, vmap

from purecompress.quant import (
    QuantParams,
    binarize,
    current_range,
    fake_quantize,
    fake_quantize_clipped,
    fake_quantize_ste,
    hostmath,
    lsq_fake_quantize,
    lsq_init_scale,
    quant_params,
)

QP = QuantParams(torch.tensor(0.5), torch.tensor(2.0), 0, 7)
X = torch.tensor([-2.0, -1.2, -0.9, 0.0, 0.7, 2.4, 2.6, 9.0])


def _grad(fn, x: torch.Tensor) -> torch.Tensor:
    x = x.clone().requires_grad_()
    fn(x).sum().backward()
    return x.grad


def test_plain_ste_is_identity_gradient() -> None:
    assert torch.equal(fake_quantize_ste(X, QP), fake_quantize(X, QP))
    assert torch.equal(_grad(lambda x: fake_quantize_ste(x, QP), X), torch.ones_like(X))


def test_clipped_ste_zero_where_code_out_of_range() -> None:
    g = _grad(lambda x: fake_quantize_ste(x, QP, clip=True), X)
    code = torch.round(X / 0.5 + 2.0)
    assert torch.equal(g, ((code >= 0) & (code <= 7)).float())
    assert g.tolist() == [0, 1, 1, 1, 1, 1, 1, 0]


def test_clipped_ste_matches_nni_qatgrad() -> None:
    pytest.importorskip("nni", reason="NNI 2.10.1 is the oracle")
    from nni.algorithms.compression.pytorch.quantization.qat_quantizer import QATGrad

    x = torch.randn(4, 3, 3, 3, generator=torch.Generator().manual_seed(1)) * 3
    qp = quant_params(torch.tensor(-1.0), torch.tensor(2.0), bits=4, dtype="int")
    ours = _grad(lambda t: fake_quantize_ste(t, qp, clip=True), x)
    nni = QATGrad.quant_backward(x, torch.ones_like(x), "weight", qp.scale, qp.zero_point, qp.qmin, qp.qmax)
    assert torch.equal(ours, nni)


def test_per_channel_ste() -> None:
    qp = QuantParams(torch.tensor([0.5, 1.0]), torch.tensor([0.0, 0.0]), -2, 2, axis=0)
    x = torch.tensor([[0.9, 1.4], [1.4, 2.6]])
    assert fake_quantize_ste(x, qp).tolist() == [[1.0, 1.0], [1.0, 2.0]]
    assert _grad(lambda t: fake_quantize_ste(t, qp, clip=True), x).tolist() == [[1, 0], [1, 0]]


def _node(out: torch.Tensor) -> str:
    return type(out.grad_fn).__name__


@pytest.mark.parametrize("scheme", ["per_tensor_affine", "per_channel_symmetric"])
def test_clipped_ste_all_codes_in_range_passes_the_gradient_through(scheme: str) -> None:
    """A tensor quantized with its own range: every code is in range, so the eager clipped STE
    skips the mask (identity backward); values and gradient are those of the masked form."""
    x = torch.randn(16, 8, generator=torch.Generator().manual_seed(4))
    r = current_range(x, axis=0 if scheme.startswith("per_channel") else None)
    qp = quant_params(r.min, r.max, bits=8, dtype="int", scheme=scheme)
    y = x.clone().requires_grad_()
    out = fake_quantize_ste(y, qp, clip=True)
    assert _node(out) == "_FakeQuantInRangeBackward"
    assert torch.equal(out, fake_quantize(x, qp))
    g = torch.randn(16, 8, generator=torch.Generator().manual_seed(5))
    out.backward(g)
    assert torch.equal(y.grad, g)
    z = x.clone().requires_grad_()
    same = fake_quantize_clipped(z, qp, (r.min, r.max))
    assert _node(same) == "_FakeQuantInRangeBackward" and torch.equal(same, out)


def test_clipped_ste_in_range_check_is_exact_at_the_boundary() -> None:
    """Codes round half to even: 2.5 -> 2 stays in [-2, 2] (no mask needed), the next float up
    rounds to 3 and is clipped (gradient 0 there, and only there)."""
    qp = QuantParams(torch.tensor(1.0), torch.tensor(0.0), -2, 2)
    x = torch.tensor([0.0, 2.5, -2.5], requires_grad=True)
    out = fake_quantize_ste(x, qp, clip=True)
    assert _node(out) == "_FakeQuantInRangeBackward"
    out.sum().backward()
    assert x.grad.tolist() == [1, 1, 1]
    above = torch.nextafter(torch.tensor(2.5), torch.tensor(3.0)).item()
    x = torch.tensor([0.0, above], requires_grad=True)
    out = fake_quantize_ste(x, qp, clip=True)
    assert _node(out) == "_FakeQuantClippedLeanBackward"
    out.sum().backward()
    assert out.tolist() == [0, 2] and x.grad.tolist() == [1, 0]


def test_clipped_ste_in_range_check_rounds_like_float32() -> None:
    """x / s is 2.50000012 in double but exactly 2.5 in float32, whose code 2 is in range: both
    the host arithmetic and the tensor ops must say in range (double arithmetic would say 3)."""
    qp = QuantParams(torch.tensor(0.7603748440742493), torch.tensor(0.0), -2, 2)
    x = torch.tensor([0.0, 1.9009371995925903], requires_grad=True)
    assert torch.round(x.detach() / qp.scale)[1] == 2
    for host in (True, False):
        with contextlib.nullcontext() if host else hostmath.disabled():
            out = fake_quantize_ste(x, qp, clip=True)
        assert _node(out) == "_FakeQuantInRangeBackward"


def test_clipped_ste_zero_dim_input_with_float64_qparams() -> None:
    """A 0-d float32 x divided by a float64 scale is computed in float64 (2.50000012 -> code 3,
    clipped); in float32 it would be 2.5 (code 2): the gradient follows the codes actually used."""
    qp = QuantParams(torch.tensor(0.7603748440742493, dtype=torch.float64), torch.tensor(0.0, dtype=torch.float64),
                     -2, 2)
    x = torch.tensor(1.9009371995925903, requires_grad=True)
    out = fake_quantize_ste(x, qp, clip=True)
    out.backward()
    assert out.dtype == torch.float64 and out.item() == 2 * 0.7603748440742493
    assert x.grad.item() == 0.0


def test_clipped_ste_per_channel_activation_out_of_range_in_one_channel() -> None:
    qp = QuantParams(torch.tensor([1.0, 0.5]), torch.tensor([0.0, 0.0]), -2, 2, axis=1)
    x = torch.tensor([[1.0, 0.9], [-1.0, 1.3]], requires_grad=True)  # 1.3 / 0.5 -> code 3
    out = fake_quantize_ste(x, qp, clip=True)
    assert _node(out) == "_FakeQuantClippedLeanBackward"
    out.sum().backward()
    assert x.grad.tolist() == [[1, 1], [1, 0]]


def test_clipped_ste_nan_and_inf_get_zero_gradient() -> None:
    x = torch.tensor([float("nan"), 1.0, float("inf")], requires_grad=True)
    out = fake_quantize_ste(x, QP, clip=True)
    out.sum().backward()
    assert x.grad.tolist() == [0, 1, 0]
    assert out.isnan()[0] and out[2] == 2.5


def test_clipped_ste_off_cpu_reads_nothing_on_the_host() -> None:
    """Meta tensors have no values (and on a GPU a host read would wait for the device): the range
    test is skipped and the masked path runs."""
    qp = QuantParams(torch.tensor(0.5, device="meta"), torch.tensor(0.0, device="meta"), -2, 2)
    x = torch.randn(4, 4, device="meta", requires_grad=True)
    out = fake_quantize_ste(x, qp, clip=True)
    assert _node(out) == "_FakeQuantClippedLeanBackward"
    out.sum().backward()
    assert out.device.type == "meta" and x.grad.shape == (4, 4)


def test_clipped_ste_without_autograd_gives_the_same_values() -> None:
    with torch.no_grad():
        assert torch.equal(fake_quantize_ste(X.clone().requires_grad_(), QP, clip=True), fake_quantize(X, QP))
    assert torch.equal(fake_quantize_ste(X, QP, clip=True), fake_quantize(X, QP))


def test_binarize() -> None:
    x = torch.tensor([-3.0, -0.5, 0.0, -0.0, 0.5, 3.0])
    assert binarize(x).tolist() == [-1, -1, 1, 1, 1, 1]
    assert torch.equal(_grad(binarize, x), torch.ones_like(x))
    assert _grad(lambda t: binarize(t, clip=True), x).tolist() == [0, 1, 1, 1, 1, 0]


def _lsq_reference(x: torch.Tensor, s: torch.Tensor, qmin: int, qmax: int) -> torch.Tensor:
    """LSQ as composed differentiable ops (the paper's formulation)."""
    g = 1.0 / math.sqrt(qmax * x.numel())
    s = (s - s * g).detach() + s * g
    v = torch.clamp(x / s, qmin, qmax)
    v = (torch.round(v) - v).detach() + v
    return v * s


def test_lsq_gradients_match_reference() -> None:
    x = torch.randn(5, 6, generator=torch.Generator().manual_seed(2)) * 2
    s0 = lsq_init_scale(x, 7)
    torch.testing.assert_close(s0, x.abs().mean() * 2 / math.sqrt(7))
    outs = []
    for fn in (lsq_fake_quantize, _lsq_reference):
        xx, s = x.clone().requires_grad_(), s0.clone().requires_grad_()
        out = fn(xx, s, -8, 7)
        (out * torch.arange(30.0).view(5, 6)).sum().backward()
        outs.append((out.detach(), xx.grad, s.grad))
    for a, b in zip(*outs):
        torch.testing.assert_close(a, b)
    assert lsq_init_scale(torch.zeros(3), 7) > 0


def _all_fns() -> dict[str, object]:
    qp_t = QuantParams(torch.tensor(0.25), torch.tensor(0.0), -7, 7)
    return {
        "ste": lambda x: fake_quantize_ste(x, qp_t),
        "clipped": lambda x: fake_quantize_ste(x, qp_t, clip=True),
        "binarize": lambda x: binarize(x, clip=True),
        "lsq": lambda x: lsq_fake_quantize(x, torch.tensor(0.25), -8, 7),
    }


@pytest.mark.parametrize("name", ["ste", "clipped", "binarize", "lsq"])
def test_vmap_and_grad(name: str) -> None:
    fn = _all_fns()[name]
    x = torch.linspace(-3, 3, 24).view(4, 6)
    assert torch.equal(vmap(fn)(x), fn(x))
    eager = _grad(fn, x)
    per_row = vmap(grad(lambda r: fn(r).sum()))(x)
    assert torch.equal(per_row, eager)


def test_vmap_of_data_dependent_qparams() -> None:
    """Scale computed from each sample's own range inside vmap (no .item())."""
    def per_sample(x: torch.Tensor) -> torch.Tensor:
        r = current_range(x)
        return fake_quantize_ste(x, quant_params(r.min, r.max, bits=4, dtype="int"), clip=True)

    x = torch.randn(3, 10, generator=torch.Generator().manual_seed(3))
    out = vmap(per_sample)(x)
    assert torch.equal(out, torch.stack([per_sample(r) for r in x]))


def test_lsq_grad_wrt_scale_under_func_grad() -> None:
    x = torch.linspace(-2, 2, 9)
    gs = grad(lambda s: lsq_fake_quantize(x, s, -4, 3).sum())(torch.tensor(0.3))
    s = torch.tensor(0.3, requires_grad=True)
    _lsq_reference(x, s, -4, 3).sum().backward()
    torch.testing.assert_close(gs, s.grad)


def test_torch_compile() -> None:
    fns = _all_fns()

    def step(x: torch.Tensor) -> torch.Tensor:
        return sum(f(x).sum() for f in fns.values())

    x = torch.linspace(-3, 3, 12)
    compiled = torch.compile(step, backend="aot_eager", fullgraph=True)
    xe, xc = x.clone().requires_grad_(), x.clone().requires_grad_()
    step(xe).backward()
    compiled(xc).backward()
    torch.testing.assert_close(xc.grad, xe.grad)
