"""Regression tests for issue 11: hostile configs, faults and half precision (one test per report)."""

from __future__ import annotations

import logging
import random
import threading
import time
import warnings
from collections.abc import Callable

import pytest
import torch
from torch import nn

import purecompress as pc
import purecompress.quant as pq
from purecompress import compat
from purecompress.graph import ShrinkError

W8 = [{"quant_types": ["weight"], "quant_bits": 8, "op_types": ["Conv2d"]}]
P50 = [{"sparsity": 0.5, "op_types": ["Conv2d"]}]


def _net() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 6 * 6, 2))


def _state(model: nn.Module) -> tuple[list[str], list[int], list[type]]:
    return list(model.state_dict()), [id(p) for p in model.parameters()], [type(m) for m in model.modules()]


@pytest.mark.parametrize("config_list", [None, {}, "", 5, {"quant_types": ["weight"]}])
@pytest.mark.parametrize("entry", [pq.qat, pq.naive, pq.dorefa, pq.bnn, pq.lsq, pq.observer])
def test_quant_config_list_of_the_wrong_type_is_a_config_error(entry: object, config_list: object) -> None:
    with pytest.raises(pc.ConfigError, match="must be a list of dicts"):
        entry(_net(), config_list)  # type: ignore[operator]


def test_compat_quantizer_with_a_non_list_config_is_a_config_error() -> None:
    with pytest.raises(pc.ConfigError, match="must be a list of dicts"):
        compat.NaiveQuantizer(_net(), 5)  # type: ignore[arg-type]


def test_pruner_with_a_model_and_no_config_list_is_a_config_error() -> None:
    with pytest.raises(pc.ConfigError, match="without a config_list"):
        compat.L1NormPruner(_net(), None)


@pytest.mark.parametrize("cfg", [
    {"quant_bits": 1, "quant_dtype": "int"},
    {"quant_bits": 1, "quant_dtype": "int", "quant_scheme": "per_channel_symmetric"},
    {"quant_start_step": 10**20},
])
def test_qat_configs_that_cannot_run_are_config_errors(cfg: dict) -> None:
    with pytest.raises(pc.ConfigError):
        pq.qat(_net(), [W8[0] | cfg])


def test_one_bit_lsq_is_a_config_error() -> None:
    cfg = [W8[0] | {"quant_bits": 1}]
    with pytest.raises(pc.ConfigError, match=">= 2"):
        pq.lsq(_net(), cfg)
    model = _net()
    with pytest.raises(pc.ConfigError, match=">= 2"):
        compat.LsqQuantizer(model, cfg, torch.optim.SGD(model.parameters(), 0.1))


@pytest.mark.parametrize("name", ["QAT_Quantizer", "LsqQuantizer", "BNNQuantizer", "DoReFaQuantizer",
                                  "ObserverQuantizer", "NaiveQuantizer"])
def test_weight_quantization_of_a_module_without_weight_is_a_config_error(name: str) -> None:
    model = _net()
    before = _state(model)
    args = (torch.optim.SGD(model.parameters(), 0.1),) if name not in ("ObserverQuantizer", "NaiveQuantizer") else ()
    model.eval()
    with pytest.raises(pc.ConfigError, match="no weight to quantize"):
        getattr(compat, name)(model, [{"quant_types": ["weight"], "quant_bits": 8, "op_types": ["ReLU"]}], *args)
    assert _state(model) == before


def test_level_pruner_on_relu_fails_at_construction_with_a_config_error() -> None:
    with pytest.raises(pc.ConfigError, match="no weight to prune"):
        compat.LevelPruner(_net(), [{"op_types": ["ReLU"], "sparsity": 0.5}])


def test_global_taylor_with_two_total_sparsities_fails_at_construction() -> None:
    model = _net()
    cfg = [{"total_sparsity": 0.5, "op_types": ["Conv2d"]}, {"total_sparsity": 0.3, "op_types": ["Linear"]}]
    with pytest.raises(pc.ConfigError, match="one value"):
        compat.TaylorFOWeightPruner(model, cfg, _trainer, torch.optim.SGD(model.parameters(), 0.1),
                                    nn.functional.cross_entropy, 1, mode="global")


