"""Head and neuron pruning of the vision transformers of timm and torchvision: fused ``qkv`` attention
(timm ``Attention``/``WindowAttention``, torchvision ``ShiftedWindowAttention(V2)``),
``nn.MultiheadAttention`` (torchvision ViT) and the replacement modules the compact models run."""

from __future__ import annotations

from collections.abc import Callable

import pytest
import torch
from torch import nn
from torch.func import functional_call

import purecompress as pc
from benchmarks.zoo import trained_like

pytestmark = pytest.mark.usefixtures("one_thread")


def _timm(name: str, **kw: object) -> nn.Module:
    timm = pytest.importorskip("timm")
    return timm.create_model(name, pretrained=False, num_classes=10, **kw)


def _tv() -> object:
    return pytest.importorskip("torchvision.models")


def _swin(v2: bool) -> nn.Module:
    s = pytest.importorskip("torchvision.models.swin_transformer")
    extra = {"block": s.SwinTransformerBlockV2, "downsample_layer": s.PatchMergingV2} if v2 else {}
    return s.SwinTransformer(patch_size=[4, 4], embed_dim=32, depths=[2, 2], num_heads=[2, 4], window_size=[4, 4],
                             num_classes=10, **extra)


VIT = {"img_size": 32, "patch_size": 8, "embed_dim": 48, "depth": 2, "num_heads": 4}
MODELS: dict[str, Callable[[], nn.Module]] = {
    "timm_vit": lambda: _timm("vit_tiny_patch16_224", **VIT),
    "timm_deit": lambda: _timm("deit_tiny_patch16_224", **VIT),
    "timm_vit_qk_norm": lambda: _timm("vit_tiny_patch16_224", qk_norm=True, **VIT),
    "timm_swin": lambda: _timm("swin_tiny_patch4_window7_224", img_size=32, patch_size=4, window_size=4,
                               embed_dim=32, depths=(2, 2), num_heads=(2, 4)),
    "tv_vit": lambda: _tv().VisionTransformer(image_size=32, patch_size=8, num_layers=2, num_heads=4,  # type: ignore[attr-defined]
                                              hidden_dim=32, mlp_dim=64),
    "tv_swin": lambda: _swin(v2=False),
    "tv_swin_v2": lambda: _swin(v2=True),
}
# (blocks, first attention block, its heads and head_dim, first MLP block, its neurons)
LAYOUT = {
    "timm_vit": (4, "blocks.0.attn", 4, 12, "blocks.0.mlp", 192),
    "timm_deit": (4, "blocks.0.attn", 4, 12, "blocks.0.mlp", 192),
    "timm_vit_qk_norm": (4, "blocks.0.attn", 4, 12, "blocks.0.mlp", 192),
    "timm_swin": (8, "layers.0.blocks.0.attn", 2, 16, "layers.0.blocks.0.mlp", 128),
    "tv_vit": (4, "encoder.layers.encoder_layer_0.self_attention", 4, 8, "encoder.layers.encoder_layer_0.mlp", 64),
    "tv_swin": (8, "features.1.0.attn", 2, 16, "features.1.0.mlp", 128),
    "tv_swin_v2": (8, "features.1.0.attn", 2, 16, "features.1.0.mlp", 128),
}
# 40x40 for torchvision's Swin: its feature maps (10x10, 5x5) pad to the 4x4 windows and shift in both
# stages; the timm models have a fixed input size, 32x32 here
X = torch.randn(2, 3, 40, 40, generator=torch.Generator().manual_seed(0))
VIT_X = X[:, :, :32, :32]


def build(name: str) -> tuple[nn.Module, torch.Tensor]:
    torch.manual_seed(0)
    return trained_like(MODELS[name]()).eval(), X if name.startswith("tv_swin") else VIT_X


def rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).norm() / b.norm())


def l1_head_masks(model: nn.Module, sparsity: float = 0.5) -> tuple[tuple[pc.HeadBlock, ...], pc.Masks]:
    params = pc.params_of(model)
    blocks = pc.head_blocks(model)
    scores = pc.head_scores(blocks, pc.level(params, pc.head_block_params(blocks)))
    return blocks, pc.head_masks(blocks, pc.allocate_heads(blocks, scores, sparsity), params)


