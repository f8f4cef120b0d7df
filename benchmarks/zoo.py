"""The model zoo: capture, dependency-aware pruning, shrinking, QAT and QDQ export on real architectures.

Issue 13's measuring stick. Every model is built with random weights from code (torchvision
``weights=None``, timm ``pretrained=False``, Hugging Face models from small configs): nothing is
downloaded. Per model, in its own subprocess (a crash or a timeout is a row, not the end of the
sweep), one row:

Zero-initialised weights (torchvision ViT's head, timm's residual BatchNorm scales) get random
values first (:func:`trained_like`), as training would give them.

- **captured**: ``pc.capture`` on the example input and the method that ran (``fx`` / ``record``);
- **sets**: the dependency sets of channel ranges (``pc.channel_ranges``: the pieces of a
  concatenation, a split or a channel shuffle, depthwise convs coupled to their producers; with
  ``--prune-norms``, ``pc.channel_dependency(through_norms=True)``'s whole layers) joining more
  than one range of the pruned layers; ranges an op blocks are kept by the allocator; chains of
  ShuffleNetV2 units (``pc.shuffle_chains``) are decided as chains;
- 50% dependency-aware L1 channel pruning of every Conv/Linear but the classifier
  (``pc.l1_norm`` + ``pc.allocate_dependency_aware``; on transformers, which ``pc.head_blocks``
  finds, half of the attention heads and MLP neurons of every block by L1 instead, and of a hybrid's
  other layers, MobileViT's convolutions, half the channels too), then ``pc.shrink``:
  **masked vs compact** (``report.output_error``; with the count of inexact folds, constants of
  pruned channels folded at zero-padded borders, ``report.inexact``), **kept** (the fraction of output channels the
  pruned layers keep, min-max: asked 0.5), **dense** (layers shrink left with channels it was asked
  to remove, where the report says so), **params** and **MACs** after / before (the same counter,
  ``pc.count_flops_params``, for every model, which counts Conv/Linear module calls; where the
  ratio of every matmul and convolution of the forward, functional ones included, differs, as in
  ``nn.MultiheadAttention``, it follows as "all matmuls"), **latency** compact / dense;
- **Torch-Pruning** (``torch-pruning``, the reference peer, when installed) on the same model with
  the same ask (``MagnitudePruner``, L1, ratio 0.5, the classifier ignored): its MACs and latency
  after / before, or its error;
- **QAT**: one ``pq.qat`` training step (8-bit weights and inputs of every Conv/Linear) on the
  compact model; **QDQ**: ``pq.observer`` calibration, ``export_qdq_onnx``, onnxruntime's output
  against the fake-quantized PyTorch forward (max abs difference within one output step).

Install (on the CPU torch; see the README's "Model zoo" note)::

    pip install torch==2.13.0
    pip install -c <(echo torch==2.13.0) timm transformers torch-pruning
    pip install --no-deps torchvision==0.28.0   # imports through benchmarks.zoo_import's hook

Run::

    python benchmarks/zoo.py                        # the default list (a few per family)
    python benchmarks/zoo.py --all                  # every torchvision classification model, the timm list, HF
    python benchmarks/zoo.py --models resnet18 timm:efficientnet_b0 hf:bert local:mobilenet
    python benchmarks/zoo.py --out /tmp/zoo.md      # also write the markdown table
    python benchmarks/zoo.py --models convnext_tiny --prune-norms   # channels through LayerNorm too

The test suite runs a fast subset of the same pipeline (``tests/test_zoo.py``, :func:`run_model`).
"""

from __future__ import annotations

import argparse
import copy
import inspect
import json
import os
import subprocess
import sys
import tempfile
import time
import traceback
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from benchmarks import zoo_import  # noqa: E402
from benchmarks._timing import environment, interleaved_medians  # noqa: E402

