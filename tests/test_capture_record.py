"""Capture by recording a real run (``method="record"``), and ``"auto"``'s fall back to it.

Hugging Face models (small configs, random weights, nothing downloaded) that torch.fx cannot trace
are captured from dict inputs and give dependency sets; a forward full of functional ops (our own
version of the model in NNI 2.10's ``test_auto_conv.py``) goes through dependency-aware L1 masks,
``propagate`` and ``shrink``; on the CNN test models a recording gives what fx gives.
"""

from __future__ import annotations

import logging

import pytest
import torch
import torch.fx as fx
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call

import purecompress as pc
from purecompress.graph import (
    METHODS,
    GraphCaptureError,
    bind_inputs,
    capture,
    capture_info,
    channel_dependency,
    group_dependency,
    propagate,
    shrink,
)
from purecompress.pruning import allocate_dependency_aware
from tests import test_dependency as deps
from tests.test_shrink import CASES, l1_masks, randomize

pytestmark = pytest.mark.usefixtures("one_thread")


def replay(gm: fx.GraphModule, model: nn.Module, example: object) -> object:
    """Run a captured graph on the inputs it was captured with (placeholders: defaults filled in)."""
    bound = bind_inputs(model, example)
    bound.apply_defaults()
    with torch.no_grad():
        return fx.Interpreter(gm).run(*bound.args, *bound.kwargs.values())


def called(gm: fx.GraphModule) -> list[str]:
    return [str(n.target) for n in gm.graph.nodes if n.op == "call_module"]


# -- Hugging Face models ---------------------------------------------------------------------------

transformers = pytest.importorskip("transformers", reason="transformers builds the HF models")

IDS = torch.randint(0, 100, (2, 8), generator=torch.Generator().manual_seed(0))
MASK = torch.tensor([[1] * 8, [1] * 6 + [0] * 2])
TEXT = {"input_ids": IDS, "attention_mask": MASK}


def hf(name: str) -> nn.Module:
    torch.manual_seed(0)
    t = transformers
    gpt2 = dict(vocab_size=100, n_embd=32, n_layer=2, n_head=4, n_positions=64, bos_token_id=0, eos_token_id=0)
    make = {
        "bert": lambda: t.BertModel(t.BertConfig(vocab_size=100, hidden_size=32, num_hidden_layers=2,
                                                 num_attention_heads=4, intermediate_size=64,
                                                 max_position_embeddings=64)),
        "gpt2": lambda: t.GPT2Model(t.GPT2Config(**gpt2)),
        "gpt2_lm": lambda: t.GPT2LMHeadModel(t.GPT2Config(**gpt2)),
        "vit": lambda: t.ViTModel(t.ViTConfig(image_size=16, patch_size=4, hidden_size=32, num_hidden_layers=2,
                                              num_attention_heads=4, intermediate_size=64)),
        "llama": lambda: t.LlamaForCausalLM(t.LlamaConfig(vocab_size=100, hidden_size=32, intermediate_size=64,
                                                          num_hidden_layers=2, num_attention_heads=4,
                                                          num_key_value_heads=2, max_position_embeddings=64)),
    }[name]
    return make().eval()


def layers(model: nn.Module, *types: type[nn.Module] | str) -> list[str]:
    """Names of the modules of the given types (or class names), in model order."""
    return [n for n, m in model.named_modules()
            if any(isinstance(m, t) if isinstance(t, type) else type(m).__name__ == t for t in types)]


def check_hf_capture(model: nn.Module, example: dict[str, torch.Tensor], output: str) -> fx.GraphModule:
    """Auto capture records the run (fx fails), keeps every layer a call, and replays the forward."""
    gm = capture(model, example)
    info = capture_info(gm)
    assert info.method == "record" and info.reason.startswith("torch.fx failed: torch.fx cannot trace")
    assert set(layers(model, nn.Linear, nn.Embedding, nn.LayerNorm, nn.Conv2d, "Conv1D")) <= set(called(gm))
    with torch.no_grad():
        expected = getattr(model(**example), output)
    assert torch.equal(replay(gm, model, example)[output], expected)
    return gm