@pytest.mark.parametrize("name", list(MODELS))
def test_blocks_are_found_with_their_units(name: str) -> None:
    model, _ = build(name)
    blocks = {b.name: b for b in pc.head_blocks(model)}
    count, attn, heads, head_dim, mlp, neurons = LAYOUT[name]
    assert len(blocks) == count and sum(b.kind == "attention" for b in blocks.values()) == count // 2
    assert (blocks[attn].kind, blocks[attn].units, blocks[attn].group, blocks[attn].head_dim) == ("attention", heads,
                                                                                                  1, head_dim)
    assert (blocks[mlp].kind, blocks[mlp].units) == ("mlp", neurons)
    fused = next(c for c in blocks[attn].cuts if c.param.endswith(("qkv.weight", "in_proj_weight")))
    assert (fused.segments, fused.unit, fused.dim, fused.silent_segments) == (3, head_dim, 0, (2,))
    consumer = [c for c in blocks[attn].cuts if c.consumer]
    assert len(consumer) == 1 and consumer[0].param.endswith(("proj.weight", "out_proj.weight"))


@pytest.mark.parametrize("name", list(MODELS))
def test_compact_model_runs_and_equals_the_masked_one(name: str) -> None:
    model, x = build(name)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    blocks, masks = l1_head_masks(model)
    with torch.no_grad():
        dense = model(x)
        masked = functional_call(model, pc.apply_masks(pc.params_of(model), masks), (x,))
        compact, report = pc.shrink(model, masks, x)
        out = compact(x)
    assert rel(masked, dense) > 1e-3  # the masks change the model
    assert rel(out, masked) <= 1e-5 and report.output_error <= 1e-5
    assert report.params_after < 0.9 * report.params_before == 0.9 * sum(p.numel() for p in model.parameters())
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())  # the caller's model untouched
    for block in blocks:  # each consumer reads half of its units, each attention module computes half its heads
        cut = next(c for c in block.cuts if c.consumer)
        assert compact.get_parameter(cut.param).shape[cut.dim] == model.get_parameter(cut.param).shape[cut.dim] // 2
        if block.kind == "attention":
            assert compact.get_submodule(block.name).num_heads == block.units // 2


@pytest.mark.parametrize(("name", "kind"), [("tv_vit", pc.PrunedMultiheadAttention),
                                            ("tv_swin", pc.PrunedWindowAttention),
                                            ("tv_swin_v2", pc.PrunedWindowAttention),
                                            ("timm_vit", None), ("timm_swin", None)])
def test_modules_whose_forward_reads_the_input_width_are_replaced(name: str, kind: type | None) -> None:
    model, x = build(name)
    blocks, masks = l1_head_masks(model)
    compact, report = pc.shrink_heads(model, masks, x)
    attn = blocks[0].name
    original, new = model.get_submodule(attn), compact.get_submodule(attn)
    assert type(new) is (kind or type(original)) and report.output_error <= 1e-5
    if name == "timm_vit":  # timm's forward reshapes with attn_dim: changed in place
        assert (new.num_heads, new.attn_dim, new.head_dim, new.qkv.out_features) == (2, 24, 12, 72)