def _trainer(model: nn.Module, optimizer: torch.optim.Optimizer, criterion: object) -> None:
    x, y = torch.randn(4, 3, 8, 8), torch.tensor([0, 1, 0, 1])
    optimizer.zero_grad()
    criterion(model(x), y).backward()  # type: ignore[operator]
    optimizer.step()


def test_select_and_prune_with_raw_dicts_say_to_parse_them() -> None:
    model = _net()
    with pytest.raises(pc.ConfigError, match="from_config_list"):
        pc.select(model, P50)  # type: ignore[arg-type]
    with pytest.raises(pc.ConfigError, match="from_config_list"):
        pc.prune(pc.params_of(model), P50, pc.l1_norm)  # type: ignore[arg-type]


@pytest.mark.parametrize("entry", [
    {"sparsity": 0.5, "op_types": {"Conv2d"}},
    {"sparsity": 0.5, "op_types": {"Conv2d": 1}},
    {"sparsity": 0.5, "op_names": frozenset(["0"])},
    {"sparsity": 0.5, "op_types": ["Conv2d"], "exclude": True},
    {"total_sparsity": 0.5, "op_types": ["Conv2d"], "max_sparsity_per_layer": {}},
])
def test_pruning_configs_looser_than_nni_are_rejected(entry: dict) -> None:
    with pytest.raises(pc.ConfigError):
        pc.from_config_list([entry])


@pytest.mark.parametrize("extra", [{"quant_start_step": 5}, {"quant_scheme": "per_channel_affine"},
                                   {"quant_dtype": "int"}])
@pytest.mark.parametrize("entry", [pq.naive, pq.dorefa, pq.bnn, pq.lsq, pq.observer])
def test_quant_keys_an_algorithm_ignores_are_rejected(entry: object, extra: dict) -> None:
    with pytest.raises(pc.ConfigError, match="would be ignored"):
        entry(_net(), [W8[0] | extra])  # type: ignore[operator]


def test_quant_exclude_beside_quant_keys_is_rejected() -> None:
    with pytest.raises(pc.ConfigError, match="would be ignored"):
        pq.qat(_net(), [W8[0] | {"exclude": True}])


# ----- faults: nothing half-done ------------------------------------------------------------------

def test_failed_pruner_construction_leaves_the_model_as_it_was() -> None:
    model = _net()
    before = _state(model)
    with pytest.raises(ValueError, match="dummy_input"):
        compat.L1NormPruner(model, P50, mode="dependency_aware")
    assert _state(model) == before
    compat.L1NormPruner(model, P50).compress()  # the retry works


def test_ctrl_c_during_pruner_construction_leaves_the_model_as_it_was(monkeypatch: pytest.MonkeyPatch) -> None:
    model = _net()
    before = _state(model)

    def interrupted(self: object) -> None:
        raise KeyboardInterrupt

    monkeypatch.setattr(compat.L1NormPruner, "reset_tools", interrupted)
    with pytest.raises(KeyboardInterrupt):
        compat.L1NormPruner(model, P50)
    assert _state(model) == before


def test_ctrl_c_during_quantizer_construction_leaves_the_model_as_it_was(monkeypatch: pytest.MonkeyPatch) -> None:
    model = _net()
    before = _state(model)

    def interrupted(self: object) -> None:
        raise KeyboardInterrupt

    monkeypatch.setattr(compat.NaiveQuantizer, "_wrap_model", interrupted)
    with pytest.raises(KeyboardInterrupt):
        compat.NaiveQuantizer(model, W8)
    assert _state(model) == before


def test_pruners_constructed_from_two_threads_give_a_clear_error() -> None:
    model, errors = _net(), []

    def construct() -> None:
        try:
            compat.L1NormPruner(model, P50)
        except ValueError as err:
            errors.append(str(err))

    threads = [threading.Thread(target=construct) for _ in range(4)]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    assert len(errors) == 3 and all("already wrapped" in e for e in errors), errors


def _failing_trainer(model: nn.Module, optimizer: torch.optim.Optimizer, criterion: object) -> None:
    _trainer(model, optimizer, criterion)
    raise KeyboardInterrupt


