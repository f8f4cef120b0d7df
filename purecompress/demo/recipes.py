"""``purecompress demo``: train a small CNN on scikit-learn's digits, compress it, print a table.

Each row is one compression recipe applied to the same trained dense model: prune and fine-tune
briefly, or quantize to 8 bits (quantization-aware fine-tuning, or post-training calibration),
then evaluate. Everything runs through the functional core (``functional_call(model,
apply_masks(params, masks))``, ``QuantTransform`` calls); the dense model is never modified.
:data:`LEGEND` says what each column of the table means; the channel-pruned rows are also shrunk
into compact models (:func:`purecompress.shrink`), whose size the table shows next to the stored
(dense-layout) size.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable, Mapping
from pathlib import Path

import attrs
import torch
from safetensors.torch import save_file
from torch import Tensor, nn
from torch.func import functional_call

import purecompress as pc
import purecompress.quant as pq
from purecompress.demo.training import DemoData, accuracy, digits_data, make_cnn, train, train_quantized

__all__ = ["LEGEND", "SHRINKABLE", "DemoData", "Row", "compact_summary", "digits_data", "format_rows", "make_cnn",
           "pruned_layers", "quant_recipes", "recipes", "run_demo", "selected_sparsity", "stored_bytes"]

logger = logging.getLogger(__name__)


@attrs.frozen
class Row:
    """One line of the demo table (:data:`LEGEND` defines the columns).

    Attributes:
        name: the recipe.
        accuracy: top-1 accuracy on the held-out test images.
        sparsity: fraction of the weights of the pruned layers that are masked to zero; None for
            rows that prune nothing (dense, quantization).
        pruned_layers: which layers the recipe prunes (``'2 Conv2d'``); empty when none.
        params_kept, params_total: unmasked parameters and all parameters of the whole model.
        size_bytes: the parameters as stored: dense layout (float32, masked entries kept as
            zeros), or int8 quantized weights plus their float32 scales and zero points.
        compact_bytes: float32 bytes of the shrunk model (channels really removed); None where
            the recipe cannot be shrunk (unstructured sparsity, quantization).
        seconds: wall time of the recipe (the dense row: training).
        detail: per-layer report (printed with ``--verbose``).
        compact: one-line summary of the shrunk model.
    """

    name: str
    accuracy: float
    sparsity: float | None
    pruned_layers: str
    params_kept: int
    params_total: int
    size_bytes: int
    compact_bytes: int | None
    seconds: float
    detail: str = ""
    compact: str = ""


LEGEND = """\
accuracy     top-1 on the 450 held-out test images
sparsity     fraction of the weights of the pruned layers (next column) masked to zero; for the channel
             recipes that is the fraction of those layers' output channels removed ('-': nothing pruned)
