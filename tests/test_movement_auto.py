"""MovementPruner(sparse_granularity='auto'): NNI 2.10's head-level score blocks on the core transform."""

from __future__ import annotations

import copy
from typing import Any

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import purecompress as pc
from purecompress import compat
from purecompress.compat.evaluator import TorchEvaluator
from purecompress.compat.pruning import MovementPruner
from purecompress.compat.pruning.movement_pruner import auto_blocks
from tests.test_compat_contract_pruning import movement_loop

transformers = pytest.importorskip("transformers", reason="transformers builds BERT")

_g = torch.Generator().manual_seed(0)
BATCHES = [(torch.randint(0, 100, (4, 8), generator=_g), torch.randint(0, 2, (4,), generator=_g)) for _ in range(3)]
CONFIG = [{"sparsity": 0.5, "op_types": ["Linear"], "op_partial_names": ["bert.encoder"]}]


def bert() -> nn.Module:
    torch.manual_seed(0)
    cfg = transformers.BertConfig(vocab_size=100, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                                  intermediate_size=64, max_position_embeddings=64, num_labels=2,
                                  hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
    return transformers.BertForSequenceClassification(cfg)


def training(model: nn.Module, optimizer: torch.optim.Optimizer, criterion: Any, lr_schedulers: Any = None,
             max_steps: int | None = None, max_epochs: int | None = None) -> None:
    model.train()
    for _ in range(max_epochs or 1):
        for x, y in BATCHES:
            optimizer.zero_grad()
            criterion(model(x).logits, y).backward()
            optimizer.step()


def test_auto_blocks_are_nni_s_per_head_blocks() -> None:
    model = bert()
    shapes = {n: tuple(p.shape) for n, p in model.named_parameters() if n.endswith("weight")}
    blocks = auto_blocks(pc.head_blocks(model), shapes)
    layer = "bert.encoder.layer.1."
    for name in ("attention.self.query", "attention.self.key", "attention.self.value"):
        assert blocks[f"{layer}{name}.weight"] == pc.Block((8, 8))  # [h / heads, w / heads]
    assert blocks[f"{layer}attention.output.dense.weight"] == pc.Block((8, 8))
    assert blocks[f"{layer}intermediate.dense.weight"] == pc.Block((1, -1))  # a score per neuron
    assert blocks[f"{layer}output.dense.weight"] == pc.Block((-1, 1))
    assert "classifier.weight" not in blocks and "bert.pooler.dense.weight" not in blocks


def test_auto_blocks_agree_with_nni_s_parser() -> None:
    pytest.importorskip("nni", reason="NNI 2.10 is the oracle")
    from nni.algorithms.compression.v2.pytorch.utils.external.huggingface import parser_factory

    model = bert()
    parser = parser_factory(model)
    assert parser is not None
    shapes = {n: tuple(p.shape) for n, p in model.named_parameters() if n.endswith("weight")}
    ours = auto_blocks(pc.head_blocks(model), shapes)
    for module_name, module in model.named_modules():
        if not isinstance(module, nn.Linear):
            continue
        h, w = module.weight.shape
        if parser.is_attention(module_name):  # NNI 2.10 _create_scalers: Scaling([h // heads, w // heads])
            heads = parser.get_num_heads(module_name, model)
            if heads == 0:
                # NNI lists the output projection among the attention weights but looks its head count up
                # under 'attention.self', which its name lacks, and falls back to elements; it gets the
                # per-head blocks meant for it here
                assert module_name.endswith("attention.output.dense")
                heads = model.get_submodule(module_name.replace("output.dense", "self")).num_attention_heads
            expected = pc.Block((h // heads, w // heads))
        elif parser.is_ffn(module_name, ffn_num=1):
            expected = pc.Block((1, w))
        elif parser.is_ffn(module_name, ffn_num=2):
            expected = pc.Block((h, 1))
        else:
            assert f"{module_name}.weight" not in ours
            continue
        assert ours[f"{module_name}.weight"].sizes((h, w)) == expected.sizes((h, w)), module_name


def test_auto_masks_equal_the_blocked_movement_transform_in_the_same_loop() -> None:
    m = bert()
    reference = copy.deepcopy(m)
    plan = pc.select(reference, pc.from_config_list(CONFIG))
    names = list(plan.targets())
    blocks = auto_blocks(pc.head_blocks(reference), {n: tuple(reference.get_parameter(n).shape) for n in names})
    tx = pc.movement(names, 0.5, warm_up=0, cool_down=4, block=blocks)
    state = movement_loop(reference, tx, names, BATCHES, logits=lambda out: out.logits)
    core = pc.bias_masks({n: state.masks[n] for n in names}, {k: v for e in plan for k, v in e.params.items()})
    evaluator = TorchEvaluator(training, compat.trace(torch.optim.SGD)(m.parameters(), lr=0.05), F.cross_entropy)
    pruner = MovementPruner(m, copy.deepcopy(CONFIG), evaluator, training_epochs=2, warm_up_step=0,
                            cool_down_beginning_step=4, sparse_granularity="auto")
    _, nni_masks = pruner.compress()
    got = {f"{mod}.{t}": v for mod, ts in nni_masks.items() for t, v in ts.items() if v is not None}
    assert sorted(got) == sorted(core)
    for name, mask in core.items():
        assert torch.equal(got[name], mask.to_dense(got[name].dtype)), name
    query = got["bert.encoder.layer.0.attention.self.query.weight"].reshape(4, 8, 4, 8)
    assert torch.equal(query.amin((1, 3)), query.amax((1, 3)))  # whole [8, 8] blocks
    assert query.mean() == 0.5  # the schedule reached 0.5 of the 16 blocks