def test_taylor_gradient_hooks_are_removed_when_the_trainer_raises() -> None:
    model = _net()
    pruner = compat.TaylorFOWeightPruner(model, P50, _failing_trainer, torch.optim.SGD(model.parameters(), 0.1),
                                         nn.functional.cross_entropy, 2)
    with pytest.raises(KeyboardInterrupt):
        pruner.compress()
    pruner._unwrap_model()
    assert not model[0].weight._backward_hooks


# ----- numbers ----------------------------------------------------------------------------------

@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float64])
def test_quant_params_work_in_half_precision_and_float64(dtype: torch.dtype) -> None:
    qp = pq.quant_params(torch.tensor(-1.0, dtype=dtype), torch.tensor(2.0, dtype=dtype))
    assert bool(torch.isfinite(qp.scale) and qp.scale > 0)
    model = _net().to(dtype)
    q = pq.qat(model, [{"quant_types": ["weight", "input", "output"], "quant_bits": 8, "op_types": ["Conv2d"]}])
    params = dict(model.named_parameters())
    out, _ = q(model, params, q.init(params), torch.randn(2, 3, 8, 8, dtype=dtype))
    assert out.dtype == dtype and bool(torch.isfinite(out).all())


def test_qat_input_quantization_on_an_empty_batch_passes_it_through() -> None:
    model = _net()
    q = pq.qat(model, [{"quant_types": ["input"], "quant_bits": 8, "op_types": ["Conv2d"]}])
    params = dict(model.named_parameters())
    out, state = q(model, params, q.init(params), torch.randn(0, 3, 8, 8))
    assert out.shape == (0, 2) and "0.input" not in state.tensors


def test_fpgm_on_weights_near_the_dtype_max_has_no_nan() -> None:
    weight = torch.full((4, 3, 3, 3), 3e38) * torch.tensor([1.0, -1.0, 0.5, 0.25]).view(4, 1, 1, 1)
    score = pc.fpgm({"w": weight}, ["w"])["w"].score
    assert not bool(torch.isnan(score).any())


def test_l1_norm_of_an_integer_weight_is_a_clear_error() -> None:
    with pytest.raises(TypeError, match="floating-point"):
        pc.l1_norm({"w": torch.ones(4, 3, dtype=torch.int64)}, ["w"])


def test_quant_params_refuse_a_range_of_one_code() -> None:
    with pytest.raises(ValueError, match="fewer than two codes"):
        pq.quant_params(torch.tensor(0.0), torch.tensor(0.0), qrange=(0, 0))


def _shrinkable() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.ReLU(), nn.Conv2d(4, 2, 1))


SHRINK_X = torch.randn(2, 3, 8, 8)
_KEEP4 = torch.tensor([True, False, True, True]).reshape(4, 1, 1, 1)


@pytest.mark.parametrize(("masks", "match"), [
    ({"9.weight": pc.Mask.dense((4, 3, 3, 3))}, "not parameters or buffers of the model: \\['9.weight'\\]"),
    ({"0.weight": pc.Mask(_KEEP4, (4, 3, 1, 1))}, "'0.weight'.*does not fit the parameter's shape \\(4, 3, 3, 3\\)"),
    ({"0.weight": pc.Mask(_KEEP4.reshape(4, 1), (4, 3, 3, 3))}, "'0.weight'.*does not fit"),
    ({"0.weight": pc.Mask(torch.ones(3, 1, 1, 1, dtype=torch.bool), (4, 3, 3, 3))}, "'0.weight'.*does not fit"),
    ({"0.weight": pc.Mask(_KEEP4.float() * 0.5, (4, 3, 3, 3))}, "'0.weight' must hold bools"),
    ({"0.weight": torch.ones(4, 3, 3, 3)}, "'0.weight' is a Tensor, not a purecompress Mask"),
])
def test_shrink_checks_the_masks_against_the_model_first(masks: dict, match: str) -> None:
    model = _shrinkable()
    with pytest.raises(ShrinkError, match=match):
        pc.shrink(model, masks, SHRINK_X)
    with pytest.raises(ShrinkError, match="'0.weight' has shape"):
        pc.shrink(model, {}, SHRINK_X, params={"0.weight": torch.ones(4, 3, 1, 1)})


def _dense(value: float, shape: tuple[int, ...] = (4, 3, 3, 3)) -> torch.Tensor:
    out = torch.ones(shape)
    out[1] = value
    return out