def test_bert_dict_inputs_and_its_dependency_sets() -> None:
    model = hf("bert")
    gm = check_hf_capture(model, TEXT, "last_hidden_state")
    # token_type_ids[:, :seq_length]: a slice by a computed length, fx's 'slice indices' failure
    assert any(n.op == "get_attr" and n.target == "embeddings.token_type_ids" for n in gm.graph.nodes)
    layer = "encoder.layer.{}.{}".format
    residual = tuple(layer(i, part) for i in (0, 1) for part in ("attention.output.dense", "output.dense"))
    expected = [(layer(0, f"attention.self.{p}"),) for p in ("query", "key", "value")]
    expected += [residual, (layer(0, "intermediate.dense"),)]
    expected += [(layer(1, f"attention.self.{p}"),) for p in ("query", "key", "value")]
    expected += [(layer(1, "intermediate.dense"),), ("pooler.dense",)]
    assert channel_dependency(gm) == expected  # the same sets as NNI's (tests/compat/test_dependency_parity.py)
    assert channel_dependency(model, TEXT) == expected


@pytest.mark.parametrize("name", ["gpt2", "gpt2_lm"])
def test_gpt2_conv1d_layers_are_module_calls(name: str) -> None:
    model = hf(name)
    gm = check_hf_capture(model, TEXT, "last_hidden_state" if name == "gpt2" else "logits")
    shapes = {str(n.target): tuple(n.meta["tensor_meta"].shape) for n in gm.graph.nodes if n.op == "call_module"}
    prefix = "h" if name == "gpt2" else "transformer.h"
    assert shapes[f"{prefix}.0.attn.c_attn"] == (2, 8, 96) and shapes[f"{prefix}.1.mlp.c_fc"] == (2, 8, 128)
    # Conv1D mixes features: no channel passes through it, so only a Linear head is a producer
    assert channel_dependency(gm) == ([] if name == "gpt2" else [("lm_head",)])


def test_vit_pixel_values_dict() -> None:
    model = hf("vit")
    gm = check_hf_capture(model, {"pixel_values": torch.randn(2, 3, 16, 16)}, "last_hidden_state")
    sets = channel_dependency(gm)
    residual = [s for s in sets if len(s) > 1]
    assert len(residual) == 1 and len(residual[0]) == 4  # attention output and MLP output of both layers
    assert ("embeddings.patch_embeddings.projection",) in sets
    assert sorted(n for s in sets for n in s) == sorted(layers(model, nn.Linear, nn.Conv2d))


def test_llama_swiglu_gate_and_up_share_channels() -> None:
    model = hf("llama")
    gm = check_hf_capture(model, TEXT, "logits")
    sets = channel_dependency(gm)
    for i in (0, 1):
        assert (f"model.layers.{i}.mlp.gate_proj", f"model.layers.{i}.mlp.up_proj") in sets
        assert all((f"model.layers.{i}.self_attn.{p}_proj",) in sets for p in "qkv")
    assert tuple(f"model.layers.{i}.{p}" for i in (0, 1) for p in ("self_attn.o_proj", "mlp.down_proj")) in sets
    assert ("lm_head",) in sets


# -- a forward full of functional ops --------------------------------------------------------------


