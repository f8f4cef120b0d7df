"""Laws for hostile numbers (issue 11): quantization of finite input gives no NaN in float16,
bfloat16, float32 and float64, and a zero range gives a finite, positive scale.

The law for malformed config lists is in ``test_malformed_configs.py``.
"""

from __future__ import annotations

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st
from torch import nn

import purecompress.quant as pq

DTYPES = [torch.float16, torch.bfloat16, torch.float32, torch.float64]
SCHEMES = ["per_tensor_affine", "per_tensor_symmetric", "per_channel_affine", "per_channel_symmetric"]


@st.composite
def _quant_cases(draw: st.DrawFn) -> tuple[torch.dtype, dict, float, str]:
    dtype = draw(st.sampled_from(DTYPES))
    bits = draw(st.integers(1, 16))
    qdtype = draw(st.sampled_from(["uint"] if bits == 1 else ["int", "uint"]))
    scheme = draw(st.sampled_from(SCHEMES))
    big = float(torch.finfo(dtype).max) / 4
    magnitude = draw(st.sampled_from([0.0, 1e-30, 1e-3, 1.0, 1e4, big]))
    kind = draw(st.sampled_from(["qat", "lsq", "dorefa", "bnn", "naive", "observer"]))
    return dtype, {"quant_bits": bits, "quant_dtype": qdtype, "quant_scheme": scheme}, magnitude, kind


class _Tiny(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(3, 3)
        self.act = nn.ReLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.fc(x))


@given(_quant_cases(), st.integers(0, 2**16))
def test_quantization_of_finite_input_is_finite_in_every_float_dtype(case: tuple, seed: int) -> None:
    dtype, spec, magnitude, kind = case
    gen = torch.Generator().manual_seed(seed)
    model = _Tiny().to(dtype)
    with torch.no_grad():
        model.fc.weight.copy_((torch.randn(3, 3, generator=gen) * min(magnitude, 1.0)).to(dtype))
        model.fc.bias.zero_()
    x = (torch.randn(4, 3, generator=gen) * magnitude).to(dtype)
    if kind == "qat":
        cfg = [{"quant_types": ["weight", "input"], "op_types": ["Linear"], **spec},
               {"quant_types": ["input", "output"], "op_types": ["ReLU"], **spec}]
    else:
        bits = 8 if kind in ("naive", "observer") else max(spec["quant_bits"], 2)
        types = {"naive": ["weight"], "dorefa": ["weight"], "bnn": ["weight", "output"]}.get(
            kind, ["weight", "input", "output"])
        cfg = [{"quant_types": types, "quant_bits": bits, "op_types": ["Linear"]}]
    q = getattr(pq, kind)(model, cfg)
    params = dict(model.named_parameters())
    state = q.init(params)
    if kind == "lsq":
        params = params | pq.lsq_scales(q, model, params, x)
    out, state = q(model, params, state, x)
    if kind == "observer":
        out, state = q(model, params, state, x, training=False)
    assert out.dtype == dtype
    reference = model(x)
    if bool(torch.isfinite(reference).all()):
        assert bool(torch.isfinite(out).all()), (kind, spec, magnitude)
    for key, tensor_state in state.tensors.items():
        if tensor_state.qparams is not None:
            scale = tensor_state.qparams.scale
            assert bool(torch.isfinite(scale).all() and (scale > 0).all()), key


@pytest.mark.parametrize("dtype", DTYPES)
def test_quant_params_of_a_zero_range_are_finite_and_positive_for_every_scheme_and_width(dtype: torch.dtype) -> None:
    for scheme in SCHEMES:
        for bits in range(1, 32):
            for qdtype in ("uint",) if bits == 1 else ("int", "uint"):
                zero = torch.zeros(3 if "channel" in scheme else (), dtype=dtype)
                qp = pq.quant_params(zero, zero, bits=bits, dtype=qdtype, scheme=scheme)
                assert bool(torch.isfinite(qp.scale).all() and (qp.scale > 0).all())
                assert not bool(torch.isnan(pq.fake_quantize(zero, qp)).any())
