"""Tied parameters (one tensor under several names): one mask, one quantizer, applied at every use."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn
from torch.func import functional_call

import purecompress as pc
from purecompress.quant import fake_quantize, qat, quant_report, quantized_call


class TiedLM(nn.Module):
    """Embedding -> Linear -> head whose weight is the embedding's (GPT-2's tie, by hand)."""

    def __init__(self) -> None:
        super().__init__()
        self.emb = nn.Embedding(10, 6)
        self.mid = nn.Linear(6, 6)
        self.head = nn.Linear(6, 10, bias=False)
        self.head.weight = self.emb.weight

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return self.head(torch.relu(self.mid(self.emb(ids))))


IDS = torch.arange(10).reshape(2, 5)


def tied_lm() -> TiedLM:
    torch.manual_seed(0)
    return TiedLM().eval()


def masked_in_place(model: nn.Module, name: str, mask: pc.Mask) -> nn.Module:
    """A copy of ``model`` with the parameter ``name`` zeroed where ``mask`` prunes (ties kept)."""
    out = copy.deepcopy(model)
    with torch.no_grad():
        out.get_parameter(name).mul_(mask.to_dense())
    return out


def test_tied_params_names_each_other_name_once() -> None:
    assert pc.tied_params(tied_lm()) == {"head.weight": "emb.weight"}
    assert pc.tied_params(nn.Linear(2, 2)) == {}


def test_selecting_the_head_by_name_masks_the_embedding_too() -> None:
    model = tied_lm()
    params = pc.params_of(model)
    plan = pc.select(model, pc.from_config_list([{"sparsity": 0.5, "op_names": ["head"]}]))
    assert list(plan.targets()) == ["emb.weight"] and plan.targets()["emb.weight"].module == "head"
    masks = pc.prune(params, plan, pc.l1_norm)
    assert list(masks) == ["emb.weight"] and masks["emb.weight"].sparsity() == 0.5
    with torch.no_grad():
        out = functional_call(model, pc.apply_masks(params, masks), (IDS,))
        assert torch.equal(out, masked_in_place(model, "emb.weight", masks["emb.weight"])(IDS))
        # the embedding use is masked too: a pruned row's token embeds to zero
        pruned = int((~masks["emb.weight"].keep.reshape(-1)).nonzero()[0])
        weight = pc.apply_masks(params, masks)["emb.weight"]
        emb = functional_call(model.emb, {"weight": weight}, (torch.tensor([pruned]),))
        assert torch.equal(emb, torch.zeros(1, 6))
    report = pc.sparsity_report(params, masks, plan)
    assert report.tied == {"emb.weight": ("head.weight",)}
    assert "emb.weight = head.weight" in report.table()
    assert report.params_total == sum(p.numel() for p in model.parameters())  # the tied tensor counted once


def test_both_modules_with_one_config_are_one_target() -> None:
    model = tied_lm()
    plan = pc.select(model, pc.from_config_list([{"sparsity": 0.5, "op_types": ["Linear", "Embedding"]}]))
    assert list(plan.targets()) == ["emb.weight", "mid.weight"]
    assert plan.targets()["emb.weight"].module == "emb"  # the first module in model order


def test_two_configs_on_one_tied_tensor_are_an_error() -> None:
    configs = pc.from_config_list([{"sparsity": 0.3, "op_types": ["Embedding"]},
                                   {"sparsity": 0.6, "op_names": ["head"]}])
    with pytest.raises(pc.ConfigError, match=r"config_list\[1\].*'head' and 'emb' share the tied tensor 'emb.weight'"):
        pc.select(tied_lm(), configs)


def test_quantizing_the_head_fake_quantizes_both_uses() -> None:
    model = tied_lm()
    params = pc.params_of(model)
    q = qat(model, [{"quant_types": ["weight"], "quant_bits": 4, "op_names": ["head"]}])
    assert q.keys == ("emb.weight",) and q.tied == {"emb.weight": ("head.weight",)}
    out, state = quantized_call(q, model, params, q.init(params), (IDS,))
    qp = state.tensors["emb.weight"].qparams
    assert qp is not None
    expected = copy.deepcopy(model)
    with torch.no_grad():
        expected.emb.weight.copy_(fake_quantize(params["emb.weight"], qp))
        assert not torch.equal(expected.emb.weight, model.emb.weight)  # 4 bits changes it
        assert torch.allclose(out, expected(IDS), rtol=0, atol=1e-6)
    row = quant_report(q, state).tensors[0]
    assert (row.key, row.tied, row.calibrated) == ("emb.weight", ("head.weight",), True)


transformers = pytest.importorskip("transformers", reason="transformers builds GPT-2")


def gpt2_lm() -> nn.Module:
    torch.manual_seed(0)
    cfg = transformers.GPT2Config(vocab_size=100, n_embd=32, n_layer=2, n_head=4, n_positions=64, bos_token_id=0,
                                  eos_token_id=0)
    return transformers.GPT2LMHeadModel(cfg).eval()


TEXT = {"input_ids": torch.randint(0, 100, (2, 8), generator=torch.Generator().manual_seed(0))}


def test_gpt2_lm_head_pruned_by_name_masks_the_tied_embedding() -> None:
    model = gpt2_lm()
    params = pc.params_of(model)
    plan = pc.select(model, pc.from_config_list([{"sparsity": 0.5, "op_names": ["lm_head"]}]))
    masks = pc.prune(params, plan, pc.l2_norm)
    assert list(masks) == ["transformer.wte.weight"]
    with torch.no_grad():
        out = functional_call(model, pc.apply_masks(params, masks), (), TEXT).logits
        dense = model(**TEXT).logits
        expected = masked_in_place(model, "transformer.wte.weight", masks["transformer.wte.weight"])(**TEXT).logits
    assert torch.equal(out, expected) and not torch.equal(out, dense)
    # half the vocabulary rows pruned: their logits are exactly zero at every position
    pruned = ~masks["transformer.wte.weight"].keep.reshape(-1)
    assert int(pruned.sum()) == 50 and bool((out[..., pruned] == 0).all())
    assert pc.sparsity_report(params, masks, plan).tied == {"transformer.wte.weight": ("lm_head.weight",)}


def test_gpt2_lm_head_quantized_by_name() -> None:
    model = gpt2_lm()
    params = pc.params_of(model)
    q = qat(model, [{"quant_types": ["weight"], "quant_bits": 4, "op_names": ["lm_head"]}])
    out, state = quantized_call(q, model, params, q.init(params), (), TEXT)
    qp = state.tensors["transformer.wte.weight"].qparams
    assert qp is not None and list(state.tensors) == ["transformer.wte.weight"]
    expected = copy.deepcopy(model)
    with torch.no_grad():
        expected.transformer.wte.weight.copy_(fake_quantize(params["transformer.wte.weight"], qp))
        assert torch.allclose(out.logits, expected(**TEXT).logits, rtol=0, atol=1e-5)
    assert "transformer.wte.weight = lm_head.weight" in quant_report(q, state).table()
