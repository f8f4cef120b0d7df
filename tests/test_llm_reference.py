"""SparseGPT, GPTQ, RTN and Wanda on single layers against straightforward references written here.

The references do what the papers' math says with nothing clever: float64, one column at a time,
the inverse of the Hessian restricted to the not-yet-visited columns recomputed at every step,
every update applied at once (no Cholesky trick, no lazy block updates).
"""

from __future__ import annotations

import math

import pytest
import torch

import purecompress as pc
import purecompress.quant as pq
from purecompress import llm

pytestmark = pytest.mark.usefixtures("one_thread")


def _layer(out: int, cols: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """A weight and the Hessian of correlated inputs (features share a few latent factors)."""
    gen = torch.Generator().manual_seed(seed)
    latent = torch.randn(256, 4, generator=gen)
    x = latent @ torch.randn(4, cols, generator=gen) + 0.3 * torch.randn(256, cols, generator=gen)
    x = x * torch.rand(cols, generator=gen) * 3
    return torch.randn(out, cols, generator=gen), x.T @ x


def _damped(h: torch.Tensor, damp: float) -> torch.Tensor:
    h = h.double().clone()
    d = h.diagonal()
    d[d == 0] = 1.0
    d.add_(damp * float(d.mean()))
    return h


def _reference_obs(w: torch.Tensor, h: torch.Tensor, choose: object, *, damp: float = 0.01) -> torch.Tensor:
    """Eliminate columns left to right: ``choose(w, j, hinv_diag)`` gives column ``j``'s new value."""
    w = w.double().clone()
    h = _damped(h, damp)
    for j in range(w.shape[1]):
        hinv = torch.linalg.inv(h[j:, j:])
        q = choose(w, j)
        err = (w[:, j] - q) / hinv[0, 0]
        w[:, j:] -= err[:, None] * hinv[0][None, :]
        w[:, j] = q
    return w


def _hinv_diag(h: torch.Tensor, damp: float = 0.01) -> torch.Tensor:
    """``inv(H[j:, j:])[0, 0]`` for every ``j``: the OBS denominators of a left-to-right pass."""
    h = _damped(h, damp)
    return torch.stack([torch.linalg.inv(h[j:, j:])[0, 0] for j in range(h.shape[0])])


def _reference_sparsegpt(w: torch.Tensor, h: torch.Tensor, *, sparsity: float = 0.5,
                         n_m: tuple[int, int] | None = None, block: int = 128) -> tuple[torch.Tensor, torch.Tensor]:
    d = _hinv_diag(h)
    keep = torch.ones_like(w, dtype=torch.bool)

    def choose(cur: torch.Tensor, j: int) -> torch.Tensor:
        if n_m is None and j % block == 0:
            cols = slice(j, min(j + block, cur.shape[1]))
            sal = cur[:, cols] ** 2 / d[cols]
            k = cols.stop - cols.start - int(sparsity * (cols.stop - cols.start))
            for r in range(cur.shape[0]):
                ranked = sorted(range(sal.shape[1]), key=lambda c: (-float(sal[r, c]), c))
                keep[r, cols] = False
                keep[r, [cols.start + c for c in ranked[:k]]] = True
        if n_m is not None and j % n_m[1] == 0:
            cols = slice(j, j + n_m[1])
            sal = cur[:, cols] ** 2 / d[cols]
            for r in range(cur.shape[0]):
                ranked = sorted(range(n_m[1]), key=lambda c: (-float(sal[r, c]), c))
                keep[r, cols] = False
                keep[r, [j + c for c in ranked[:n_m[0]]]] = True
        return cur[:, j] * keep[:, j]

    return _reference_obs(w, h, choose), keep


@pytest.mark.parametrize("n_m", [None, (2, 4), (1, 8)])
@pytest.mark.parametrize("block", [8, 128])
def test_sparsegpt_matches_the_dense_reference(n_m: tuple[int, int] | None, block: int) -> None:
    w, h = _layer(6, 32)
    ref_w, ref_keep = _reference_sparsegpt(w, h, n_m=n_m, block=block)
    new_w, mask = llm.sparsegpt_prune(w, h, sparsity=0.5, n_m=n_m, block_size=block)
    assert torch.equal(mask.keep, ref_keep)
    torch.testing.assert_close(new_w.double(), ref_w, rtol=1e-4, atol=1e-4)
    assert torch.equal(new_w == 0, ~mask.keep | (w == 0))


def test_sparsegpt_reduces_the_layer_error_below_magnitude_and_wanda() -> None:
    w, h = _layer(16, 64, seed=1)
    err = lambda v: float(torch.trace((w - v) @ h @ (w - v).T))
    sgpt, _ = llm.sparsegpt_prune(w, h, sparsity=0.5)
    mag = pc.apply_masks({"w": w}, llm.allocate_per_row(pc.level({"w": w}, ["w"]), 0.5))["w"]
    wnd = pc.apply_masks({"w": w}, llm.allocate_per_row({"w": llm.wanda_metric(w, h.diagonal())}, 0.5))["w"]
    assert err(sgpt) < err(wnd) < err(mag)


def test_sparsegpt_does_not_modify_its_inputs() -> None:
    w, h = _layer(4, 16)
    w0, h0 = w.clone(), h.clone()
    llm.sparsegpt_prune(w, h, n_m="2:4")
    assert torch.equal(w, w0) and torch.equal(h, h0)


def _rtn_column(col: torch.Tensor, scale: torch.Tensor, zero: torch.Tensor, qmin: int, qmax: int) -> torch.Tensor:
    return scale * (torch.clamp(torch.round(col / scale + zero), qmin, qmax) - zero)


def _minmax(cols: torch.Tensor, bits: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Affine uint min/max parameters per row, range widened to hold 0 (NNI's formulas)."""
    lo, hi = cols.min(1).values.clamp(max=0), cols.max(1).values.clamp(min=0)
    scale = ((hi - lo) / (2**bits - 1)).clamp(min=pq.SCALE_EPS)
    return scale, torch.clamp(-torch.round(lo / scale), 0, 2**bits - 1)


def _reference_gptq(w: torch.Tensor, h: torch.Tensor, *, bits: int, group: int | None,
                    act_order: bool = False) -> torch.Tensor:
    g = group or w.shape[1]
    perm = torch.argsort(h.diagonal(), descending=True, stable=True) if act_order else torch.arange(w.shape[1])
    static = {k: _minmax(w[:, k * g:(k + 1) * g].double(), bits) for k in range(w.shape[1] // g)}
    params: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}

    def choose(cur: torch.Tensor, j: int) -> torch.Tensor:
        k = int(perm[j]) // g
        if act_order or group is None:
            params[k] = static[k]
        elif j % g == 0:
            params[k] = _minmax(cur[:, j:j + g], bits)
        return _rtn_column(cur[:, j], *params[k], 0, 2**bits - 1)

    out = _reference_obs(w[:, perm], h[perm][:, perm], choose)
    return out[:, torch.argsort(perm)]


@pytest.mark.parametrize(("bits", "group", "act_order"),
                         [(4, None, False), (4, 8, False), (3, 16, False), (2, 8, False), (4, None, True),
                          (3, 8, True)])
@pytest.mark.parametrize("block", [8, 128])
def test_gptq_matches_the_dense_reference(bits: int, group: int | None, act_order: bool, block: int) -> None:
    w, h = _layer(6, 32, seed=2)
    ref = _reference_gptq(w, h, bits=bits, group=group, act_order=act_order)
    new_w, qp = llm.gptq_quantize(w, h, bits=bits, group_size=group, act_order=act_order, block_size=block)
    torch.testing.assert_close(new_w.double(), ref, rtol=1e-4, atol=1e-4)
    assert qp.scale.shape == (6 * 32 // (group or 32),)


@pytest.mark.parametrize(("group", "act_order", "symmetric"),
                         [(None, False, False), (8, False, True), (8, True, False)])
def test_gptq_weights_lie_on_their_quantization_grid(group: int | None, act_order: bool, symmetric: bool) -> None:
    w, h = _layer(5, 32, seed=3)
    new_w, qp = llm.gptq_quantize(w, h, bits=3, group_size=group, act_order=act_order, symmetric=symmetric)
    torch.testing.assert_close(llm.fake_quantize_weight(new_w, qp, group), new_w, rtol=0, atol=1e-6)
    codes = pq.quantize(new_w.reshape(-1, group or 32), qp)
    assert codes.min() >= qp.qmin and codes.max() <= qp.qmax


@pytest.mark.parametrize("bits", [2, 3, 4, 8])
def test_gptq_has_less_layer_error_than_rtn(bits: int) -> None:
    w, h = _layer(16, 64, seed=4)
    err = lambda v: float(torch.trace((w - v) @ h @ (w - v).T))
    for group in (None, 16):
        assert err(llm.gptq_quantize(w, h, bits=bits, group_size=group)[0]) < err(
            llm.rtn_quantize(w, bits=bits, group_size=group)[0])


def test_gptq_with_an_identity_hessian_and_no_dampening_is_round_to_nearest() -> None:
    w, _ = _layer(4, 16, seed=5)
    for group in (None, 4):
        gptq_w, gptq_qp = llm.gptq_quantize(w, torch.eye(16), bits=3, group_size=group, damp=0.0)
        rtn_w, rtn_qp = llm.rtn_quantize(w, bits=3, group_size=group)
        torch.testing.assert_close(gptq_w, rtn_w)
        assert gptq_qp == rtn_qp


def test_the_obs_passes_are_invariant_to_positive_scaling_of_the_hessian() -> None:
    w, h = _layer(4, 16, seed=6)
    torch.testing.assert_close(llm.gptq_quantize(w, h, bits=3)[0], llm.gptq_quantize(w, 8.0 * h, bits=3)[0])
    a, b = llm.sparsegpt_prune(w, h), llm.sparsegpt_prune(w, 8.0 * h)
    torch.testing.assert_close(a[0], b[0])
    assert torch.equal(a[1].keep, b[1].keep)


def test_inverse_hessian_factor_gives_unit_diagonal_to_dead_inputs_and_rejects_bad_input() -> None:
    _, h = _layer(2, 6)
    h[2, :] = h[:, 2] = 0
    u = llm.inverse_hessian_factor(h, damp=0.01)
    damped = _damped(h, 0.01)
    torch.testing.assert_close((u.T @ u).double(), torch.linalg.inv(damped), rtol=1e-4, atol=1e-5)
    assert torch.equal(torch.triu(u), u)
    with pytest.raises(ValueError, match="raise damp"):
        llm.inverse_hessian_factor(-torch.eye(3), damp=0.0)
    with pytest.raises(ValueError, match="square"):
        llm.inverse_hessian_factor(torch.eye(3)[:2])


def test_weight_qparams_per_group_are_per_channel_qparams_of_the_grouped_view(tmp_path: object) -> None:
    w = torch.randn(4, 16)
    qp = llm.weight_qparams(w, bits=4, group_size=8)
    assert qp.axis == 0 and qp.scale.shape == (8,) and (qp.qmin, qp.qmax) == (0, 15) and qp.group_size == 8
    rows = w.reshape(-1, 8)
    plain = pq.quant_params(rows.amin(1), rows.amax(1), bits=4, scheme="per_channel_affine")
    assert torch.equal(qp.scale, plain.scale) and torch.equal(qp.zero_point, plain.zero_point)
    assert (plain.qmin, plain.qmax, plain.axis, plain.group_size) == (0, 15, 0, None)
    path = f"{tmp_path}/gptq.safetensors"
    pq.save_quant_params(path, {"fc.weight": qp})  # the group size travels in the header
    assert pq.load_quant_params(path) == {"fc.weight": qp}
    sym = llm.weight_qparams(w, bits=4, symmetric=True)
    assert (sym.qmin, sym.qmax) == (-7, 7) and bool((sym.zero_point == 0).all())
    with pytest.raises(ValueError, match="group_size"):
        llm.weight_qparams(w, group_size=5)
    with pytest.raises(ValueError, match="bits"):
        llm.weight_qparams(w, bits=1)


def test_rtn_error_is_at_most_half_a_step_and_rtn_leaves_other_params() -> None:
    w = torch.randn(8, 32)
    out, qp = llm.rtn_quantize(w, bits=4, group_size=8)
    step = qp.scale.reshape(8, 4).repeat_interleave(8, 1)
    assert bool(((out - w).abs() <= step / 2 + 1e-6).all())
    params = {"a.weight": w, "a.bias": torch.ones(8)}
    new, qps = llm.rtn(params, ["a.weight"], bits=4, group_size=8)
    assert new["a.bias"] is params["a.bias"] and list(qps) == ["a.weight"]
    assert torch.equal(new["a.weight"], out)


def test_wanda_metric_and_per_row_allocation() -> None:
    w = torch.tensor([[1.0, -3.0, 2.0, 0.5], [4.0, 1.0, -1.0, 2.0]])
    metric = llm.wanda_metric(w, torch.tensor([16.0, 1.0, 1.0, 4.0]))
    torch.testing.assert_close(metric.score, w.abs() * torch.tensor([4.0, 1.0, 1.0, 2.0]))
    keep = llm.allocate_per_row({"w": metric}, 0.5)["w"].keep
    assert keep.tolist() == [[True, True, False, False], [True, False, False, True]]
    assert keep.sum(1).tolist() == [2, 2]
    assert math.isclose(pc.Mask(keep, (2, 4)).sparsity(), 0.5)