class FunctionalOps(nn.Module):
    """Our version of the model of NNI 2.10's test_auto_conv.py: fx fails on ``int()`` of a size."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1, self.conv2 = nn.Conv2d(1, 6, 5), nn.Conv2d(6, 16, 5)
        self.fc1, self.fc2 = nn.Linear(16 * 4 * 4, 64), nn.Linear(64, 10)
        self.pool = nn.MaxPool2d(2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x - torch.ones_like(x) + 0.1 * torch.rand_like(x) + torch.zeros_like(x)
        x = x.contiguous(memory_format=torch.channels_last)
        x = torch._C._nn.upsample_bilinear2d(x, (28, 28), False)
        x = F.adaptive_avg_pool2d(torch._C._nn.upsample_nearest2d(x, (28, 28)), (28, 28))
        x = torch.transpose(torch.transpose(torch.sigmoid(torch.exp(x)), 1, 2), 1, 2)
        x = F.max_pool2d(F.avg_pool2d(x, 3, 1, padding=1), 3, 1, padding=1)
        x = self.conv1(x.to(torch.float32))
        x = self.pool(F.relu(x)) + self.pool(F.gelu(x)) + self.pool(F.leaky_relu(x))
        x = self.conv2((x + 1e-5) * 1.00001)
        x = (self.pool(F.silu(x)) - self.pool(torch.tanh(x)) - 1e-5) / 1.00001
        x = torch.permute(torch.permute(x, (0, 2, 3, 1)), (0, 3, 1, 2))
        x = torch.mean(torch.unsqueeze(torch.select(torch.unsqueeze(x, dim=1), 1, 0), 1), dim=1)
        x = torch.squeeze(torch.unsqueeze(torch.sum(torch.unsqueeze(x, 1), dim=1, dtype=torch.float32), 1), 1)
        x = torch.flatten(x, 1)
        x = x.reshape(x.shape).view(-1, x.size(1))
        x = F.softmax(self.fc2(F.relu(self.fc1(x))), dim=1)
        half = int(x.size(1) / 2)
        x = torch.cat((x[:, 0:half], x[:, half : x.size(1)]), dim=1).type_as(x)
        x = x / torch.sum(x, dim=x.dim() - 1, keepdim=True).expand_as(x)
        return torch.constant_pad_nd(torch.matmul(x, x.t()), (1, 1, 1, 1), 3.14159)


def seeded(fn: object, *args: object) -> torch.Tensor:
    torch.manual_seed(5)  # the forward draws noise: the same draws for every model compared
    with torch.no_grad():
        return fn(*args)  # type: ignore[operator]


def rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).norm() / b.norm())


def test_functional_ops_through_dependency_aware_masks_propagate_and_shrink() -> None:
    torch.manual_seed(0)
    model, x = FunctionalOps().eval(), torch.rand(3, 1, 28, 28)
    with pytest.raises(GraphCaptureError, match="int"):
        capture(model, x, method="fx")
    plan = pc.select(model, pc.from_config_list([{"sparsity": 0.5, "op_types": ["Conv2d"]}]))
    params = pc.params_of(model)
    masks = allocate_dependency_aware(pc.l1_norm(params, plan), 0.5, channel_sets=channel_dependency(model, x),
                                      groups=group_dependency(model, x))
    masks = pc.bias_masks(masks, {k: v for e in plan for k, v in e.params.items()})
    full = propagate(model, masks, x)
    assert full.masks["fc1.weight"].keep.float().mean() == 0.5  # conv2's channels followed through to fc1
    compact, report = shrink(model, masks, x)
    assert (compact.conv1.out_channels, compact.conv2.in_channels, compact.conv2.out_channels) == (3, 3, 8)
    assert compact.fc1.in_features == 8 * 4 * 4 and report.replaced == ("conv1", "conv2", "fc1")
    y = seeded(compact, x)
    assert y.shape == (5, 5)
    assert rel(y, seeded(functional_call, model, pc.apply_masks(full.params, full.masks), (x,))) <= 1e-5
    assert rel(y, seeded(functional_call, model, pc.apply_masks(params, masks), (x,))) <= 1e-5


# -- record == fx where fx works -------------------------------------------------------------------

DEPENDENCY_MODELS = {
    "resnetish": (deps.ResNetish, deps.X),
    "cat_channels": (lambda: deps.Cat(1), deps.X),
    "cat_spatial": (lambda: deps.Cat(2), deps.X),
    "squeeze_excite": (lambda: deps.SqueezeExcite(True), deps.X),
    "spatial_attention": (deps.SpatialAttention, deps.X),
    "functional": (deps.Functional, deps.X),
    "chain": (deps.Chain, deps.X),
    "grouped": (deps.Grouped, deps.X[:, :, :4, :4]),
    "encoder_decoder": (deps.EncoderDecoder, deps.X),
}


@pytest.mark.parametrize("name", sorted(DEPENDENCY_MODELS))
def test_record_gives_fx_dependency_sets(name: str) -> None:
    make, x = DEPENDENCY_MODELS[name]
    torch.manual_seed(0)
    model = make()
    fx_graph, recorded = capture(model, x, method="fx"), capture(model, x, method="record")
    assert capture_info(recorded).method == "record" and capture_info(fx_graph).method == "fx"
    assert called(recorded) == called(fx_graph)
    assert channel_dependency(recorded) == channel_dependency(fx_graph)
    assert group_dependency(recorded) == group_dependency(fx_graph)


@pytest.mark.parametrize("name", sorted(CASES))
def test_record_gives_fx_shrink_result(name: str) -> None:
    make, shape = CASES[name]
    torch.manual_seed(0)
    model, x = randomize(make()), torch.randn(shape)
    masks = l1_masks(model, x, 0.5, dependency=True)
    (a, ra), (b, rb) = (shrink(model, masks, x, capture_method=m) for m in ("fx", "record"))
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)
    assert (ra.replaced, ra.inexact, ra.layers) == (rb.replaced, rb.inexact, rb.layers)
    assert ra.output_error == rb.output_error
    assert ra.masks.keys() == rb.masks.keys() and all(torch.equal(ra.masks[k].keep, rb.masks[k].keep) for k in ra.masks)


# -- inputs, in-place ops, state -------------------------------------------------------------------


class TwoInputs(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.a, self.b = nn.Conv2d(3, 4, 1), nn.Conv2d(3, 4, 1)

    def forward(self, x: torch.Tensor, y: torch.Tensor | None = None, *, scale: float = 1.0) -> torch.Tensor:
        out = self.a(x) * scale
        return out if y is None else out + self.b(y)


class DictInput(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.a, self.b = nn.Conv2d(3, 4, 1), nn.Conv2d(3, 4, 1)

    def forward(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        return self.a(batch["image"]) + self.b(batch["other"])


@pytest.mark.parametrize("example", [
    (deps.X, deps.X), {"x": deps.X, "y": deps.X}, {"x": deps.X, "y": deps.X, "scale": 2.0}, [deps.X, deps.X],
])  # fmt: skip
def test_positional_and_keyword_inputs(example: object) -> None:
    model = TwoInputs()
    gm = capture(model, example, method="record")
    assert [n.target for n in gm.graph.nodes if n.op == "placeholder"] == ["x", "y", "scale"]
    assert channel_dependency(gm) == [("a", "b")]
    args = example if isinstance(example, (tuple, list)) else ()
    kwargs = example if isinstance(example, dict) else {}
    with torch.no_grad():
        assert torch.equal(replay(gm, model, example), model(*args, **kwargs))


def test_a_single_dict_input() -> None:
    model, batch = DictInput(), {"image": deps.X, "other": deps.X * 2}
    for method in METHODS:
        gm = capture(model, batch, method=method)
        assert channel_dependency(gm) == [("a", "b")]
        with torch.no_grad():
            assert torch.equal(replay(gm, model, batch), model(batch))


def test_a_dict_that_fits_nothing_is_a_type_error() -> None:
    with pytest.raises(TypeError, match=r"do not fit TwoInputs\.forward"):
        capture(TwoInputs(), {"x": deps.X, "z": deps.X})
    with pytest.raises(TypeError, match=r"do not fit DictInput\.forward"):
        capture(DictInput(), {"image": deps.X, "batch": deps.X})


class InPlace(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.a, self.b = nn.Conv2d(3, 4, 1), nn.Conv2d(4, 4, 1)
        self.register_buffer("calls", torch.zeros(()))
        self.scale = torch.tensor(2.0)  # a tensor attribute, not a buffer: a constant of the graph

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.calls += 1  # state the capture must put back
        y = self.a(x)
        y[:, :2] = 0.0  # item assignment
        y.add_(1.0).relu_()
        if float(y.mean()) > 100:  # a Python value computed from the input
            y = -y
        return self.b(y) * self.scale + y * self.scale


def test_inplace_ops_item_assignment_and_state() -> None:
    torch.manual_seed(0)
    model = InPlace().train()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    rng, x = torch.random.get_rng_state(), deps.X.clone()
    gm = capture(model, x)
    info = capture_info(gm)
    assert info.method == "record" and "Proxy" in info.reason
    assert any(s.startswith("Tensor.__float__") and "if float(y.mean()) > 100" in s for s in info.specialized)
    assert len(info.constants) == 1 and info.constants[0].startswith("_tensor_constant0 []")
    assert [n.target.__name__ for n in gm.graph.nodes if n.op == "call_function"][:1] == ["setitem_"]
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())  # calls put back
    assert model.training and torch.equal(rng, torch.random.get_rng_state()) and torch.equal(x, deps.X)
    assert not any(m._forward_hooks or m._forward_pre_hooks for m in model.modules())
    model.eval()
    with torch.no_grad():
        expected = model(deps.X)
    assert torch.equal(replay(gm, model, deps.X), expected)
    assert torch.equal(gm(deps.X), expected)  # the recorded graph is also runnable code
    assert channel_dependency(gm) == [("a", "b")]


class Scripted(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.a, self.b = nn.Conv2d(3, 4, 1), nn.Conv2d(4, 4, 1)
        self.act = torch.jit.script(nn.Hardswish())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.a(x)
        return self.b(self.act(y)) + y


@pytest.mark.filterwarnings("ignore:`torch.jit.script` is deprecated:DeprecationWarning")
def test_scripted_submodules_are_followed_op_by_op() -> None:
    model = Scripted().eval()
    gm = capture(model, deps.X, method="record")
    with torch.no_grad():
        assert torch.equal(replay(gm, model, deps.X), model(deps.X))
    assert channel_dependency(gm) == [("a", "b")]


# -- errors ----------------------------------------------------------------------------------------


class Opaque(nn.Module):
    """Runs an op outside torch's Python API, as a C++ extension does."""

    def __init__(self) -> None:
        super().__init__()
        self.a, self.b = nn.Conv2d(3, 4, 1), nn.Conv2d(4, 4, 1)
        self.ext = Extension()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.b(self.ext(self.a(x)))