def test_swin_per_head_parameters_are_sliced_with_their_heads_and_not_scored() -> None:
    v1, x = build("tv_swin")
    v2, _ = build("tv_swin_v2")
    keep = {"features.1.0.attn": torch.tensor([False, True])}
    for model in (v1, v2):
        blocks = pc.head_blocks(model)
        per_head = [c for c in blocks[0].cuts if c.role == "head"]
        assert not {c.param for c in per_head} & set(pc.head_block_params(blocks))
        compact, report = pc.shrink_heads(model, pc.head_masks(blocks, keep, pc.params_of(model)), x)
        assert report.output_error <= 1e-5
        old, new = model.features[1][0].attn, compact.features[1][0].attn
        if model is v1:
            assert [c.param for c in per_head] == ["features.1.0.attn.relative_position_bias_table"]
            assert new.relative_position_bias_table.shape == (49, 1)
            assert torch.equal(new.relative_position_bias_table, old.relative_position_bias_table[:, 1:])
        else:  # V2: the logit scale and the position-bias MLP's last rows; its hidden 512 are no MLP block
            names = {c.param.removeprefix("features.1.0.attn.") for c in per_head}
            assert names == {"logit_scale", "cpb_mlp.2.weight"}
            assert new.logit_scale.shape == (1, 1, 1) and new.cpb_mlp[2].weight.shape == (1, 512)
            assert not any("cpb_mlp" in b.name for b in blocks)
            # V2 zeroes the key bias in its forward: a key bias of the compact model stays without effect
            with torch.no_grad():
                new.qkv.bias[16:32] = 5.0
                assert rel(compact(x), functional_call(model, pc.apply_masks(pc.params_of(model),
                                                                              pc.head_masks(blocks, keep,
                                                                                            pc.params_of(model))),
                                                       (x,))) <= 1e-5


def test_value_rows_of_a_fused_qkv_silence_a_head_and_query_rows_do_not() -> None:
    model, x = build("timm_vit")
    params = pc.params_of(model)
    blocks = pc.head_blocks(model)
    attn = "blocks.0.attn"
    full = pc.head_masks(blocks, {attn: torch.tensor([True, False, True, True])}, params)
    qkv = full[f"{attn}.qkv.weight"].to_dense()  # [Q | K | V] rows of head 1 masked
    third = 48
    v_only = qkv.clone()
    v_only[:2 * third] = True  # only head 1's V rows (and bias) masked
    bias = full[f"{attn}.qkv.bias"].to_dense().clone()
    bias[:2 * third] = True
    masks = {f"{attn}.qkv.weight": pc.Mask(v_only, v_only.shape), f"{attn}.qkv.bias": pc.Mask(bias, bias.shape)}
    assert pc.heads_kept(blocks, masks)[attn].tolist() == [True, False, True, True]
    compact, report = pc.shrink_heads(model, masks, x)
    assert compact.blocks[0].attn.num_heads == 3 and report.output_error <= 1e-5
    q_only = qkv.clone()
    q_only[third:] = True  # only head 1's Q rows masked: the attention turns uniform, the head still speaks
    assert pc.heads_kept(blocks, {f"{attn}.qkv.weight": pc.Mask(q_only, q_only.shape)})[attn].all()


# ------------------------------------------------------------------------- PrunedMultiheadAttention


def _mha_case(seed: int) -> tuple[nn.MultiheadAttention, tuple, dict]:
    """A random configuration of nn.MultiheadAttention and of its call (masks, weights, causal hint)."""
    g = torch.Generator().manual_seed(seed)

    def pick(*options: object) -> object:
        return options[int(torch.randint(len(options), (1,), generator=g))]

    batch_first, batched, bias, self_attn = pick(True, False), pick(True, False), pick(True, False), pick(True, False)
    torch.manual_seed(seed)
    mha = nn.MultiheadAttention(16, 4, bias=bias, batch_first=batch_first).eval()  # type: ignore[arg-type]
    n, tgt = 2, 5
    src = tgt if self_attn else 7

    def seq(length: int) -> torch.Tensor:
        shape = ((n, length) if batch_first else (length, n)) if batched else (length,)
        return torch.randn(*shape, 16, generator=g)

    query = seq(tgt)
    key = query if self_attn else seq(src)
    value = key if self_attn else seq(src)
    kwargs: dict = {"need_weights": pick(True, False), "average_attn_weights": pick(True, False)}
    padding = pick(None, "bool", "float")
    if padding is not None:
        pad = torch.zeros(n if batched else 1, src, dtype=torch.bool)
        pad[:, -1] = True  # never a whole row
        pad = pad if batched else pad[0]
        kwargs["key_padding_mask"] = pad if padding == "bool" else pad.float().masked_fill(pad, float("-inf"))
    mask = pick(None, "2d", "3d", "causal")
    if mask == "2d" or (mask == "causal" and not self_attn):
        kwargs["attn_mask"] = torch.randn(tgt, src, generator=g)
    elif mask == "3d":
        kwargs["attn_mask"] = torch.randn((n if batched else 1) * 4, tgt, src, generator=g)
    elif mask == "causal":
        kwargs["attn_mask"] = nn.Transformer.generate_square_subsequent_mask(tgt)
        kwargs["is_causal"] = True
    if padding == "bool" and "attn_mask" in kwargs and kwargs["attn_mask"].is_floating_point():
        kwargs["attn_mask"] = kwargs["attn_mask"] > 1.0  # nn.MultiheadAttention wants the two of one type
    if padding == "float" and "attn_mask" in kwargs and not kwargs["attn_mask"].is_floating_point():
        kwargs["attn_mask"] = kwargs["attn_mask"].float()
    return mha, (query, key, value), kwargs


