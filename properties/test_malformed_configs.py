"""The law for malformed ``config_list``s (issue 11): every entry point that takes one accepts it or
raises :class:`~purecompress.ConfigError` (compat's ``SchemaError`` is the same class), and a failed
compat construction leaves the model as it was.

Each Hypothesis example draws a seed; :func:`~properties.strategies.random_malformed_configs` turns it
into ``PER_EXAMPLE`` config lists (valid pruning and quantization entries mutated: keys dropped,
lists turned into tuples, sets, dicts or strings, values replaced by garbage, whole lists replaced
by garbage), and every list goes through every entry point: the core parsers, ``select`` and
``prune``, every compat pruner and quantizer constructor, every ``purecompress.quant`` transform.
The default ``ci`` profile runs 40 examples (1 000 lists, about 10 s on one core);
``--hypothesis-profile=hostile`` runs 400 (10 000 lists, about 100 s) from fresh seeds. The count is reported at
the end of the module and checked by :func:`test_the_profile_generates_what_it_promises`.

Every failure this law found is an explicit test in ``tests/test_hostile.py``.
"""

from __future__ import annotations

import collections
import copy
import shutil
import tempfile
import time
import warnings
from collections.abc import Callable, Iterator

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

import purecompress as pc
import purecompress.quant as pq
from properties.strategies import random_malformed_configs
from purecompress import compat

PER_EXAMPLE = 25
HOSTILE_LISTS = 10_000  # what --hypothesis-profile=hostile promises per run


def _net() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(2, 2, 1), nn.ReLU(), nn.Flatten(), nn.Linear(8, 2))


def _bn_net() -> nn.Module:  # Slim prunes BatchNorm scales
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(2, 2, 1), nn.BatchNorm2d(2), nn.ReLU(), nn.Flatten(), nn.Linear(8, 2))


_MODEL = _net()
_BN_MODEL = _bn_net()
_X = torch.randn(2, 2, 2, 2)
_OPT = torch.optim.SGD(_MODEL.parameters(), 0.1)
_BN_OPT = torch.optim.SGD(_BN_MODEL.parameters(), 0.1)
_LOG = tempfile.mkdtemp(prefix="malformed-configs-")  # the schedulers write their tasks here


def _trainer(model: nn.Module, optimizer: torch.optim.Optimizer, criterion: Callable) -> None:
    del model, optimizer, criterion


def _score(model: nn.Module) -> float:
    del model
    return 0.0


_CE = nn.functional.cross_entropy
_OLD = (_trainer, _OPT, _CE)


def _pruner(cls: type, *args: object, model: nn.Module = _MODEL, **kwargs: object) -> Callable[[object], None]:
    def run(config_list: object) -> None:
        before = list(model.state_dict())
        try:
            pruner = cls(model, config_list, *args, **kwargs)
        except pc.ConfigError:
            assert list(model.state_dict()) == before, "a failed construction changed the model"
            raise
        unwrap = getattr(pruner, "_unwrap_model", None)  # schedulers never wrap (not all have it)
        if unwrap is not None:
            unwrap()

    return run


def _quantizer(cls: type, *args: object, eval_mode: bool = False) -> Callable[[object], None]:
    def run(config_list: object) -> None:  # a fresh model: NNI's quantizers leave buffers behind
        model = _net().train(not eval_mode)
        before = list(model.state_dict())
        optimizer = (torch.optim.SGD(model.parameters(), 0.1),) if args == ("optimizer",) else ()
        try:
            quantizer = cls(model, config_list, *optimizer)
        except pc.ConfigError:
            assert list(model.state_dict()) == before, "a failed construction changed the model"
            raise
        quantizer._unwrap_model()

    return run


def _prune(distribution: str, metric: Callable) -> Callable[[object], None]:
    def run(config_list: object) -> None:
        plan = pc.select(_MODEL, pc.from_config_list(config_list))  # type: ignore[arg-type]
        pc.prune(pc.params_of(_MODEL), plan, metric, distribution=distribution)  # type: ignore[arg-type]

    return run


def _transform(name: str, **kwargs: object) -> Callable[[object], None]:
    def run(config_list: object) -> None:
        getattr(pq, name)(_MODEL, config_list, **kwargs)

    return run


_ADMM = {"trainer": _trainer, "traced_optimizer": _OPT, "criterion": _CE, "iterations": 1, "training_epochs": 1}

