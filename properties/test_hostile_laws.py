"""Laws for hostile input (issue 11): every entry point accepts a config or raises ConfigError, and
quantization of finite input gives no NaN in float16, bfloat16, float32 and float64.

The config law runs 75 generated config lists per example (3000 per run in the ``ci`` profile, 22500 in ``dev``)
from a drawn seed, through the core parsers, ``select``/``prune``, every compat pruner and
quantizer and every ``purecompress.quant`` transform.
"""

from __future__ import annotations

import copy
import warnings
from collections.abc import Callable

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

import purecompress as pc
import purecompress.quant as pq
from properties.strategies import random_malformed_configs
from purecompress import compat

PER_EXAMPLE = 75  # x 40 examples (ci profile) = 3000 config lists; the dev profile (300) runs 22500


def _net() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(2, 2, 1), nn.ReLU(), nn.Flatten(), nn.Linear(8, 2))


_MODEL = _net()
_X = torch.randn(2, 2, 2, 2)
_OPT = torch.optim.SGD(_MODEL.parameters(), 0.1)


def _trainer(model: nn.Module, optimizer: torch.optim.Optimizer, criterion: Callable) -> None:
    del model, optimizer, criterion


def _pruner(cls: type, *args: object, **kwargs: object) -> Callable[[object], None]:
    def run(config_list: object) -> None:
        pruner = cls(_MODEL, config_list, *args, **kwargs)
        pruner._unwrap_model()

    return run


def _quantizer(cls: type, *args: object) -> Callable[[object], None]:
    def run(config_list: object) -> None:  # a fresh model: NNI's quantizers leave buffers behind
        model = _net()
        before = list(model.state_dict())
        try:
            cls(model, config_list, *args)._unwrap_model()
        except pc.ConfigError:
            assert list(model.state_dict()) == before, "a failed construction changed the model"
            raise

    return run


def _prune(config_list: object) -> None:
    plan = pc.select(_MODEL, pc.from_config_list(config_list))  # type: ignore[arg-type]
    pc.prune(pc.params_of(_MODEL), plan, pc.l1_norm)


_OLD = (_trainer, _OPT, nn.functional.cross_entropy, 1)
ENTRY_POINTS: dict[str, Callable[[object], object]] = {
    "from_config_list": pc.from_config_list,  # type: ignore[dict-item]
    "from_quant_config_list": pq.from_quant_config_list,  # type: ignore[dict-item]
    "select+prune": _prune,
    **{f"pq.{name}": (lambda f: lambda c: f(_MODEL, c))(getattr(pq, name))
       for name in ("qat", "naive", "dorefa", "bnn", "lsq", "observer")},
    "LevelPruner": _pruner(compat.LevelPruner),
    "L1NormPruner": _pruner(compat.L1NormPruner),
    "L2NormPruner": _pruner(compat.L2NormPruner),
    "FPGMPruner": _pruner(compat.FPGMPruner),
    "TaylorFOWeightPruner": _pruner(compat.TaylorFOWeightPruner, *_OLD),
    "TaylorFOWeightPruner-global": _pruner(compat.TaylorFOWeightPruner, *_OLD, mode="global"),
    "ActivationAPoZRankPruner": _pruner(compat.ActivationAPoZRankPruner, *_OLD),
    "ActivationMeanRankPruner": _pruner(compat.ActivationMeanRankPruner, *_OLD),
    "ADMMPruner": _pruner(compat.ADMMPruner, _trainer, _OPT, nn.functional.cross_entropy, 1, 1),
    "QAT_Quantizer": _quantizer(compat.QAT_Quantizer, _OPT),
    "NaiveQuantizer": _quantizer(compat.NaiveQuantizer),
    "DoReFaQuantizer": _quantizer(compat.DoReFaQuantizer, _OPT),
    "BNNQuantizer": _quantizer(compat.BNNQuantizer, _OPT),
    "LsqQuantizer": _quantizer(compat.LsqQuantizer, _OPT),
}


#: Entry points that build an evaluator (slower): they see every 6th config list.
_SLOW = {"TaylorFOWeightPruner", "TaylorFOWeightPruner-global", "ActivationAPoZRankPruner",
         "ActivationMeanRankPruner", "ADMMPruner"}


@settings(max_examples=40)
@given(st.integers(0, 2**32 - 1))
def test_every_entry_point_accepts_or_raises_config_error(seed: int) -> None:
    reference = copy.deepcopy(_MODEL.state_dict())
    for i, config_list in enumerate(random_malformed_configs(seed, PER_EXAMPLE)):
        snapshot = repr(config_list)
        for name, entry in ENTRY_POINTS.items():
            if name in _SLOW and i % 6:
                continue
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                try:
                    entry(config_list)
                except pc.ConfigError:
                    pass
                except Exception as err:  # noqa: BLE001 (the law: nothing but ConfigError)
                    raise AssertionError(f"{name}({config_list!r}) raised {type(err).__name__}: {err}") from err
        assert repr(config_list) == snapshot
    assert list(_MODEL.state_dict()) == list(reference)


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