pruned       the layers the recipe prunes (its config's op_types)
params kept  unmasked parameters of the whole model (all layers, biases and BatchNorm included) / all
stored KiB   the parameters as saved, dense layout: float32 with masked weights stored as zeros, or
             int8 quantized weights plus their float32 scales and zero points
compact KiB  float32 size after shrinking (pc.shrink removes the pruned channels and the inputs of the
             layers that read them); '-' where the sparsity is unstructured or nothing is pruned
seconds      wall time of the recipe (dense: training; the others: pruning or quantizing + fine-tuning)"""


def _report(model: nn.Module, params: Mapping[str, Tensor], masks: pc.Masks,
            plan: pc.Plan | None = None) -> pc.SparsityReport:
    """Sparsity of ``masks`` over the model's parameters (BatchNorm running stats not counted)."""
    names = {n for n, _ in model.named_parameters()}
    return pc.sparsity_report({k: v for k, v in params.items() if k in names}, masks, plan)


def selected_sparsity(params: Mapping[str, Tensor], masks: pc.Masks, plan: pc.Plan) -> float:
    """Fraction of the weights of the layers ``plan`` selects that ``masks`` prune (unmasked: dense).

    >>> net = nn.Sequential(nn.Linear(4, 4), nn.ReLU(), nn.Linear(4, 2))
    >>> plan = pc.select(net, pc.from_config_list([{'sparsity': 0.5, 'op_names': ['0']}]))
    >>> keep = torch.tensor([[True], [False], [True], [False]])
    >>> selected_sparsity(pc.params_of(net), {'0.weight': pc.Mask(keep, (4, 4))}, plan)
    0.5
    """
    targets = plan.targets()
    numel = sum(params[k].numel() for k in targets)
    kept = sum(int(masks[k].kept()) if k in masks else params[k].numel() for k in targets)
    return 1.0 - kept / numel if numel else 0.0


def pruned_layers(model: nn.Module, plan: pc.Plan) -> str:
    """The selected layers by type, in model order: ``'2 Conv2d, 2 Linear'``."""
    counts: dict[str, int] = {}
    for entry in plan.entries:
        kind = type(model.get_submodule(entry.module)).__name__
        counts[kind] = counts.get(kind, 0) + 1
    return ", ".join(f"{n} {kind}" for kind, n in counts.items())


#: The rows whose results are also shrunk into compact models (channel sparsity).
SHRINKABLE = ("l1-channel-50%", "taylor-channel-50%")

Recipe = Callable[[nn.Module, pc.Params, DemoData], tuple[pc.Params, pc.Masks, pc.Plan]]


def _one_shot(configs: list[dict[str, object]], metric: Callable[..., pc.Metrics], distribution: str,
              finetune_epochs: int, **kwargs: object) -> Recipe:
    def recipe(model: nn.Module, params: pc.Params, data: DemoData) -> tuple[pc.Params, pc.Masks, pc.Plan]:
        plan = pc.select(model, pc.from_config_list(configs))
        masks = pc.prune(params, plan, metric, distribution=distribution, **kwargs)  # type: ignore[arg-type]
        tuned = train(model, params, data, epochs=finetune_epochs, masks=masks, lr=1e-3)
        return tuned, masks, plan

    return recipe


def _taylor(configs: list[dict[str, object]], finetune_epochs: int) -> Recipe:
    """Data-driven: first-order Taylor importance from the gradients of a few training batches."""

    def recipe(model: nn.Module, params: pc.Params, data: DemoData) -> tuple[pc.Params, pc.Masks, pc.Plan]:
        plan = pc.select(model, pc.from_config_list(configs))
        batches = list(zip(data.x_train.split(64), data.y_train.split(64), strict=True))[:8]
        stats = pc.collect_taylor(model, params, batches, nn.functional.cross_entropy, plan)
        masks = pc.allocate(pc.taylor_fo(stats), plan)
        tuned = train(model, params, data, epochs=finetune_epochs, masks=masks, lr=1e-3)
        return tuned, masks, plan

    return recipe


def _agp(configs: list[dict[str, object]], finetune_epochs: int, final: float) -> Recipe:
    """Gradual: AGP raises level sparsity to ``final`` over the fine-tuning epochs (one mask update each)."""

    def recipe(model: nn.Module, params: pc.Params, data: DemoData) -> tuple[pc.Params, pc.Masks, pc.Plan]:
        plan = pc.select(model, pc.from_config_list(configs))
        prune = pc.agp(final, plan, begin=-1, end=finetune_epochs - 1)  # epoch e prunes to s((e+1)/N)
        state = prune.init(params)
        tuned = dict(params)
        for epoch in range(finetune_epochs):
            tuned, state = prune.update(tuned, state, step=epoch)
            tuned = train(model, tuned, data, epochs=1, masks=state.masks, lr=1e-3, seed=epoch)
        return tuned, state.masks, plan

    return recipe


def recipes(finetune_epochs: int = 3) -> dict[str, Recipe]:
    """The demo's rows after the dense baseline, in order."""
    return {
        "l1-channel-50%": _one_shot([{"sparsity": 0.5, "op_types": ["Conv2d"]}], pc.l1_norm, "per_layer",
                                    finetune_epochs),
        "level-80%": _one_shot([{"sparsity": 0.8, "op_types": ["Conv2d", "Linear"]}], pc.level, "per_layer",
                               finetune_epochs),
        "taylor-channel-50%": _taylor([{"sparsity": 0.5, "op_types": ["Conv2d"]}], finetune_epochs),
        "agp-level-80%": _agp([{"sparsity": 0.8, "op_types": ["Conv2d", "Linear"]}], finetune_epochs, 0.8),
    }


QUANT_CONFIG = [{"quant_types": ["weight", "input"], "quant_bits": 8, "op_types": ["Conv2d", "Linear"]}]

QuantRecipe = Callable[[nn.Module, pc.Params, DemoData], tuple[pq.QuantTransform, pc.Params, pq.QuantState]]


def _qat_recipe(finetune_epochs: int) -> QuantRecipe:
    """8-bit QAT (NNI's QAT_Quantizer math): weights and inputs of every conv and linear layer."""

    def recipe(model: nn.Module, params: pc.Params, data: DemoData) -> tuple[
            pq.QuantTransform, pc.Params, pq.QuantState]:
        q = pq.qat(model, QUANT_CONFIG)
        tuned, state = train_quantized(model, q, params, data, epochs=finetune_epochs)
        return q, tuned, state

    return recipe


def _ptq_recipe(batches: int = 8) -> QuantRecipe:
    """8-bit post-training calibration (NNI's ObserverQuantizer): min/max over a few training batches."""

    def recipe(model: nn.Module, params: pc.Params, data: DemoData) -> tuple[
            pq.QuantTransform, pc.Params, pq.QuantState]:
        q = pq.observer(model, QUANT_CONFIG)
        state = q.init(params)
        model.eval()  # BatchNorm uses its running statistics while calibrating
        with torch.no_grad():
            for x in data.x_train.split(64)[:batches]:
                _, state = q(model, params, state, x, training=True)
        return q, dict(params), state

    return recipe


def quant_recipes(finetune_epochs: int = 3) -> dict[str, QuantRecipe]:
    """The demo's quantization rows, after the pruning rows."""
    return {"qat-8bit": _qat_recipe(finetune_epochs), "ptq-8bit": _ptq_recipe()}


def stored_bytes(model: nn.Module, q: pq.QuantTransform | None = None, state: pq.QuantState | None = None) -> int:
    """Bytes of the model's parameters as stored: float32 (4 bytes), or ``bits / 8`` per element of
    each quantized weight plus its float32 scale and zero point (all quantized tensors' parameters
    counted, activations' included)."""
    bits = {f"{e.module}.weight": e.config.specs["weight"].bits for e in (q.plan if q else ())
            if "weight" in e.config.specs}
    total = 0
    for name, p in model.named_parameters():
        total += -(-p.numel() * bits[name] // 8) if name in bits else 4 * p.numel()
    for ts in (state.tensors.values() if state else ()):
        if ts.qparams is not None:
            total += 4 * (ts.qparams.scale.numel() + ts.qparams.zero_point.numel())
    return total


def run_demo(out_dir: str | Path = "purecompress-out", *, epochs: int = 8, finetune_epochs: int = 3,
             seed: int = 0, verbose: bool = False) -> list[Row]:
    """Train the dense CNN, apply every recipe, write files to ``out_dir``, return the rows."""
    if epochs < 0 or finetune_epochs < 0:
        raise ValueError(f"epochs and finetune_epochs must be >= 0, got {epochs} and {finetune_epochs}")
    torch.manual_seed(seed)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    data = digits_data(seed)
    model = make_cnn()
    start = time.perf_counter()
    dense = train(model, pc.params_of(model), data, epochs=epochs, seed=seed)
    total = sum(p.numel() for p in model.parameters())
    size = stored_bytes(model)
    rows = [Row("dense", accuracy(model, dense, data), None, "", total, total, size, None,
                time.perf_counter() - start)]
    save_file({k: v.contiguous() for k, v in dense.items()}, str(out / "dense.safetensors"))
    for name, recipe in recipes(finetune_epochs).items():
        start = time.perf_counter()
        params, masks, plan = recipe(model, dense, data)
        seconds = time.perf_counter() - start
        report = _report(model, params, masks)
        detail = _report(model, params, masks, plan).table()
        row = Row(name, accuracy(model, params, data), selected_sparsity(params, masks, plan),
                  pruned_layers(model, plan), report.params_kept, report.params_total, size, None, seconds, detail)
        if name in SHRINKABLE:
            compact_bytes, summary = compact_summary(model, dense, params, masks, data)
            row = attrs.evolve(row, compact_bytes=compact_bytes, compact=summary)
        rows.append(row)
        save_file({k: v.contiguous() for k, v in params.items()}, str(out / f"{name}.safetensors"))
        pc.save_masks(out / f"{name}-masks.safetensors", masks)
        if verbose:
            print(f"\n{name}\n{detail}")
    for name, quant_recipe in quant_recipes(finetune_epochs).items():
        start = time.perf_counter()
        q, params, state = quant_recipe(model, dense, data)
        seconds = time.perf_counter() - start
        qparams = {k: ts.qparams for k, ts in state.tensors.items() if ts.qparams is not None}
        detail = "\n".join(f"{k}: scale {_span(qp.scale, '.3g')}, zero point {_span(qp.zero_point, 'g')}, "
                           f"codes [{qp.qmin}, {qp.qmax}]" for k, qp in qparams.items())
        rows.append(Row(name, accuracy(model, params, data, (q, state)), None, "", total, total,
                        stored_bytes(model, q, state), None, seconds, detail))
        if verbose:
            print(f"\n{name}\n{detail}")
        save_file({k: v.contiguous() for k, v in params.items()}, str(out / f"{name}.safetensors"))
        pq.save_quant_params(out / f"{name}-qparams.safetensors", qparams, metadata={"algorithm": q.name})
    (out / "results.json").write_text(json.dumps([attrs.asdict(r) for r in rows], indent=2))
    return rows


def _span(t: Tensor, spec: str) -> str:
    """A per-tensor value, or the min..max of per-channel values."""
    lo, hi = t.min().item(), t.max().item()
    return format(lo, spec) if lo == hi else f"{lo:{spec}}..{hi:{spec}}"


def _latency_ms(model: nn.Module, x: Tensor, params: Mapping[str, Tensor] | None = None) -> float:
    """Median milliseconds of one inference on ``x`` (plain module call or functional_call)."""
    model.eval()
    times = []
    with torch.no_grad():
        for _ in range(7):
            start = time.perf_counter()
            model(x) if params is None else functional_call(model, dict(params), (x,))
            times.append(time.perf_counter() - start)
    return sorted(times)[len(times) // 2] * 1e3


def compact_summary(model: nn.Module, dense: pc.Params, params: pc.Params, masks: pc.Masks,
                    data: DemoData) -> tuple[int, str]:
    """Shrink a channel-pruned result into a compact model: its float32 bytes, and a line with its
    params, FLOPs, latency and accuracy."""
    compact, report = pc.shrink(model, masks, data.x_test[:8], params=params, exact=True)
    compact.eval()
    with torch.no_grad():
        acc = float((compact(data.x_test).argmax(1) == data.y_test).float().mean())
    dense_ms = _latency_ms(model, data.x_test, dense)
    compact_ms = _latency_ms(compact, data.x_test)
    return 4 * report.params_after, (
        f"compact model: params {report.params_before} -> {report.params_after}, FLOPs/sample "
        f"{report.flops_before} -> {report.flops_after}, latency {dense_ms:.2f} -> {compact_ms:.2f} ms "
        f"({dense_ms / compact_ms:.2f}x), accuracy {acc:.2%} (max output deviation from the masked "
        f"model {report.output_error:.1e})")


def _cell(value: float | None, spec: str) -> str:
    return "-" if value is None else format(value, spec)


def format_rows(rows: list[Row]) -> str:
    """The table ``purecompress demo`` prints, followed by :data:`LEGEND`."""
    lines = [f"{'recipe':<18} {'accuracy':>8} {'sparsity':>8}  {'pruned':<18} {'params kept':>11} "
             f"{'stored KiB':>10} {'compact KiB':>11} {'seconds':>7}"]
    for r in rows:
        compact = None if r.compact_bytes is None else r.compact_bytes / 1024
        lines.append(f"{r.name:<18} {r.accuracy:>8.2%} {_cell(r.sparsity, '.2%'):>8}  {r.pruned_layers or '-':<18} "
                     f"{r.params_kept:>5}/{r.params_total:<5} {r.size_bytes / 1024:>10.1f} "
                     f"{_cell(compact, '.1f'):>11} {r.seconds:>7.2f}")
    return "\n".join(lines) + "\n\n" + LEGEND