#: timm models of issue 13 (``pretrained=False``).
TIMM = ("resnet50", "efficientnet_b0", "mobilenetv3_large_100", "convnext_tiny", "regnetx_002", "densenet121",
        "vit_tiny_patch16_224", "deit_tiny_patch16_224", "swin_tiny_patch4_window7_224", "resnext50_32x4d",
        "ghostnet_100", "mixnet_s", "repvgg_a0", "levit_128", "mobilevit_s", "poolformer_s12", "cspresnet50")
#: Hugging Face models built from small configs.
HF = ("bert", "gpt2", "vit", "llama")
#: The default run: a few of each family.
DEFAULT = ("resnet18", "mobilenet_v2", "efficientnet_b0", "shufflenet_v2_x0_5", "convnext_tiny",
           "timm:regnetx_002", "timm:mobilenetv3_large_100", "timm:efficientnet_b0", "timm:densenet121",
           "hf:bert", "hf:gpt2", "hf:vit", "hf:llama")
#: torchvision models whose fixed input size is 224 (the others run at ``--size``).
FIXED_224 = ("vit_", "swin_", "maxvit_")


def torchvision_models() -> list[str]:
    """Every torchvision classification model name."""
    tv = zoo_import.import_torchvision()
    return sorted(tv.models.list_models(module=tv.models))


# --------------------------------------------------------------------------------------------- build


def _hf_model(name: str) -> tuple[nn.Module, Any]:
    import transformers as tr

    ids = torch.randint(0, 100, (2, 16))
    if name == "bert":
        config = tr.BertConfig(vocab_size=100, hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
                               intermediate_size=128, max_position_embeddings=32)
        return tr.BertModel(config), {"input_ids": ids, "attention_mask": torch.ones_like(ids)}
    if name == "gpt2":
        config = tr.GPT2Config(vocab_size=100, n_embd=64, n_layer=2, n_head=4, n_positions=32)
        return tr.GPT2LMHeadModel(config), {"input_ids": ids}
    if name == "vit":
        config = tr.ViTConfig(image_size=32, patch_size=8, hidden_size=64, num_hidden_layers=2,
                              num_attention_heads=4, intermediate_size=128, num_channels=3)
        return tr.ViTModel(config), {"pixel_values": torch.randn(2, 3, 32, 32)}
    if name == "llama":
        config = tr.LlamaConfig(vocab_size=100, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                                num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=32)
        return tr.LlamaForCausalLM(config), {"input_ids": ids}
    raise ValueError(f"unknown Hugging Face model {name!r}; known: {', '.join(HF)}")


class _InvertedResidual(nn.Module):
    """MobileNetV2's block: pointwise expand, depthwise 3x3, pointwise project, residual."""

    def __init__(self, c: int, expand: int = 4) -> None:
        super().__init__()
        hidden = c * expand
        self.expand = nn.Sequential(nn.Conv2d(c, hidden, 1, bias=False), nn.BatchNorm2d(hidden), nn.ReLU6())
        self.depthwise = nn.Sequential(nn.Conv2d(hidden, hidden, 3, padding=1, groups=hidden, bias=False),
                                       nn.BatchNorm2d(hidden), nn.ReLU6())
        self.project = nn.Sequential(nn.Conv2d(hidden, c, 1, bias=False), nn.BatchNorm2d(c))

    def forward(self, x: Tensor) -> Tensor:
        return x + self.project(self.depthwise(self.expand(x)))


class _Basic(nn.Module):
    """ResNet's basic block."""

    def __init__(self, c: int) -> None:
        super().__init__()
        self.a = nn.Sequential(nn.Conv2d(c, c, 3, padding=1, bias=False), nn.BatchNorm2d(c), nn.ReLU())
        self.b = nn.Sequential(nn.Conv2d(c, c, 3, padding=1, bias=False), nn.BatchNorm2d(c))

    def forward(self, x: Tensor) -> Tensor:
        return torch.relu(x + self.b(self.a(x)))