ENTRY_POINTS: dict[str, Callable[[object], object]] = {
    # the core
    "pc.from_config_list": pc.from_config_list,  # type: ignore[dict-item]
    "pq.from_quant_config_list": pq.from_quant_config_list,  # type: ignore[dict-item]
    "pc.select(raw)": lambda c: pc.select(_MODEL, c),  # type: ignore[arg-type]
    "pc.prune(raw)": lambda c: pc.prune(pc.params_of(_MODEL), c, pc.l1_norm),  # type: ignore[arg-type]
    "pc.prune(l1)": _prune("per_layer", pc.l1_norm),
    "pc.prune(level, global)": _prune("global", pc.level),
    **{f"pq.{name}": _transform(name) for name in ("qat", "naive", "dorefa", "bnn", "lsq", "observer")},
    "pq.observer(histogram)": _transform("observer", estimator="histogram"),
    # compat pruners
    "LevelPruner": _pruner(compat.LevelPruner),
    "LevelPruner(balance)": _pruner(compat.LevelPruner, mode="balance", balance_gran=[2]),
    "L1NormPruner": _pruner(compat.L1NormPruner),
    "L1NormPruner(dependency_aware)": _pruner(compat.L1NormPruner, mode="dependency_aware", dummy_input=_X),
    "L2NormPruner": _pruner(compat.L2NormPruner),
    "FPGMPruner": _pruner(compat.FPGMPruner),
    "SlimPruner": _pruner(compat.SlimPruner, _trainer, _BN_OPT, _CE, 1, model=_BN_MODEL),
    "SlimPruner(global)": _pruner(compat.SlimPruner, _trainer, _BN_OPT, _CE, 1, mode="global", model=_BN_MODEL),
    "TaylorFOWeightPruner": _pruner(compat.TaylorFOWeightPruner, *_OLD, 1),
    "TaylorFOWeightPruner(global)": _pruner(compat.TaylorFOWeightPruner, *_OLD, 1, mode="global"),
    "ActivationAPoZRankPruner": _pruner(compat.ActivationAPoZRankPruner, *_OLD, 1),
    "ActivationMeanRankPruner": _pruner(compat.ActivationMeanRankPruner, *_OLD, 1),
    "ADMMPruner": _pruner(compat.ADMMPruner, *_OLD, 1, 1),
    "MovementPruner": _pruner(compat.MovementPruner, *_OLD, 1, 0, 1),
    "LinearPruner": _pruner(compat.LinearPruner, "level", 2, log_dir=_LOG),
    "AGPPruner": _pruner(compat.AGPPruner, "l1", 2, log_dir=_LOG),
    "LotteryTicketPruner": _pruner(compat.LotteryTicketPruner, "level", 2, log_dir=_LOG),
    "SimulatedAnnealingPruner": _pruner(compat.SimulatedAnnealingPruner, _score, log_dir=_LOG, seed=0),
    "AutoCompressPruner": _pruner(compat.AutoCompressPruner, 2, _ADMM, {"evaluator": _score}, log_dir=_LOG,
                                  evaluator=_score),
    "AMCPruner": lambda c: compat.AMCPruner(2, _MODEL, c, _X, _score, log_dir=_LOG),  # type: ignore[arg-type]
    # compat quantizers
    "QAT_Quantizer": _quantizer(compat.QAT_Quantizer, "optimizer"),
    "NaiveQuantizer": _quantizer(compat.NaiveQuantizer),
    "DoReFaQuantizer": _quantizer(compat.DoReFaQuantizer, "optimizer"),
    "BNNQuantizer": _quantizer(compat.BNNQuantizer, "optimizer"),
    "LsqQuantizer": _quantizer(compat.LsqQuantizer, "optimizer"),
    "ObserverQuantizer": _quantizer(compat.ObserverQuantizer, eval_mode=True),
}

#: Entry points that trace a graph, build an evaluator or run a search at construction (slower):
#: they see every 5th config list (all of them under the hostile profile would take minutes more).
SLOW = {"L1NormPruner(dependency_aware)", "TaylorFOWeightPruner", "TaylorFOWeightPruner(global)",
        "ActivationAPoZRankPruner", "ActivationMeanRankPruner", "ADMMPruner", "MovementPruner",
        "AutoCompressPruner", "AMCPruner"}

GENERATED: collections.Counter[str] = collections.Counter()  # config lists per entry point, this run
_SECONDS = [0.0]


@pytest.fixture(scope="module", autouse=True)
def _report(request: pytest.FixtureRequest) -> Iterator[None]:
    yield
    shutil.rmtree(_LOG, ignore_errors=True)
    reporter = request.config.pluginmanager.get_plugin("terminalreporter")
    capture = request.config.pluginmanager.get_plugin("capturemanager")
    if reporter is not None and capture is not None and GENERATED:
        fast = min(GENERATED.values())
        with capture.global_and_fixture_disabled():
            reporter.write_line(f"\nmalformed configs: {GENERATED['pc.from_config_list']} config lists, each through "
                                f"{len(ENTRY_POINTS) - len(SLOW)} entry points (the {len(SLOW)} slow ones: {fast} "
                                f"lists), {sum(GENERATED.values())} calls in {_SECONDS[0]:.1f} s")


@given(st.integers(0, 2**32 - 1))
def test_every_entry_point_accepts_or_raises_config_error(seed: int) -> None:
    start = time.perf_counter()
    reference = copy.deepcopy(_MODEL.state_dict())
    for i, config_list in enumerate(random_malformed_configs(seed, PER_EXAMPLE)):
        snapshot = repr(config_list)
        for name, entry in ENTRY_POINTS.items():
            if name in SLOW and i % 5:
                continue
            GENERATED[name] += 1
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                try:
                    entry(config_list)
                except pc.ConfigError:
                    pass
                except Exception as err:  # noqa: BLE001 (the law: nothing but ConfigError)
                    raise AssertionError(f"{name}({config_list!r}) raised {type(err).__name__}: {err}") from err
        assert repr(config_list) == snapshot, "an entry point modified the config list it was given"
    assert list(_MODEL.state_dict()) == list(reference)
    _SECONDS[0] += time.perf_counter() - start


def test_the_profile_generates_what_it_promises() -> None:
    lists = settings.default.max_examples * PER_EXAMPLE
    assert lists >= 1_000
    if settings.default.max_examples == settings.get_profile("hostile").max_examples:  # the hostile run
        assert lists >= HOSTILE_LISTS
