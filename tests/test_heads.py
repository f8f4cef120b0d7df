"""Head and neuron pruning of transformers: blocks found by structure, scores, allocation, shrinking."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call

import purecompress as pc
from purecompress.graph import ShrinkError

transformers = pytest.importorskip("transformers", reason="transformers builds the HF models")
from tests.test_capture_record import hf as hf_model  # noqa: E402

IDS = torch.randint(0, 100, (2, 8), generator=torch.Generator().manual_seed(0))
TEXT = {"input_ids": IDS}
PIXELS = {"pixel_values": torch.randn(2, 3, 16, 16, generator=torch.Generator().manual_seed(0))}


def hf(name: str) -> nn.Module:
    """The small Hugging Face models of the capture tests (``gpt2`` with its LM head)."""
    return hf_model("gpt2_lm" if name == "gpt2" else name)


INPUTS = {"bert": TEXT, "gpt2": TEXT, "vit": PIXELS, "llama": TEXT}
OUTPUT = {"bert": "last_hidden_state", "gpt2": "logits", "vit": "last_hidden_state", "llama": "logits"}
# (attention block of layer 0, units, query heads per unit), (MLP block of layer 0, neurons)
LAYOUT = {
    "bert": (("encoder.layer.0.attention.self", 4, 1), ("encoder.layer.0.intermediate", 64)),
    "gpt2": (("transformer.h.0.attn", 4, 1), ("transformer.h.0.mlp", 128)),
    "vit": (("layers.0.attention", 4, 1), ("layers.0.mlp", 64)),
    "llama": (("model.layers.0.self_attn", 2, 2), ("model.layers.0.mlp", 64)),
}


def rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).norm() / b.norm())


@pytest.mark.parametrize("name", list(LAYOUT))
def test_blocks_are_found_by_structure(name: str) -> None:
    blocks = {b.name: b for b in pc.head_blocks(hf(name))}
    assert len(blocks) == 4  # two layers, one attention and one MLP each
    (attn, units, group), (mlp, neurons) = LAYOUT[name]
    assert (blocks[attn].kind, blocks[attn].units, blocks[attn].group, blocks[attn].head_dim) == ("attention", units,
                                                                                                  group, 8)
    assert (blocks[mlp].kind, blocks[mlp].units) == ("mlp", neurons)


def head_l1_masks(model: nn.Module, sparsity: float = 0.5) -> pc.Masks:
    params = pc.params_of(model)
    blocks = pc.head_blocks(model)
    scores = pc.head_scores(blocks, pc.level(params, pc.head_block_params(blocks)))
    return pc.head_masks(blocks, pc.allocate_heads(blocks, scores, sparsity), params)


@pytest.mark.parametrize("name", list(LAYOUT))
def test_compact_model_equals_the_masked_one(name: str) -> None:
    model, x, key = hf(name), INPUTS[name], OUTPUT[name]
    params_before = sum(p.numel() for p in model.parameters())
    masks = head_l1_masks(model)
    with torch.no_grad():
        dense = getattr(model(**x), key)
        masked = getattr(functional_call(model, pc.apply_masks(pc.params_of(model), masks), (), x), key)
        compact, report = pc.shrink_heads(model, masks, x)
        out = getattr(compact(**x), key)
    assert rel(masked, dense) > 1e-2  # the masks change the model
    assert rel(out, masked) <= 1e-5 and report.output_error <= 1e-5
    assert report.params_before == params_before > report.params_after
    assert report.flops_after < 0.75 * report.flops_before  # half the heads and neurons
    assert sum(p.numel() for p in model.parameters()) == params_before and model.config.num_attention_heads == 4
    (attn, units, group), (mlp, neurons) = LAYOUT[name]
    if name == "llama":  # the config states head_dim: the counts change
        assert (compact.config.num_attention_heads, compact.config.num_key_value_heads) == (2, 1)
    else:  # the head size is hidden_size / num_attention_heads: the count stays, the removal is recorded
        assert compact.config.num_attention_heads == 4
        assert [len(h) for h in compact.config.pruned_heads.values()] == [2, 2]
    for block in pc.head_blocks(model):  # each consumer reads half the units it read
        cut = next(c for c in block.cuts if c.consumer)
        half = block.units // 2 * cut.unit
        before = model.get_parameter(cut.param).shape[cut.dim]
        assert compact.get_parameter(cut.param).shape[cut.dim] == half == before // 2


def test_bert_attention_attributes_and_pruned_heads() -> None:
    model = hf("bert")
    compact, report = pc.shrink_heads(model, head_l1_masks(model), TEXT)
    attn = compact.encoder.layer[0].attention.self
    assert (attn.num_attention_heads, attn.all_head_size, attn.query.out_features) == (2, 16, 16)
    assert compact.encoder.layer[0].attention.output.dense.in_features == 16
    # BERT derives head_dim from hidden_size / num_attention_heads: the count stays, the removal is recorded
    assert compact.config.num_attention_heads == 4
    pruned = compact.config.pruned_heads
    assert sorted(pruned) == [0, 1] and all(len(h) == 2 for h in pruned.values())
    assert compact.config.intermediate_size == 32 and model.config.intermediate_size == 64
    assert "encoder.layer.0.attention.self.query" in report.replaced


def test_gpt2_fused_qkv_split_size_and_lm_head() -> None:
    model = hf("gpt2")
    masks = head_l1_masks(model)
    assert masks["transformer.h.0.attn.c_attn.weight"].keep.shape == (1, 12)  # [Q | K | V] x 4 heads
    compact, _ = pc.shrink_heads(model, masks, TEXT)
    attn = compact.transformer.h[0].attn
    assert (attn.num_heads, attn.split_size, attn.c_attn.nf, attn.c_proj.nx) == (2, 16, 48, 16)
    assert compact.lm_head.weight is compact.transformer.wte.weight  # the tie survives
    assert compact.config.n_inner == 64
    with torch.no_grad():
        greedy = compact.generate(IDS[:1], max_new_tokens=3, do_sample=False, pad_token_id=0)
    assert greedy.shape == (1, 11)


def test_llama_gqa_prunes_whole_query_groups_and_updates_the_config() -> None:
    model = hf("llama")
    params = pc.params_of(model)
    blocks = pc.head_blocks(model)
    keep = {"model.layers.0.self_attn": torch.tensor([False, True]),
            "model.layers.1.self_attn": torch.tensor([True, False])}
    masks = pc.head_masks(blocks, keep, params)
    q = masks["model.layers.0.self_attn.q_proj.weight"].to_dense()
    assert q[:16].sum() == 0 and q[16:].all()  # kv group 0 = query heads 0 and 1 (rows 0..15)
    assert masks["model.layers.0.self_attn.k_proj.weight"].to_dense()[:8].sum() == 0
    assert masks["model.layers.0.self_attn.o_proj.weight"].to_dense()[:, :16].sum() == 0
    compact, report = pc.shrink_heads(model, masks, TEXT)
    attn = compact.model.layers[0].self_attn
    assert (attn.num_heads, attn.num_key_value_heads, attn.num_key_value_groups) == (2, 1, 2)
    assert (compact.config.num_attention_heads, compact.config.num_key_value_heads) == (2, 1)
    assert report.output_error <= 1e-5
    # the config describes the compact model: a model built from it takes its weights
    rebuilt = transformers.LlamaForCausalLM(compact.config).eval()
    rebuilt.load_state_dict(compact.state_dict())
    with torch.no_grad():
        assert torch.equal(rebuilt(**TEXT).logits, compact(**TEXT).logits)


def test_uneven_layers_keep_the_config_and_record_per_layer_counts() -> None:
    model = hf("llama")
    blocks = pc.head_blocks(model)
    keep = {"model.layers.0.self_attn": torch.tensor([False, True])}
    compact, report = pc.shrink_heads(model, pc.head_masks(blocks, keep, pc.params_of(model)), TEXT)
    assert compact.config.num_attention_heads == 4 and compact.config.pruned_heads == {0: [0, 1], 1: []}
    assert compact.model.layers[0].self_attn.num_heads == 2
    assert compact.model.layers[1].self_attn.q_proj.out_features == 32
    assert report.output_error <= 1e-5


def test_l1_and_l2_head_scores_are_the_norms_of_the_heads_weights() -> None:
    model = hf("bert")
    params = pc.params_of(model)
    blocks = pc.head_blocks(model)
    names = pc.head_block_params(blocks)
    attn = "encoder.layer.1.attention.self"
    p = f"{attn}."
    o = params["encoder.layer.1.attention.output.dense.weight"]

    def head(h: int) -> torch.Tensor:
        rows = slice(8 * h, 8 * h + 8)
        parts = [params[p + f"{n}.{k}"][rows].reshape(-1)
                 for n in ("query", "key", "value") for k in ("weight", "bias")]
        return torch.cat([*parts, o[:, rows].reshape(-1)])

    l1 = pc.head_scores(blocks, pc.level(params, names))[attn].score
    l2 = pc.head_scores(blocks, pc.level(params, names), p=2)[attn].score
    assert torch.allclose(l1, torch.stack([head(h).abs().sum() for h in range(4)]))
    assert torch.allclose(l2, torch.stack([head(h).norm() for h in range(4)]))
    # a head whose weights are all zero scores 0 and is the one pruned
    zeroed = dict(params)
    for cut in next(b for b in blocks if b.name == attn).cuts:
        zeroed[cut.param] = params[cut.param] * cut.mask(torch.tensor([True, True, False, True]),
                                                         tuple(params[cut.param].shape)).to_dense()
    scores = pc.head_scores(blocks, pc.level(zeroed, names))
    assert scores[attn].score[2] == 0
    keep = pc.allocate_heads(blocks, scores, 0.25)
    assert keep[attn].tolist() == [True, True, False, True]


def llama_grads(model: nn.Module, names: list[str]) -> dict[str, torch.Tensor]:
    weights = {n: p for n, p in model.named_parameters() if n in names}
    loss = F.cross_entropy(model(IDS).logits.flatten(0, 1), IDS.flatten())
    return dict(zip(weights, torch.autograd.grad(loss, list(weights.values()))))


def test_taylor_head_scores_from_collected_gradients() -> None:
    model = hf("llama")
    params = pc.params_of(model)
    blocks = pc.head_blocks(model)
    names = pc.head_block_params(blocks)
    stats = pc.collect_taylor(model, params, [(IDS, IDS)],
                              lambda out, y: F.cross_entropy(out.logits.flatten(0, 1), y.flatten()), names)
    scores = pc.head_scores(blocks, pc.taylor_fo(stats, block=pc.Block.element()))
    g = llama_grads(model, names)
    attn = "model.layers.1.self_attn."
    taylor = {n: (params[n] * g[n]).pow(2) for n in g}
    expected = []
    for u in range(2):
        group, kv = slice(16 * u, 16 * u + 16), slice(8 * u, 8 * u + 8)  # 2 query heads per key/value head
        expected.append(taylor[attn + "q_proj.weight"][group].sum() + taylor[attn + "k_proj.weight"][kv].sum()
                        + taylor[attn + "v_proj.weight"][kv].sum() + taylor[attn + "o_proj.weight"][:, group].sum())
    assert torch.allclose(scores["model.layers.1.self_attn"].score, torch.stack(expected).float(), rtol=1e-4)


def test_movement_head_scores_sum_the_scores_of_each_head() -> None:
    model = hf("llama")
    params = pc.params_of(model)
    blocks = pc.head_blocks(model)
    names = pc.head_block_params(blocks)
    tx = pc.movement(names, 0.5, warm_up=0, cool_down=2)
    state = tx.init(params)
    for _ in range(2):
        _, state = tx.update(params, state, grads=llama_grads(model, names))
    scores = pc.head_scores(blocks, pc.movement_scores(state))
    mlp = "model.layers.0.mlp."
    s = state.scores
    expected = (s[mlp + "gate_proj.weight"].sum(1) + s[mlp + "up_proj.weight"].sum(1)
                + s[mlp + "down_proj.weight"].sum(0))
    assert torch.allclose(scores["model.layers.0.mlp"].score, expected, atol=1e-6)
    assert bool((scores["model.layers.0.mlp"].score < 0).any())  # signed scores are summed, not their magnitudes
    keep = pc.allocate_heads(blocks, scores, 0.5)
    compact, report = pc.shrink_heads(model, pc.head_masks(blocks, keep, params), TEXT)
    assert report.output_error <= 1e-5 and compact.config.intermediate_size == 32


def test_global_allocation_pools_each_kind_and_keeps_a_unit_per_block() -> None:
    blocks = pc.head_blocks(hf("bert"))
    units = {b.name: b.units for b in blocks}
    scores = {b.name: pc.Metric(torch.arange(b.units, dtype=torch.float32) * (100.0 if "layer.0" in b.name else 1.0),
                                (b.units,)) for b in blocks}
    keep = pc.allocate_heads(blocks, scores, 0.5, distribution="global")
    heads = [keep[n] for n in units if n.endswith("self")]
    assert sum(int(k.sum()) for k in heads) == 4  # half of the 8 heads, pooled
    assert int(heads[0].sum()) == 3 and int(heads[1].sum()) == 1  # layer 1 scores lower, but keeps one
    neurons = [keep[n] for n in units if n.endswith("intermediate")]
    assert sum(int(k.sum()) for k in neurons) == 64
    per_layer = pc.allocate_heads(blocks, scores, {n: 0.25 if n.endswith("self") else 0.5 for n in units})
    assert [int(per_layer[n].sum()) for n in units] == [32, 3, 32, 3]


def test_bad_inputs_say_what_is_wrong() -> None:
    model = hf("bert")
    blocks = pc.head_blocks(model)
    params = pc.params_of(model)
    scores = pc.head_scores(blocks, pc.level(params, pc.head_block_params(blocks)))
    with pytest.raises(ValueError, match=r"must be in \[0, 1\)"):
        pc.allocate_heads(blocks, scores, 1.0)
    one = {"encoder.layer.0.attention.self": scores["encoder.layer.0.attention.self"]}
    assert int(pc.allocate_heads(blocks, one, 0.99)["encoder.layer.0.attention.self"].sum()) == 1
    with pytest.raises(ValueError, match="pass a float"):
        pc.allocate_heads(blocks, scores, {n: 0.5 for n in scores}, distribution="global")
    with pytest.raises(ValueError, match=r"must be a bool tensor of shape \(4,\)"):
        pc.head_masks(blocks, {"encoder.layer.0.attention.self": torch.ones(3, dtype=torch.bool)}, params)
    with pytest.raises(KeyError, match="not among the head blocks"):
        pc.head_masks(blocks, {"encoder.layer.0": torch.ones(4, dtype=torch.bool)}, params)
    with pytest.raises(KeyError, match="no metric for"):
        pc.head_scores(blocks, {})
    with pytest.raises(ShrinkError, match="not parameters or buffers"):
        pc.shrink_heads(model, {"nope.weight": pc.Mask.dense((2,))}, TEXT)
    none = {"encoder.layer.0.attention.self": torch.zeros(4, dtype=torch.bool)}
    with pytest.raises(ShrinkError, match="remove every unit"):
        pc.shrink_heads(model, pc.head_masks(blocks, none, params), TEXT)
    with pytest.raises(ValueError, match="no attention or MLP block"):
        pc.head_blocks(nn.Sequential(nn.Conv2d(3, 4, 3)))


def test_a_head_with_only_its_query_and_key_masked_is_kept() -> None:
    model = hf("bert")
    params = pc.params_of(model)
    blocks = pc.head_blocks(model)
    masks = pc.head_masks(blocks, {"encoder.layer.0.attention.self": torch.tensor([False, True, True, True])}, params)
    masks = {k: v for k, v in masks.items() if ".query." in k or ".key." in k}  # uniform attention, not zero
    assert pc.heads_kept(blocks, masks)["encoder.layer.0.attention.self"].all()
    with pytest.warns(UserWarning, match=r"\['encoder.layer.0.attention.self'\] silence no whole head"):
        compact, report = pc.shrink_heads(model, masks, TEXT)
    assert compact.encoder.layer[0].attention.self.num_attention_heads == 4 and report.replaced == ()
    with torch.no_grad():
        masked = functional_call(model, pc.apply_masks(params, masks), (), TEXT).last_hidden_state
        assert rel(compact(**TEXT).last_hidden_state, masked) <= 1e-6


@pytest.mark.parametrize("name", ["gpt2", "llama"])
def test_pc_shrink_takes_head_masks(name: str) -> None:
    model = hf(name)
    masks = head_l1_masks(model)
    compact, report = pc.shrink(model, masks, TEXT)
    _, direct = pc.shrink_heads(model, masks, TEXT)
    assert report.params_after == direct.params_after < report.params_before and report.replaced == direct.replaced
    assert report.output_error <= 1e-5


def test_value_rows_or_up_rows_alone_silence_their_units() -> None:
    model = hf("llama")
    params = pc.params_of(model)
    blocks = pc.head_blocks(model)
    attn, mlp = "model.layers.0.self_attn", "model.layers.0.mlp"
    full = pc.head_masks(blocks, {attn: torch.tensor([True, False]), mlp: torch.arange(64) % 4 != 0}, params)
    only = {k: v for k, v in full.items() if k.endswith(("v_proj.weight", "up_proj.weight"))}  # V and up rows only
    kept = pc.heads_kept(blocks, only)
    assert kept[attn].tolist() == [True, False] and int(kept[mlp].sum()) == 48
    assert kept["model.layers.1.self_attn"].all()
    compact, report = pc.shrink_heads(model, only, TEXT)
    assert compact.model.layers[0].self_attn.q_proj.out_features == 16
    assert compact.model.layers[0].mlp.gate_proj.out_features == 48
    with torch.no_grad():
        masked = functional_call(model, pc.apply_masks(params, only), (), TEXT).logits
        assert rel(compact(**TEXT).logits, masked) <= 1e-5
    # the gate rows alone do not silence a neuron (act(0) * up need not be 0 in general): kept
    gate = {k: v for k, v in full.items() if k.endswith("gate_proj.weight")}
    assert pc.heads_kept(blocks, gate)[mlp].all()


def test_shrink_heads_refuses_masks_outside_the_blocks() -> None:
    model = hf("bert")
    masks = head_l1_masks(model)
    masks["pooler.dense.weight"] = pc.Mask(torch.arange(32).reshape(32, 1) % 2 == 0, (32, 32))
    with pytest.raises(ShrinkError, match=r"no attention or MLP block cuts: \['pooler.dense.weight'\]"):
        pc.shrink_heads(model, masks, TEXT)


def test_head_level_movement_learns_one_score_per_head() -> None:
    model = hf("llama")
    params = pc.params_of(model)
    blocks = pc.head_blocks(model)
    per_head = pc.head_movement_blocks(blocks)
    q, o = "model.layers.0.self_attn.q_proj.weight", "model.layers.0.self_attn.o_proj.weight"
    assert per_head[q] == pc.Block((16, -1)) and per_head[o] == pc.Block((-1, 16))  # a GQA group: 2 heads
    tx = pc.movement(list(per_head), 0.5, warm_up=0, cool_down=1, block=per_head)
    state = tx.init(params)
    g = llama_grads(model, list(per_head))
    _, state = tx.update(params, state, grads=g)
    assert state.scores[q].shape == (2, 1) and state.scores[o].shape == (1, 2)
    assert state.scores["model.layers.0.mlp.down_proj.weight"].shape == (1, 64)
    # Adam's first step: each block's score moves by -lr * sign(sum of grad * w over the block)
    sums = (g[q] * params[q]).reshape(2, 16 * 32).sum(1, keepdim=True)
    torch.testing.assert_close(state.scores[q], -0.01 * sums.sign())
    mask = state.masks[q]
    assert mask.keep.shape == (2, 1) and mask.shape == (32, 32) and mask.sparsity() == 0.5
    scores = pc.head_scores(blocks, pc.movement_scores(state))["model.layers.0.self_attn"].score
    parts = [state.scores[q].reshape(-1), state.scores[o].reshape(-1)]
    parts += [state.scores[f"model.layers.0.self_attn.{n}_proj.weight"].reshape(-1) for n in "kv"]
    torch.testing.assert_close(scores, sum(parts))
    # the straight-through gradient of a block score is the sum of its weights (times the upstream 1)
    grads = torch.func.grad(lambda s: pc.apply_movement(params, type(state)(s, state.masks, state.mu, state.nu,
                                                                           state.step, state.updates,
                                                                           state.shapes))[q].sum())(state.scores)
    torch.testing.assert_close(grads[q], params[q].reshape(2, 16 * 32).sum(1, keepdim=True))


@pytest.mark.parametrize("name", list(LAYOUT))
def test_head_masks_and_heads_kept_round_trip_and_nothing_is_modified(name: str) -> None:
    model = hf(name)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    params = pc.params_of(model)
    blocks = pc.head_blocks(model)
    g = torch.Generator().manual_seed(1)
    keep = {b.name: torch.rand(b.units, generator=g) < 0.6 for b in blocks}
    for b in blocks:
        keep[b.name][0] = True  # never empty
    assert pc.trees_equal(pc.heads_kept(blocks, pc.head_masks(blocks, keep, params)), keep)
    compact, report = pc.shrink_heads(model, pc.head_masks(blocks, keep, params), INPUTS[name])
    assert report.output_error <= 1e-5
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())  # the caller's model untouched
    kept_heads = {b.name: int(keep[b.name].sum()) * b.group for b in blocks if b.kind == "attention"}
    for attn, heads in kept_heads.items():
        cut = next(c for c in next(b for b in blocks if b.name == attn).cuts if c.consumer)
        assert compact.get_parameter(cut.param).shape[cut.dim] == heads * 8


class _Attention(nn.Module):
    """q/k/v/o projections with ``num_heads``/``head_dim`` read in the forward (the Llama layout)."""

    def __init__(self, dim: int, heads: int) -> None:
        super().__init__()
        self.num_heads, self.head_dim = heads, dim // heads
        self.q_proj, self.k_proj, self.v_proj, self.o_proj = (nn.Linear(dim, dim) for _ in range(4))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, n, _ = x.shape
        q, k, v = (p(x).reshape(b, n, self.num_heads, self.head_dim).transpose(1, 2)
                   for p in (self.q_proj, self.k_proj, self.v_proj))
        y = F.scaled_dot_product_attention(q, k, v).transpose(1, 2).reshape(b, n, self.num_heads * self.head_dim)
        return self.o_proj(y)


class _Hybrid(nn.Module):
    """MobileViT's shape in small: convolutions, then a transformer block over the pixels."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1, self.bn1 = nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8)
        self.conv2 = nn.Conv2d(8, 16, 1)
        self.norm, self.attn, self.fc = nn.LayerNorm(16), _Attention(16, 4), nn.Linear(16, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.conv2(torch.relu(self.bn1(self.conv1(x)))).flatten(2).transpose(1, 2)
        x = x + self.attn(self.norm(x))
        return self.fc(x.mean(1))


def test_a_hybrid_shrinks_its_channels_and_its_heads_together() -> None:
    torch.manual_seed(0)
    model = _Hybrid().eval()
    with torch.no_grad():
        model.bn1.bias.uniform_(-1, 1)  # pruned channels emit relu(beta): folded into conv2's bias
    x = torch.randn(2, 3, 6, 6)
    params = pc.params_of(model)
    blocks = pc.head_blocks(model)
    assert [(b.name, b.kind, b.units) for b in blocks] == [("attn", "attention", 4)]
    masks = pc.head_masks(blocks, {"attn": torch.tensor([True, False, False, True])}, params)
    keep = torch.arange(8) % 2 == 0
    masks["conv1.weight"] = pc.Mask(keep.reshape(8, 1, 1, 1), (8, 3, 3, 3))
    masks["conv1.bias"] = pc.Mask(keep, (8,))
    compact, report = pc.shrink(model, masks, x)
    assert compact.conv1.out_channels == 4 and compact.conv2.in_channels == 4 and compact.bn1.num_features == 4
    assert compact.attn.num_heads == 2 and compact.attn.q_proj.out_features == 8
    assert compact.attn.o_proj.in_features == 8
    assert {"conv1", "attn.q_proj", "attn.o_proj"} <= set(report.replaced)
    with torch.no_grad():
        masked = functional_call(model, pc.apply_masks(report.params, report.masks), (x,))
        assert rel(compact(x), masked) <= 1e-5 and report.output_error <= 1e-5
    rows = {r.name: r for r in report.layers}
    assert rows["conv1"].params_after < rows["conv1"].params_before
    assert rows["attn.q_proj"].params_after < rows["attn.q_proj"].params_before
    assert report.params_after < report.params_before
    assert next(model.parameters()).shape == (8, 3, 3, 3)  # the model is untouched