def _local(name: str) -> tuple[nn.Module, Any]:
    """Small models of the same families, for machines without torchvision (the test suite's CI)."""
    def stem(c: int) -> list[nn.Module]:
        return [nn.Conv2d(3, c, 3, padding=1, bias=False), nn.BatchNorm2d(c), nn.ReLU()]

    def head(c: int) -> list[nn.Module]:
        return [nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(c, 10)]

    if name == "resnet":
        model = nn.Sequential(*stem(16), _Basic(16), _Basic(16), nn.Conv2d(16, 32, 3, 2, 1), nn.BatchNorm2d(32),
                              nn.ReLU(), _Basic(32), *head(32))
    elif name == "mobilenet":
        model = nn.Sequential(*stem(16), _InvertedResidual(16), _InvertedResidual(16), nn.Conv2d(16, 32, 1),
                              nn.BatchNorm2d(32), nn.ReLU6(), _InvertedResidual(32), *head(32))
    elif name == "vgg":
        model = nn.Sequential(*stem(16), nn.MaxPool2d(2), nn.Conv2d(16, 32, 3, padding=1), nn.BatchNorm2d(32),
                              nn.ReLU(), nn.MaxPool2d(2), nn.Flatten(), nn.Linear(32 * 4 * 4, 64), nn.ReLU(),
                              nn.Linear(64, 10))
    else:
        raise ValueError(f"unknown local model {name!r}; known: {', '.join(LOCAL)}")
    return model, torch.randn(2, 3, 16, 16)


#: Small models built here (``local:NAME``), no optional package needed.
LOCAL = ("resnet", "mobilenet", "vgg")


def build(spec: str, size: int = 64) -> tuple[nn.Module, Any]:
    """``(model in eval mode, example input)`` for ``name``, ``timm:name``, ``hf:name`` or ``local:name``."""
    family, _, name = spec.rpartition(":")
    torch.manual_seed(0)
    if family == "local":
        model, example = _local(name)
    elif family == "hf":
        model, example = _hf_model(name)
    elif family == "timm":
        zoo_import.install_import_hook()
        import timm

        model = timm.create_model(name, pretrained=False)
        cfg = getattr(model, "pretrained_cfg", {}) or {}
        fixed = cfg.get("fixed_input_size", False) or any(k in name for k in ("vit", "deit", "swin", "levit",
                                                                           "mobilevit"))
        side = cfg.get("input_size", (3, 224, 224))[-1] if fixed else size
        example = torch.randn(1, 3, side, side)
    elif family == "":
        tv = zoo_import.import_torchvision()
        model = tv.models.get_model(name, weights=None)
        side = 299 if name == "inception_v3" else 224 if name.startswith(FIXED_224) else size
        example = torch.randn(1, 3, side, side)
    else:
        raise ValueError(f"unknown model family {family!r} in {spec!r} (use timm:NAME, hf:NAME, local:NAME or a "
                         "torchvision name)")
    return trained_like(model).eval(), example


def trained_like(model: nn.Module) -> nn.Module:
    """Give zero-initialised weights random values, as training would (in place; returns ``model``).

    Libraries zero-init some layers so that a fresh model starts as an identity or a constant:
    torchvision's ViT head, timm's last BatchNorm scale of each residual block. With those zeros,
    every channel feeding them is dead in fact, and pruning removes whole layers
    (``EmptyLayerError``), which says nothing about a trained model. Weights (not biases) that are
    all zero get ``N(0, 0.02)``; all-zero BatchNorm / LayerNorm scales get ``U(0.5, 1.5)``.
    """
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for module in model.modules():
            weight = getattr(module, "weight", None)
            if not isinstance(weight, nn.Parameter) or bool(weight.ne(0).any()):
                continue
            if isinstance(module, (nn.modules.batchnorm._BatchNorm, nn.LayerNorm, nn.GroupNorm)):
                weight.copy_(torch.rand(weight.shape, generator=gen) + 0.5)
            else:
                weight.copy_(torch.randn(weight.shape, generator=gen) * 0.02)
    return model