@pytest.mark.parametrize("seed", range(48))
def test_pruned_multihead_attention_with_every_head_is_nn_multihead_attention(seed: int) -> None:
    mha, args, kwargs = _mha_case(seed)
    same = pc.PrunedMultiheadAttention.from_module(mha)
    for train in (False, True):  # eval may take torch's fast path, training never does
        mha.train(train), same.train(train)
        expected, expected_w = mha(*args, **kwargs)
        got, got_w = same(*args, **kwargs)
        torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-4)
        assert (got_w is None) == (expected_w is None), kwargs
        if got_w is not None:
            torch.testing.assert_close(got_w, expected_w, atol=1e-5, rtol=1e-4)


class _Attend(nn.Module):
    """Self-attention called with a per-head (3D) mask."""

    def __init__(self) -> None:
        super().__init__()
        self.attn = nn.MultiheadAttention(16, 4, batch_first=True)

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        return self.attn(x, x, x, attn_mask=mask, need_weights=False)[0]


def test_pruned_heads_read_their_own_rows_of_a_per_head_mask_and_return_their_weights() -> None:
    torch.manual_seed(0)
    model = _Attend().eval()
    x, mask = torch.randn(2, 5, 16), torch.randn(2 * 4, 5, 5)
    params = pc.params_of(model)
    blocks = pc.head_blocks(model)
    masks = pc.head_masks(blocks, {"attn": torch.tensor([False, True, False, True])}, params)
    compact, report = pc.shrink_heads(model, masks, (x, mask))
    assert isinstance(compact.attn, pc.PrunedMultiheadAttention) and compact.attn.source_heads == (1, 3)
    masked = pc.apply_masks(params, masks)
    with torch.no_grad():
        out = compact(x, mask)
        assert report.output_error <= 1e-5 and rel(out, functional_call(model, masked, (x, mask))) <= 1e-5
        call = {"attn_mask": mask, "average_attn_weights": False}
        _, masked_w = functional_call(model.attn, {k[5:]: v for k, v in masked.items()}, (x, x, x), call)
        _, weights = compact.attn(x, x, x, **call)
        torch.testing.assert_close(weights, masked_w[:, [1, 3]])  # the kept heads' weights
        per_kept = mask.reshape(2, 4, 5, 5)[:, [1, 3]].reshape(4, 5, 5)  # a mask already of the kept heads
        torch.testing.assert_close(compact.attn(x, x, x, attn_mask=per_kept)[0], out)


def test_transformer_encoder_layer_keeps_off_its_fused_kernel() -> None:
    torch.manual_seed(0)
    layer = nn.TransformerEncoderLayer(16, 4, dim_feedforward=32, batch_first=True, dropout=0.0).eval()
    x = torch.randn(2, 5, 16)
    params = pc.params_of(layer)
    blocks = pc.head_blocks(layer)
    masks = pc.head_masks(blocks, {"self_attn": torch.tensor([True, False, True, False])}, params)
    compact, report = pc.shrink_heads(layer, masks, x)
    with torch.inference_mode():  # where nn.TransformerEncoderLayer takes its fast path
        masked = functional_call(layer, pc.apply_masks(params, masks), (x,))
        assert rel(compact(x), masked) <= 1e-5 and report.output_error <= 1e-5