@pytest.mark.parametrize(("masks", "error", "match"), [
    ({"9": {"weight": torch.ones(4, 3, 3, 3)}}, ShrinkError, "\\['9.weight'\\]"),
    ({"0": {"weight": torch.ones(4, 3, 1, 1)}}, ShrinkError, "'0.weight'.*does not fit"),
    ({"0": {"weight": torch.ones(4, 3, 3, 3), "bias": torch.ones(3)}}, ShrinkError, "'0.bias'.*does not fit"),
    ({"0": {"weight": _dense(0.5)}}, ValueError, "'0.weight' holds values other than 0 and 1"),
    ({"0": {"weight": _dense(float("nan"))}}, ValueError, "'0.weight' holds values other than 0 and 1"),
    ({"0": {"weight": "x"}}, ValueError, "'0.weight' must be a tensor or None"),
    ({"0": torch.ones(4, 3, 3, 3)}, ValueError, "module '0' must be a"),
])
def test_model_speedup_checks_the_masks_against_the_model_first(masks: dict, error: type, match: str) -> None:
    model = _shrinkable()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(error, match=match):
        compat.ModelSpeedup(model, SHRINK_X, masks).speedup_model()
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())  # nothing half-done


def test_model_speedup_with_valid_dense_masks_still_shrinks() -> None:
    model = _shrinkable().eval()
    masks = {"0": {"weight": _dense(0.0), "bias": torch.tensor([1.0, 0.0, 1.0, 1.0])}}
    params = pc.apply_masks(pc.params_of(model), pc.masks_from_nni(masks))
    expected = torch.func.functional_call(model, params, (SHRINK_X,))
    compat.ModelSpeedup(model, SHRINK_X, masks).speedup_model()
    assert model[0].out_channels == 3
    assert torch.allclose(model(SHRINK_X), expected, atol=1e-5)


OBSERVE_ALL = [{"quant_types": ["weight", "input", "output"], "quant_bits": 8, "op_types": ["Conv2d", "Linear"]}]


@pytest.mark.parametrize("batches", [0, 1], ids=["no forward", "an empty batch"])
def test_observer_compress_before_calibration_is_fast_finite_and_says_so(batches: int,
                                                                        caplog: pytest.LogCaptureFixture) -> None:
    """NNI's behaviour (scale 1, zero point 0 for what saw no data), but fast, finite and logged:
    an empty batch used to give NaN scales after a 7 s histogram search."""
    model = _net().eval()
    quantizer = compat.ObserverQuantizer(model, OBSERVE_ALL)
    for _ in range(batches):
        model(torch.randn(0, 3, 8, 8))
    start = time.perf_counter()
    with caplog.at_level(logging.WARNING):
        quantizer.compress()
    assert time.perf_counter() - start < 0.5
    assert "no calibration batch reached 0.input, 0.output, 3.input" in caplog.text
    scales = {name: b for name, b in model.named_buffers() if name.endswith("_scale")}
    assert len(scales) == 6 and all(bool(torch.isfinite(s).all() and (s > 0).all()) for s in scales.values())
    assert float(scales["0.module.input_scale"]) == 1.0


def test_observer_weight_only_needs_no_calibration() -> None:
    model = _net().eval()
    quantizer = compat.ObserverQuantizer(model, [{"quant_types": ["weight"], "quant_bits": 8, "op_types": ["Conv2d"]}])
    quantizer.compress()
    assert bool(torch.isfinite(model[0].module.weight_scale).all() and (model[0].module.weight_scale > 0).all())


def test_observer_export_before_compress_warns(tmp_path: object) -> None:
    model = _net().eval()
    quantizer = compat.ObserverQuantizer(model, OBSERVE_ALL)
    with pytest.warns(UserWarning, match="export_model\\(\\) before compress\\(\\): nothing is calibrated"):
        assert quantizer.export_model(f"{tmp_path}/model.pth") == {}


def test_histogram_estimate_of_an_empty_histogram_is_a_fast_clear_error() -> None:
    empty = pq.histogram_range(None, torch.empty(0))
    assert empty.empty and not pq.histogram_range(empty, torch.ones(3)).empty
    start = time.perf_counter()
    with pytest.raises(ValueError, match="observed no values"):
        pq.histogram_estimate(empty)
    assert time.perf_counter() - start < 0.5