def classifier(model: nn.Module) -> str | None:
    """The name of the model's last Linear (its classifier or LM head), kept dense; a model without
    one (SqueezeNet classifies with a 1x1 convolution) gives its last Conv2d."""
    for kind in (nn.Linear, nn.Conv2d):
        names = [n for n, m in model.named_modules() if isinstance(m, kind)]
        if names:
            return names[-1]
    return None


# ------------------------------------------------------------------------------------------ pipeline


def _first_tensor(out: Any) -> Tensor:
    if isinstance(out, Tensor):
        return out
    if hasattr(out, "logits"):
        return out.logits
    if hasattr(out, "last_hidden_state"):
        return out.last_hidden_state
    if isinstance(out, dict):
        return _first_tensor(next(iter(out.values())))
    if isinstance(out, (tuple, list)):
        return _first_tensor(out[0])
    raise TypeError(f"no tensor in the model output ({type(out).__name__})")


def _call(model: nn.Module, example: Any) -> Any:
    return model(**example) if isinstance(example, dict) else model(example)


def _macs(model: nn.Module, example: Any) -> int | None:
    import purecompress as pc

    if isinstance(example, dict):
        return None  # the counter takes positional inputs; the HF rows use shrink's own count
    return int(pc.count_flops_params(model, example).flops)


def _all_macs(model: nn.Module, example: Any) -> int:
    """Multiply-accumulates of every matmul and convolution of one forward, functional ones
    included (``nn.MultiheadAttention``'s projections, attention scores), from torch's
    ``FlopCounterMode`` (2 FLOPs per multiply-accumulate). Two gaps of its table are closed here:
    ``nn.MultiheadAttention``'s fused fast path (``_native_multi_head_attention``, counted as 0) is
    turned off for the count, and CPU flash attention gets the formula of the other SDPA kernels."""
    from torch.utils import flop_counter as fc

    def cpu_flash(query: Any, key: Any, value: Any, *args: Any, **kwargs: Any) -> int:
        return fc.sdpa_flop_count(query, key, value)

    fastpath = torch.backends.mha.get_fastpath_enabled()
    counter = fc.FlopCounterMode(display=False, custom_mapping={
        torch.ops.aten._scaled_dot_product_flash_attention_for_cpu: cpu_flash})
    torch.backends.mha.set_fastpath_enabled(False)
    try:
        with counter, torch.no_grad():
            _call(model, example)
    finally:
        torch.backends.mha.set_fastpath_enabled(fastpath)
    return int(counter.get_total_flops()) // 2


def _kept(model: nn.Module, compact: nn.Module, pruned: Sequence[str]) -> tuple[float, float] | None:
    fractions = []
    for name in pruned:
        before, after = model.get_submodule(name), compact.get_submodule(name)
        out_before = getattr(before, "out_channels", getattr(before, "out_features", None))
        out_after = getattr(after, "out_channels", getattr(after, "out_features", None))
        if out_before:
            fractions.append(out_after / out_before)
    return (min(fractions), max(fractions)) if fractions else None


def _latency(models: dict[str, nn.Module], example: Any, rounds: int) -> dict[str, float]:
    steps: dict[str, Callable[[], object]] = {}
    for key, m in models.items():
        def step(m: nn.Module = m) -> object:
            with torch.inference_mode():
                return _call(m, example)
        steps[key] = step
    return interleaved_medians(steps, repeats=rounds, inner=1, warmup=1)