@pytest.mark.parametrize("v2", [False, True], ids=["v1", "v2"])
def test_pruned_window_attention_with_every_head_is_torchvision_s(v2: bool) -> None:
    model = trained_like(_swin(v2))
    x = torch.randn(2, 10, 10, 32)  # pads to the 4x4 windows
    for attn in (model.features[1][0].attn, model.features[1][1].attn):  # unshifted, shifted
        same = pc.PrunedWindowAttention.from_module(attn)
        for train in (False, True):
            attn.train(train), same.train(train)
            torch.testing.assert_close(same(x), attn(x), atol=1e-5, rtol=1e-4)
        assert set(dict(same.named_parameters())) == set(dict(attn.named_parameters()))


# ---------------------------------------------------------------------------------------- refusals


def test_unsupported_layouts_are_left_out_saying_why() -> None:
    kdim = nn.MultiheadAttention(16, 4, kdim=8, vdim=8)
    with pytest.raises(ValueError, match=r"kdim/vdim \(8/8\) differ from embed_dim \(16\)"):
        pc.PrunedMultiheadAttention.from_module(kdim)
    with pytest.raises(ValueError, match="add_bias_kv=True"):
        pc.PrunedMultiheadAttention.from_module(nn.MultiheadAttention(16, 4, add_bias_kv=True))
    with pytest.raises(ValueError, match="add_zero_attn=True"):
        pc.PrunedMultiheadAttention.from_module(nn.MultiheadAttention(16, 4, add_zero_attn=True))
    with pytest.raises(ValueError, match=r"left out: 'a' \(nn.MultiheadAttention\): kdim/vdim"):
        pc.head_blocks(nn.ModuleDict({"a": kdim}))
    timm_layers = pytest.importorskip("timm.layers")
    scale_norm = timm_layers.Attention(16, 4, scale_norm=True, norm_layer=nn.LayerNorm)
    with pytest.raises(ValueError, match=r"its child 'norm' \(LayerNorm\) is not a known part"):
        pc.head_blocks(nn.ModuleDict({"a": scale_norm}))
    glu = timm_layers.GluMlp(16, 32)
    with pytest.raises(ValueError, match="fc1's 32 outputs are not fc2's 16 inputs"):
        pc.head_blocks(nn.ModuleDict({"m": glu}))
    own = timm_layers.Attention(16, 4)
    own.register_parameter("q_bias", nn.Parameter(torch.zeros(16)))
    with pytest.raises(ValueError, match=r"its own tensors \['q_bias'\] are not known per-head parameters"):
        pc.head_blocks(nn.ModuleDict({"a": own}))


def test_pruned_modules_refuse_bad_arguments() -> None:
    attn = pc.PrunedMultiheadAttention(16, 2, 4, batch_first=True)
    x = torch.randn(2, 5, 16)
    with pytest.raises(RuntimeError, match=r"attn_mask has shape \(3, 5, 5\), expected"):
        attn(x, x, x, attn_mask=torch.zeros(3, 5, 5))
    with pytest.raises(RuntimeError, match="pass attn_mask too"):
        attn(x, x, x, is_causal=True)
    with pytest.raises(TypeError, match="key_padding_mask must be a bool or floating-point"):
        attn(x, x, x, key_padding_mask=torch.zeros(2, 5, dtype=torch.long))
    with pytest.raises(ValueError, match="source_heads names 1 heads, num_heads is 2"):
        pc.PrunedMultiheadAttention(16, 2, 4, source_heads=[0])
    with pytest.raises(ValueError, match=r"are not \[Q \| K \| V\] of 2 heads"):
        pc.PrunedWindowAttention(nn.Linear(8, 12), nn.Linear(8, 8), num_heads=2, window_size=[2, 2],
                                 shift_size=[0, 0], relative_position_index=torch.zeros(16, dtype=torch.long),
                                 relative_position_bias_table=torch.zeros(9, 2))
    with pytest.raises(ValueError, match="relative_position_bias_table \\(V1\\) or logit_scale"):
        pc.PrunedWindowAttention(nn.Linear(8, 24), nn.Linear(8, 8), num_heads=2, window_size=[2, 2],
                                 shift_size=[0, 0], relative_position_index=torch.zeros(16, dtype=torch.long))
