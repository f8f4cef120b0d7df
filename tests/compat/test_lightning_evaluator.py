"""LightningEvaluator: a Lightning training drives every evaluator-taking pruner to the masks the
equivalent TorchEvaluator loop gives (same data order, same optimizer), bit for bit."""

from __future__ import annotations

import copy
import logging

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from purecompress import compat
from purecompress.compat import LightningEvaluator, TorchEvaluator, trace

logging.getLogger("lightning").setLevel(logging.ERROR)
logging.getLogger("lightning.pytorch").setLevel(logging.ERROR)
logging.getLogger("pytorch_lightning").setLevel(logging.ERROR)

PACKAGES = []
for _name in ("lightning.pytorch", "pytorch_lightning"):
    try:
        PACKAGES.append(__import__(_name, fromlist=["Trainer"]))
    except ImportError:
        pass
if not PACKAGES:
    pytest.skip("LightningEvaluator tests need lightning (pip install -e '.[lightning]')", allow_module_level=True)

STEPS = 6
BATCH = 8


def _data() -> TensorDataset:
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(STEPS * BATCH, 1, 10, 10, generator=gen)
    return TensorDataset(x, (x.mean((1, 2, 3)) > 0).long() + 2 * (x[:, 0, 0, 0] > 0).long())


def _net() -> nn.Sequential:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(1, 8, 3), nn.BatchNorm2d(8), nn.ReLU(), nn.Conv2d(8, 8, 3), nn.BatchNorm2d(8),
                         nn.ReLU(), nn.Flatten(), nn.Linear(8 * 6 * 6, 4))


def _make(pl, layout: str = "optimizer"):
    class Lit(pl.LightningModule):
        def __init__(self) -> None:
            super().__init__()
            self.net = _net()

        def forward(self, x):
            return self.net(x)

        def training_step(self, batch, batch_idx):
            x, y = batch
            return F.cross_entropy(self(x), y)

        def test_step(self, batch, batch_idx):
            x, y = batch
            self.log("default", (self(x).argmax(1) == y).float().mean())

        def configure_optimizers(self):
            opt = trace(torch.optim.SGD)(self.parameters(), lr=0.05, momentum=0.9)
            if layout == "optimizer":
                return opt
            sched = trace(torch.optim.lr_scheduler.StepLR)(opt, step_size=2, gamma=0.5)
            if layout == "lists":
                return [opt], [{"scheduler": sched, "interval": "step"}]
            return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}

    class Data(pl.LightningDataModule):
        def train_dataloader(self):
            return DataLoader(_data(), batch_size=BATCH, shuffle=False)

        def test_dataloader(self):
            return DataLoader(_data(), batch_size=BATCH, shuffle=False)

    trainer = trace(pl.Trainer)(accelerator="cpu", devices=1, max_epochs=1, logger=False, enable_checkpointing=False,
                                enable_progress_bar=False, enable_model_summary=False)
    return Lit(), LightningEvaluator(trainer, Data(), dummy_input=torch.zeros(1, 1, 10, 10))


def _torch_evaluator(model: nn.Module, layout: str = "optimizer") -> TorchEvaluator:
    def training(model, optimizers, criterion, lr_schedulers=None, max_steps=None, max_epochs=None):
        model.train()
        done = 0
        for _ in range(max_epochs or 1):
            for x, y in DataLoader(_data(), batch_size=BATCH, shuffle=False):
                optimizers.zero_grad()
                criterion(model(x), y).backward()
                optimizers.step()
                for scheduler in lr_schedulers if isinstance(lr_schedulers, list) else [lr_schedulers]:
                    if scheduler is not None:
                        scheduler.step()
                done += 1
                if max_steps is not None and done >= max_steps:
                    return

    opt = trace(torch.optim.SGD)(model.parameters(), lr=0.05, momentum=0.9)
    sched = None if layout == "optimizer" else trace(torch.optim.lr_scheduler.StepLR)(opt, step_size=2, gamma=0.5)
    return TorchEvaluator(training, opt, F.cross_entropy, lr_schedulers=sched, dummy_input=torch.zeros(1, 1, 10, 10))


CONV = [{"sparsity": 0.5, "op_types": ["Conv2d"]}]
PRUNERS = [
    ("TaylorFOWeightPruner", CONV, {"training_steps": 4}),
    ("TaylorFOWeightPruner", CONV, {"training_steps": 4, "mode": "dependency_aware"}),
    ("ActivationAPoZRankPruner", CONV, {"training_steps": 3}),
    ("SlimPruner", [{"total_sparsity": 0.5, "op_types": ["BatchNorm2d"]}], {"training_epochs": 1}),
    ("ADMMPruner", CONV, {"iterations": 2, "training_epochs": 1}),
    ("MovementPruner", [{"sparsity": 0.5, "op_types": ["Conv2d", "Linear"]}],
     {"training_epochs": 1, "warm_up_step": 1, "cool_down_beginning_step": 4}),
]


def _masks(pruner_name: str, config, kwargs, evaluator, model) -> dict[str, torch.Tensor]:
    kwargs = dict(kwargs)
    if kwargs.get("mode") == "dependency_aware":
        kwargs["dummy_input"] = torch.zeros(1, 1, 10, 10)
    pruner = getattr(compat, pruner_name)(model, copy.deepcopy(config), evaluator=evaluator, **kwargs)
    _, masks = pruner.compress()
    pruner._unwrap_model()
    return {name: m["weight"].clone() for name, m in masks.items()}