def _qat_step(model: nn.Module, example: Any) -> str:
    import purecompress as pc
    import purecompress.quant as pq

    trainable = {k for k, _ in model.named_parameters()}
    params = {k: v.clone().requires_grad_(k in trainable) for k, v in pc.params_of(model).items()}
    types = [t for t in ("Conv2d", "Linear") if t in {type(m).__name__ for m in model.modules()}]
    q = pq.qat(model, [{"quant_types": ["weight", "input"], "quant_bits": 8, "op_types": types}])
    state = q.init(params)
    args = (example,) if not isinstance(example, dict) else ()
    kwargs = example if isinstance(example, dict) else None
    out, state = q(model, params, state, args, kwargs)
    loss = _first_tensor(out).float().square().mean()
    loss.backward()
    grads = [p.grad for p in params.values() if p.requires_grad]
    if not grads or not all(g is not None and bool(torch.isfinite(g).all()) for g in grads[:3]):
        return "no finite grad"
    return "ok"


def _qdq(model: nn.Module, example: Any) -> str:
    import numpy as np
    import onnxruntime as ort

    import purecompress as pc
    from purecompress.quant import observer, quantized_call
    from purecompress.quant.onnx_export import export_qdq_onnx, qdq_targets

    last = classifier(model)
    types = [t for t in ("Conv2d", "Linear") if t in {type(m).__name__ for m in model.modules()}]
    configs: list[dict[str, Any]] = [{"quant_types": ["weight", "input"], "quant_bits": 8, "op_types": types}]
    if last is not None:
        configs.append({"quant_types": ["weight", "input", "output"], "quant_bits": 8, "op_names": [last]})
    transform = observer(model, configs)
    params = pc.params_of(model)
    state = transform.init(params)
    def fresh(v: Any) -> Any:
        return torch.randn_like(v) if isinstance(v, Tensor) and v.is_floating_point() else v

    if isinstance(example, dict):  # keyword inputs (Hugging Face); a decoder's cache is not an ONNX output
        cache = {"use_cache": False} if "use_cache" in inspect.signature(model.forward).parameters else {}
        args: tuple[Any, ...] = ()
        kwargs: dict[str, Any] = {**example, **cache}
        calibration = [((), {k: fresh(v) for k, v in kwargs.items()}) for _ in range(2)]
    else:
        args, kwargs = (example,), {}
        calibration = [((fresh(example),), {}) for _ in range(2)]
    for batch_args, batch_kwargs in calibration:
        _, state = quantized_call(transform, model, params, state, batch_args, batch_kwargs, training=True)
    with torch.no_grad():
        expected, _ = quantized_call(transform, model, params, state, args, kwargs, training=False)
    targets = qdq_targets(state)
    with tempfile.TemporaryDirectory() as tmp, warnings.catch_warnings():
        warnings.simplefilter("ignore")
        path = Path(tmp) / "model.onnx"
        export_qdq_onnx(model, args, path, kwargs=kwargs or None, **targets)
        session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        names = [i.name for i in session.get_inputs()]
        feed = {n: example[n].numpy() for n in names} if kwargs else {names[0]: example.numpy()}
        got = session.run(None, feed)[0]
    reference = _first_tensor(expected)
    diff = float(np.abs(got - reference.numpy()).max())
    # The compared output is the quantized classifier's (its values on the output grid: one step
    # is the tolerance), or a float output (an encoder's last hidden state): 1e-4 of its largest value.
    qp = targets["outputs"].get(last) if last is not None else None
    codes = reference / qp.scale + qp.zero_point if qp is not None else None
    if codes is not None and bool(((codes - codes.round()).abs() < 1e-3).all()):
        step, kind = float(qp.scale), "step"
    else:
        step, kind = 1e-4 * float(reference.abs().max()), "tolerance"
    return f"ok ({diff:.1e})" if diff <= step + 1e-6 else f"differs by {diff:.2e} ({kind} {step:.2e})"