# Found by properties/test_malformed_configs.py: the scheduler pruners and their task generators.

_SCHEDULERS: dict[str, Callable[[nn.Module, object, str], object]] = {
    "LinearPruner": lambda m, c, log: compat.LinearPruner(m, c, "level", 2, log_dir=log),
    "AGPPruner": lambda m, c, log: compat.AGPPruner(m, c, "l1", 2, log_dir=log),
    "LotteryTicketPruner": lambda m, c, log: compat.LotteryTicketPruner(m, c, "level", 2, log_dir=log),
    "SimulatedAnnealingPruner": lambda m, c, log: compat.SimulatedAnnealingPruner(m, c, lambda _: 0.0, log_dir=log),
    "AMCPruner": lambda m, c, log: compat.AMCPruner(2, m, c, torch.randn(2, 3, 8, 8), lambda _: 0.0, log_dir=log),
}


@pytest.mark.parametrize("config_list", [0.99, 32, [[]], [{"sparsity": 0.5, "op_types": {"Conv2d"}}],
                                         [{"quant_types": ["output"], "quant_bits": 2}]])
@pytest.mark.parametrize("name", list(_SCHEDULERS))
def test_scheduler_pruners_reject_malformed_config_lists_with_a_config_error(
        name: str, config_list: object, tmp_path: object) -> None:
    # were TypeError ('float' object is not iterable), AttributeError ('Sequential' object has no
    # attribute 'weight') or a JSON TypeError (set) after files were written
    with pytest.raises(pc.ConfigError):
        _SCHEDULERS[name](_net(), config_list, str(tmp_path))


# the first group's layers all go to the second config, leaving the first with none
EMPTY_GROUP = [{"total_sparsity": 0.5, "op_types": ["Conv2d", "Linear"]},
               {"sparsity": 0.3, "op_names": ["3"], "op_partial_names": ["0"]}]


@pytest.mark.parametrize("name", ["LinearPruner", "AGPPruner", "LotteryTicketPruner", "SimulatedAnnealingPruner"])
def test_scheduler_pruners_accept_a_config_group_left_without_layers(name: str, tmp_path: object) -> None:
    _SCHEDULERS[name](_net(), EMPTY_GROUP, str(tmp_path))  # were ZeroDivisionError / RuntimeError


def test_compute_sparsity_of_a_group_without_layers_is_zero() -> None:
    model = _net()
    config = [{"op_types": ["BatchNorm2d"], "total_sparsity": 0.5}]  # the net has none
    assert compat.compute_sparsity_compact2origin(model, model, config)[0]["total_sparsity"] == 0.0
    assert compat.compute_sparsity_mask2compact(model, {}, config)[0]["total_sparsity"] == 0.0


def test_simulated_annealing_counts_layers_selected_by_partial_names(tmp_path: object) -> None:
    # op_partial_names selected '0' as well: its size was missing ('KeyError: 0')
    pruner = compat.SimulatedAnnealingPruner(_net(), [{"sparsity": 0.3, "op_names": ["3"], "op_partial_names": ["0"]}],
                                             lambda _: 0.0, log_dir=str(tmp_path))
    assert sorted(pruner.task_generator.weights_numel) == ["0", "3"]


@pytest.mark.parametrize("config_list", [[], [{"exclude": True, "op_names": ["3"]}]])
def test_amc_without_a_layer_to_prune_is_a_config_error(config_list: list, tmp_path: object) -> None:
    with pytest.raises(pc.ConfigError, match="AMC needs a config that selects layers"):  # was IndexError
        _SCHEDULERS["AMCPruner"](_net(), config_list, str(tmp_path))


def test_annealing_on_a_tiny_layer_falls_back_to_a_fresh_draw() -> None:
    # a 4-weight layer at total 0.163: small perturbations of its sparsity never prune a whole
    # weight, which raised "no per-layer sparsities reach total" (NNI loops forever)
    from purecompress.search.annealing import Annealer

    annealer = Annealer([{"0": 4}], (1 - 0.7 ** 0.5,), start_temperature=100, stop_temperature=1)
    rng = random.Random(0)
    state = annealer.init(rng)
    while not state.done:
        state = annealer.tell(state, rng.random(), rng)
        assert 0 <= state.candidate[0][0] < 1
