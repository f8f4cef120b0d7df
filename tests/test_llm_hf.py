"""The LLM one-shot compressors on Hugging Face's own ``LlamaForCausalLM`` (tiny config, random weights).

The sequential pass must work through HF's decoder layers as they are called (keyword arguments,
rotary ``position_embeddings``, a key/value cache object that grows at every call), in float32 and
bfloat16, without writing the model. Checked against hooks on plain forwards: block 0's Wanda masks
come from the uncompressed model's activations, block 1's from the model with block 0 pruned.
"""

from __future__ import annotations

import pytest
import torch
from torch.func import functional_call

import purecompress as pc
from purecompress import llm

transformers = pytest.importorskip("transformers", reason="transformers builds the HF Llama model")

pytestmark = pytest.mark.usefixtures("one_thread")


def _llama(dtype: torch.dtype) -> torch.nn.Module:
    torch.manual_seed(0)
    cfg = transformers.LlamaConfig(vocab_size=256, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                   num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64,
                                   attn_implementation="eager")
    return transformers.LlamaForCausalLM(cfg).eval().to(dtype)


def _batches() -> list[torch.Tensor]:
    gen = torch.Generator().manual_seed(1)
    return [torch.randint(0, 256, (2, 16), generator=gen) for _ in range(3)]


def _input_norms(model: torch.nn.Module, params: dict[str, torch.Tensor], batches: list[torch.Tensor],
                 prefix: str) -> dict[str, torch.Tensor]:
    """Sum over tokens of each input feature squared, per Linear under ``prefix``, from plain forwards."""
    norms: dict[str, torch.Tensor] = {}
    handles = []
    for name, module in model.named_modules():
        if name.startswith(prefix) and isinstance(module, torch.nn.Linear):
            def hook(mod, args, name=name):
                x = args[0].detach().float().reshape(-1, args[0].shape[-1])
                norms[f"{name}.weight"] = norms.get(f"{name}.weight", 0) + (x * x).sum(0)
            handles.append(module.register_forward_pre_hook(hook))
    with torch.no_grad():
        for batch in batches:
            functional_call(model, params, (batch,), {"use_cache": False})
    for handle in handles:
        handle.remove()
    return norms


def _expected_wanda(model, params, batches, prefix):
    norms = _input_norms(model, params, batches, prefix)
    metrics = {name: llm.wanda_metric(params[name], sq) for name, sq in norms.items()}
    return llm.allocate_per_row(metrics, 0.5)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_wanda_on_hf_llama_follows_the_sequential_contract(dtype: torch.dtype) -> None:
    model, batches = _llama(dtype), _batches()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    assert llm.decoder_blocks(model) == ["model.layers.0", "model.layers.1"]
    result = llm.wanda(model, batches, sparsity=0.5)
    params = dict(pc.params_of(model))
    first = _expected_wanda(model, params, batches, "model.layers.0.")
    assert set(first) == {k for k in result.masks if k.startswith("model.layers.0.")}
    for name, mask in first.items():
        assert torch.equal(result.masks[name].keep, mask.keep), name
    pruned0 = pc.apply_masks(params, {k: v for k, v in result.masks.items() if k.startswith("model.layers.0.")})
    second = _expected_wanda(model, dict(pruned0), batches, "model.layers.1.")
    agree = [float((result.masks[n].keep == m.keep).float().mean()) for n, m in second.items()]
    # block 1 sees block 0's pruned outputs; bfloat16 rounding of the fed-on hidden states may flip near-ties
    assert min(agree) >= (1.0 if dtype == torch.float32 else 0.97), agree
    for name, mask in result.masks.items():
        rows = mask.keep.reshape(mask.keep.shape[0], -1).sum(1)
        assert (rows == mask.keep.shape[1] // 2).all(), name  # exactly half of every row
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())  # the model is not written


def test_sparsegpt_2_of_4_and_gptq_on_hf_llama_bf16() -> None:
    model, batches = _llama(torch.bfloat16), _batches()
    sparse = llm.sparsegpt(model, batches, sparsity=0.5, n_m="2:4")
    assert len(sparse.masks) == 14  # 7 Linear layers per block
    for name, mask in sparse.masks.items():
        assert (mask.keep.reshape(mask.keep.shape[0], -1, 4).sum(-1) == 2).all(), name
        assert sparse.params[name].dtype == torch.bfloat16
        assert not (sparse.params[name][~mask.keep] != 0).any(), name
    quant = llm.gptq(model, batches, bits=4, group_size=16)
    assert set(quant.qparams) == set(sparse.masks)
    for name, qp in quant.qparams.items():
        w = quant.params[name]
        on_grid = llm.fake_quantize_weight(w, qp, group_size=16)
        assert torch.equal(on_grid, w), name  # GPTQ's weights are codes of their own scales
        assert (qp.qmin, qp.qmax) == (0, 15)  # 4-bit asymmetric, the default
    with torch.no_grad():
        logits = functional_call(model, {**dict(pc.params_of(model)), **quant.params}, (batches[0],)).logits
    assert torch.isfinite(logits.float()).all()