def _torch_pruning(model: nn.Module, example: Any, last: str | None) -> tuple[nn.Module | None, str]:
    try:
        import torch_pruning as tp
    except ImportError:
        return None, "not installed"
    peer = copy.deepcopy(model)
    ignored = [peer.get_submodule(last)] if last else []
    try:
        pruner = tp.pruner.MagnitudePruner(peer, example_inputs=example,
                                           importance=tp.importance.MagnitudeImportance(p=1), pruning_ratio=0.5,
                                           ignored_layers=ignored, output_transform=_first_tensor)
        pruner.step()
        with torch.no_grad():
            _call(peer.eval(), example)
    except Exception as err:  # noqa: BLE001 - the peer's failure is a result
        return None, f"{type(err).__name__}: {str(err).splitlines()[0][:80] if str(err) else ''}"
    return peer, "ok"


def run_model(spec: str, *, size: int = 64, latency_rounds: int = 5, peer: bool = True, quant: bool = True,
              sparsity: float = 0.5, prune_norms: bool = False) -> dict[str, Any]:
    """One zoo row for ``spec`` (see the module docstring); never raises: a failed step is its message.

    ``prune_norms``: the dependency sets follow channels through LayerNorm / GroupNorm and layer
    scales (``channel_dependency(through_norms=True)``) and ``shrink`` removes them there
    (``prune_norms=True``; the compact model then differs from the masked one at those norms).
    """
    import purecompress as pc

    row: dict[str, Any] = {"model": spec}
    start = time.monotonic()
    try:
        model, example = build(spec, size)
    except Exception as err:  # noqa: BLE001
        row["error"] = f"build: {type(err).__name__}: {err}"
        return row
    with torch.no_grad():
        dense_out = _call(model, example)
    del dense_out
    try:
        graph = pc.capture(model, example)
        row["captured"] = pc.capture_info(graph).method
    except Exception as err:  # noqa: BLE001
        row["captured"] = f"no: {type(err).__name__}: {str(err)[:120]}"
        return row
    last = classifier(model)
    exclude = [{"exclude": True, "op_names": [last]}] if last else []
    present = {type(m).__name__ for m in model.modules()}
    types = [t for t in ("Conv2d", "Linear") if t in present]
    plan = pc.select(model, pc.from_config_list([{"sparsity": sparsity, "op_types": types}, *exclude]))
    params = pc.params_of(model)
    pruned = list(plan.modules)
    try:
        shuffles: list[Any] = []
        if prune_norms:
            sets: list[Any] = pc.channel_dependency(model, example, couple_depthwise=True, through_norms=True)
            row["sets"] = sum(1 for s in sets if len({*s} & {*pruned}) > 1)
        else:  # ranges of channels: the pieces of a concatenation, a split, a channel shuffle
            sets = pc.channel_ranges(model, example)
            shuffles = pc.shuffle_chains(model, example)
            row["sets"] = sum(1 for s in sets if len([r for r in s if r.name in pruned]) > 1)
            row["blocked"] = sorted({r.name for s in sets for r in s if r.blocked is not None and r.name in pruned})
        groups = pc.group_dependency(model, example)

        def channel_masks(targets: Any, chains: Any) -> dict[str, Any]:  # dependency-aware L1, biases too
            masks = pc.allocate_dependency_aware(pc.l1_norm(params, targets), sparsity, channel_sets=sets,
                                                 groups=groups, shuffles=chains)
            return pc.bias_masks(masks, {k: tuple(v.shape) for k, v in params.items() if k.endswith(".bias")})

        try:
            blocks = pc.head_blocks(model)
        except ValueError:  # no attention or MLP block of a known layout: a CNN
            blocks = None
        if blocks and any(b.kind == "attention" for b in blocks):  # transformer: half its heads, neurons (L1)
            scores = pc.head_scores(blocks, pc.level(params, pc.head_block_params(blocks)))
            masks = pc.head_masks(blocks, pc.allocate_heads(blocks, scores, sparsity), params)
            row["units"] = "heads+neurons"
            cut = set(pc.head_block_params(blocks))  # a hybrid's other layers (MobileViT's convs): channels
            pruned = [n for n in pruned if f"{n}.weight" not in cut]
            if pruned and not prune_norms:
                channels = {k: m for k, m in channel_masks([f"{n}.weight" for n in pruned], ()).items()
                            if not bool(m.keep.all())}
                pruned = [n for n in pruned if f"{n}.weight" in channels]
                masks = {**masks, **channels}
            else:
                pruned = []
        else:
            masks = channel_masks(plan, shuffles)
        compact, report = pc.shrink(model, masks, example, prune_norms=prune_norms)
    except Exception as err:  # noqa: BLE001
        if os.environ.get("ZOO_RAISE"):  # debugging a row: the whole traceback
            raise
        row["shrink"] = f"{type(err).__name__}: {str(err)[:160]}"
        return row
    row["masked_vs_compact"] = report.output_error
    row["inexact"] = dict(report.inexact)  # folds at zero-padded borders: exact=True keeps those channels
    row["kept"] = _kept(model, compact, pruned)
    row["dense_layers"] = dict(getattr(report, "dense", {}) or {})
    row["params"] = (report.params_before, report.params_after)
    macs_before, macs_after = _macs(model, example), _macs(compact, example)
    row["macs"] = (macs_before, macs_after) if macs_before else (report.flops_before, report.flops_after)
    row["all_macs"] = (_all_macs(model, example), _all_macs(compact, example))
    timed: dict[str, nn.Module] = {"dense": model, "compact": compact}
    if peer and isinstance(example, dict):
        row["tp"] = "not run (transformers need Torch-Pruning's per-model head setup)"
    elif peer:
        tp_model, status = _torch_pruning(model, example, last)
        row["tp"] = status
        if tp_model is not None:
            tp_macs = _macs(tp_model, example)
            row["tp_macs"] = tp_macs
            row["tp_params"] = sum(p.numel() for p in tp_model.parameters())
            timed["tp"] = tp_model
    if latency_rounds:
        row["latency"] = _latency(timed, example, latency_rounds)
    if quant:
        for key, fn in (("qat", _qat_step), ("qdq", _qdq)):
            try:
                row[key] = fn(compact, example)
            except Exception as err:  # noqa: BLE001
                row[key] = f"{type(err).__name__}: {str(err).splitlines()[0][:100] if str(err) else ''}"
    row["seconds"] = time.monotonic() - start
    return row