class Extension(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        with torch._C.DisableTorchFunction():
            return torch.relu(x)


def test_an_op_the_recording_cannot_follow_is_named() -> None:
    with pytest.raises(GraphCaptureError, match=r"cannot follow op aten\.relu\.default in module 'ext'") as info:
        capture(Opaque(), deps.X, method="record")
    assert info.value.module == "ext" and info.value.op == "aten.relu.default"
    assert "module 'b'" in str(info.value)


class Counter(nn.Module):
    """Python state: every call scales by one more."""

    def __init__(self) -> None:
        super().__init__()
        self.calls = 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        return x * self.calls


def test_a_graph_that_does_not_replay_the_run_is_an_error() -> None:
    model = nn.Sequential(nn.Conv2d(3, 4, 1), Counter())
    assert channel_dependency(model, deps.X, capture_method="record") == [("0",)]  # followed op by op
    with pytest.raises(GraphCaptureError, match="does not reproduce output tensor 0"):
        capture(model, deps.X, method="record", leaf_modules=[Counter])  # the leaf runs again: 2x


def test_a_failing_forward_names_the_op_and_the_module() -> None:
    with pytest.raises(GraphCaptureError, match=r"failed at op .*conv2d in module 'a'") as info:
        capture(TwoInputs(), torch.randn(1, 5, 4, 4), method="record")
    assert info.value.module == "a" and "conv2d" in str(info.value.op)


def test_auto_logs_the_fall_back_and_method_is_checked(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.INFO, logger="purecompress.graph"):
        gm = capture(InPlace(), deps.X)
    assert capture_info(gm).method == "record"
    assert any("torch.fx failed" in r.getMessage() and "recording a run instead" in r.getMessage()
               for r in caplog.records)
    with pytest.raises(ValueError, match="method must be one of"):
        capture(InPlace(), deps.X, method="export")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="not a graph returned by capture"):
        capture_info(fx.symbolic_trace(nn.Linear(2, 2)))