@pytest.mark.parametrize("pl", PACKAGES, ids=lambda p: p.__name__)
@pytest.mark.parametrize(("name", "config", "kwargs"), PRUNERS, ids=lambda v: v if isinstance(v, str) else "")
def test_lightning_training_gives_the_masks_of_the_equivalent_torch_loop(pl, name, config, kwargs) -> None:
    lit, evaluator = _make(pl)
    ours = _masks(name, config, kwargs, evaluator, lit)
    plain = _net()
    reference = _masks(name, config, kwargs, _torch_evaluator(plain), plain)
    assert ours.keys() == {f"net.{k}" for k in reference}
    for key, mask in reference.items():
        assert torch.equal(ours[f"net.{key}"], mask), key
    # trained the same way: the LightningModule's weights equal the plain loop's
    for (k, a), (_, b) in zip(lit.net.state_dict().items(), plain.state_dict().items()):
        assert torch.equal(a, b), k
    # nothing of the evaluator is left on the module
    assert not {"training_step", "configure_optimizers"} & set(vars(lit)), vars(lit).keys()
    assert lit._trainer is None  # the trainer is not kept on the pruned model


@pytest.mark.parametrize("layout", ["lists", "dict"])
def test_lr_schedulers_are_rebuilt_for_the_wrapped_model_in_every_layout(layout) -> None:
    pl = PACKAGES[0]
    lit, evaluator = _make(pl, layout)
    ours = _masks("TaylorFOWeightPruner", CONV, {"training_steps": 5}, evaluator, lit)
    plain = _net()
    reference = _masks("TaylorFOWeightPruner", CONV, {"training_steps": 5}, _torch_evaluator(plain, layout), plain)
    for key, mask in reference.items():
        assert torch.equal(ours[f"net.{key}"], mask), key


def test_agp_finetunes_and_evaluates_through_lightning_like_the_torch_loop(tmp_path) -> None:
    # The scheduler-based pruners call finetune(): the trainer's own limits (one epoch here).
    pl = PACKAGES[0]
    results = []
    for kind in ("lightning", "torch"):
        if kind == "lightning":
            model, evaluator = _make(pl)
        else:
            model = _net()
            evaluator = _torch_evaluator(model)
            evaluator.evaluating_func = lambda m: 0.5
        pruner = compat.AGPPruner(model, copy.deepcopy(CONV), "l1", 2, log_dir=str(tmp_path / kind),
                                  evaluator=evaluator)
        pruner.compress()
        _, best, masks, score, _ = pruner.get_best_result()
        results.append(({k.removeprefix("net."): m["weight"] for k, m in masks.items()}, best.state_dict(), score))
    (masks_pl, state_pl, _), (masks_torch, state_torch, _) = results
    assert masks_pl.keys() == masks_torch.keys()
    for key in masks_torch:
        assert torch.equal(masks_pl[key], masks_torch[key]), key
    for key, value in state_torch.items():
        assert torch.equal(state_pl[f"net.{key}"], value), key  # fine-tuned identically


def test_the_contract_loss_patch_step_tasks_hooks_evaluate() -> None:
    pl = PACKAGES[0]
    lit, evaluator = _make(pl)
    evaluator._init_optimizer_helpers(lit)
    evaluator.bind_model(lit)
    calls: list[str] = []
    evaluator.patch_loss(lambda loss: calls.append("loss") or loss * 1)
    evaluator.patch_optimizer_step([lambda: calls.append("before")], [lambda: calls.append("after")])
    evaluator.register_hooks([compat.ForwardHook(lit.net[0], "net.0", lambda buf: lambda m, i, o: buf.append(o.shape))])
    evaluator.train(max_steps=3)
    assert calls == ["loss", "before", "after"] * 3  # no sanity-check forwards, tasks around each update
    assert len(evaluator.get_all_hooks()[0].buffer) == 3
    metric, results = evaluator.evaluate()
    assert isinstance(metric, float) and 0.0 <= metric <= 1.0 and results[0]["default"] == pytest.approx(metric)
    assert evaluator.get_dummy_input().shape == (1, 1, 10, 10)
    evaluator.unbind_model()
    assert not lit.net[0]._forward_hooks and evaluator.get_all_hooks() == []
    assert not {"training_step", "configure_optimizers"} & set(vars(lit))
    assert isinstance(lit.configure_optimizers(), torch.optim.SGD)  # the user's own method again


def test_bad_arguments_say_what_to_pass() -> None:
    pl = PACKAGES[0]
    lit, good = _make(pl)
    with pytest.raises(TypeError, match=r"trace\(Trainer\)"):
        LightningEvaluator(pl.Trainer(logger=False, enable_progress_bar=False), good.data_module)
    with pytest.raises(TypeError, match="LightningDataModule"):
        LightningEvaluator(good.trainer, object())
    with pytest.raises(TypeError, match="LightningModule"):
        good._init_optimizer_helpers(nn.Linear(2, 2))
    no_dummy = LightningEvaluator(good.trainer, good.data_module)
    x, y = no_dummy.get_dummy_input()  # NNI's default: the first training batch
    assert x.shape == (BATCH, 1, 10, 10)