# -------------------------------------------------------------------------------------------- report


def _ratio(pair: Sequence[float | None] | None) -> str:
    if not pair or pair[0] in (None, 0) or pair[1] is None:
        return ""
    return f"{pair[1] / pair[0]:.2f}"


def format_row(row: dict[str, Any]) -> str:
    """One markdown row of the zoo table."""
    if "error" in row:
        return f"| {row['model']} | {row['error'][:100]} |" + " |" * 10
    cells = [row["model"], row.get("captured", "")]
    if "shrink" in row or "masked_vs_compact" not in row:
        cells += [str(row.get("sets", "")), row.get("shrink", "")[:120]] + [""] * 8
        return "| " + " | ".join(cells) + " |"
    kept = row.get("kept")
    lat = row.get("latency", {})
    macs = row.get("macs")
    dense = row.get("dense_layers", {})
    tp = row.get("tp", "")
    tp_cell = tp if tp != "ok" else (f"{row['tp_macs'] / macs[0]:.2f}" if macs and macs[0] and row.get("tp_macs")
                                     else "ok")
    tp_lat = f"{lat['tp'] / lat['dense']:.2f}" if "tp" in lat else ""
    cells += [
        str(row.get("sets", "")),
        f"{row['masked_vs_compact']:.1e}" + (f" ({len(row['inexact'])} inexact folds)" if row.get("inexact") else ""),
        "" if kept is None else f"{kept[0]:.2f}-{kept[1]:.2f}",
        f"{len(dense)}" + (f" ({next(iter(dense.values()))[:40]})" if dense else ""),
        _ratio(row.get("params")),
        _ratio(macs) + (f" (all matmuls {_ratio(row['all_macs'])})"
                        if row.get("all_macs") and _ratio(row["all_macs"]) != _ratio(macs) else ""),
        f"{lat['compact'] / lat['dense']:.2f}" if lat else "",
        tp_cell + (f" / {tp_lat}" if tp_lat else ""),
        row.get("qat", ""),
        row.get("qdq", ""),
    ]
    return "| " + " | ".join(cells) + " |"