def test_propagate_and_shrink_run_on_the_recorded_bert_graph() -> None:
    model = hf("bert")
    keep = torch.arange(64) % 2 == 0
    masks = {}
    for i in (0, 1):  # half of the MLP neurons of each layer
        masks[f"encoder.layer.{i}.intermediate.dense.weight"] = pc.Mask(keep.reshape(64, 1), (64, 32))
        masks[f"encoder.layer.{i}.intermediate.dense.bias"] = pc.Mask(keep, (64,))
    full = propagate(model, masks, TEXT).masks
    assert full["encoder.layer.1.output.dense.weight"].keep[0].tolist() == keep.tolist()  # its input columns
    compact, report = shrink(model, masks, TEXT)
    assert compact.encoder.layer[0].intermediate.dense.out_features == 32
    assert compact.encoder.layer[1].output.dense.in_features == 32
    with torch.no_grad():
        y = compact(**TEXT).last_hidden_state
        masked = functional_call(model, pc.apply_masks(pc.params_of(model), masks), (), TEXT).last_hidden_state
    assert rel(y, masked) <= 1e-5
    assert report.output_error == pytest.approx(rel(y, masked), abs=1e-6)  # measured on the ModelOutput


class _EvalCache(nn.Module):
    """timm LeViT's pattern: in eval mode the forward caches a tensor derived from a parameter."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 1)
        self.bias = nn.Parameter(torch.randn(4, 1, 1))
        self.cache: dict[str, torch.Tensor] = {}

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training:
            if "b" not in self.cache:
                self.cache["b"] = self.bias * 2
            self.seen = x.shape[0]
            return self.conv(x) + self.cache["b"]
        return self.conv(x) + self.bias * 2


@pytest.mark.parametrize("method", ["fx", "record"])
def test_capture_leaves_no_cache_entry_or_attribute_in_the_model(method: str) -> None:
    import copy

    model = _EvalCache().eval()
    x = torch.randn(2, 3, 4, 4)
    gm = capture(model, x, method=method)
    assert model.cache == {} and not hasattr(model, "seen")  # under fx the cache would hold a Proxy
    twin = copy.deepcopy(model)  # a Proxy in the cache made deepcopy fail ('_modules' missing)
    with torch.no_grad():
        assert torch.equal(replay(gm, model, x), model(x)) and torch.equal(twin(x), model(x))


def test_tracing_quantization_sites_leaves_the_models_cache_empty() -> None:
    import purecompress.quant as pq

    model = _EvalCache().eval()
    q = pq.qat(model, [{"quant_types": ["weight", "input"], "quant_bits": 8, "op_types": ["Conv2d"]}], warn=False)
    assert q.sites is not None
    assert model.cache == {}  # traced at construction: the shells share the user's cache dict
    params = {k: v.detach() for k, v in model.named_parameters()}
    y, _ = q(model, params, q.init(params), torch.randn(2, 3, 4, 4))
    assert torch.isfinite(y).all()