HEADER = ("| model | captured | sets | masked vs compact | kept (asked 0.50) | dense layers "
          "| params after/before | MACs after/before | latency compact/dense | Torch-Pruning MACs / latency "
          "| QAT step | QDQ vs onnxruntime |\n"
          "|---|---|---:|---:|---|---|---:|---:|---:|---|---|---|")


def _run_isolated(spec: str, args: argparse.Namespace) -> dict[str, Any]:
    cmd = [sys.executable, __file__, "--one", spec, "--size", str(args.size), "--latency-rounds",
           str(args.latency_rounds), *(["--no-peer"] if args.no_peer else []),
           *(["--no-quant"] if args.no_quant else []), *(["--prune-norms"] if args.prune_norms else [])]
    try:
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=args.timeout, check=False,
                              env={**os.environ, "PYTHONWARNINGS": "ignore"})
    except subprocess.TimeoutExpired:
        return {"model": spec, "error": f"timed out after {args.timeout:.0f} s"}
    for line in reversed(done.stdout.splitlines()):
        if line.startswith("{"):
            return json.loads(line)
    tail = (done.stderr.strip().splitlines() or ["(no output)"])[-1]
    if done.returncode < 0 and not args.no_peer:  # killed (out of memory): once more without the peer
        row = _run_isolated(spec, argparse.Namespace(**{**vars(args), "no_peer": True}))
        if "error" not in row:
            row["tp"] = f"killed the row's process (signal {-done.returncode}); this row ran without it"
            return row
    return {"model": spec, "error": f"exit {done.returncode}: {tail[:100]}"}


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="*", help="names: torchvision NAME, timm:NAME, hf:NAME")
    parser.add_argument("--all", action="store_true", help="every torchvision classification model, timm list, HF")
    parser.add_argument("--size", type=int, default=64, help="input side for models without a fixed size")
    parser.add_argument("--latency-rounds", type=int, default=5)
    parser.add_argument("--timeout", type=float, default=900.0, help="seconds per model")
    parser.add_argument("--no-peer", action="store_true", help="skip Torch-Pruning")
    parser.add_argument("--no-quant", action="store_true", help="skip the QAT step and the QDQ export")
    parser.add_argument("--prune-norms", action="store_true",
                        help="prune channels through LayerNorm/GroupNorm (channel_dependency through_norms, shrink "
                             "prune_norms): changes their statistics")
    parser.add_argument("--out", type=Path, help="also write the table as markdown to this file")
    parser.add_argument("--one", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))
    if args.one:
        try:
            row = run_model(args.one, size=args.size, latency_rounds=args.latency_rounds, peer=not args.no_peer,
                            quant=not args.no_quant, prune_norms=args.prune_norms)
        except Exception:  # noqa: BLE001
            row = {"model": args.one, "error": traceback.format_exc().strip().splitlines()[-1][:120]}
        print(json.dumps(row, default=str))
        return 0
    if args.all:
        specs = [*torchvision_models(), *(f"timm:{n}" for n in TIMM), *(f"hf:{n}" for n in HF)]
    else:
        specs = list(args.models or DEFAULT)
    lines = [f"{environment()}; input {args.size}x{args.size} (224 where fixed); asked sparsity 0.5", "", HEADER]
    print("\n".join(lines), flush=True)
    for spec in specs:
        row = _run_isolated(spec, args)
        lines.append(format_row(row))
        print(lines[-1], flush=True)
    if args.out:
        args.out.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
