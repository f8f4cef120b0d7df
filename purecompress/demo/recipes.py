"""``purecompress demo``: train a small CNN on scikit-learn's digits, compress it, print a table.

Each row is one compression recipe applied to the same trained dense model: prune and fine-tune
briefly, or quantize to 8 bits (quantization-aware fine-tuning, or post-training calibration),
then evaluate. Everything runs through the functional core (``functional_call(model,
apply_masks(params, masks))``, ``QuantTransform`` calls); the dense model is never modified. The
``size`` column is the parameters as stored: float32, or int8 plus a float32 scale and zero point
for each quantized weight (pruned rows keep their zeros; the compact model shows what shrinking
removes).
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

__all__ = ["DemoData", "Row", "digits_data", "format_rows", "make_cnn", "quant_recipes", "recipes", "run_demo"]

logger = logging.getLogger(__name__)


@attrs.frozen
class Row:
    """One line of the demo table."""

    name: str
    accuracy: float
    sparsity: float
    params_kept: int
    params_total: int
    size_bytes: int
    seconds: float
    detail: str = ""
    compact: str = ""


def _report(model: nn.Module, params: Mapping[str, Tensor], masks: pc.Masks,
            plan: pc.Plan | None = None) -> pc.SparsityReport:
    """Sparsity of ``masks`` over the model's parameters (BatchNorm running stats not counted)."""
    names = {n for n, _ in model.named_parameters()}
    return pc.sparsity_report({k: v for k, v in params.items() if k in names}, masks, plan)


CHANNEL_RECIPE = "l1-channel-50%"  # the row whose result is also shrunk into a compact model

Recipe = Callable[[nn.Module, pc.Params, DemoData], tuple[pc.Params, pc.Masks, str]]


def _one_shot(configs: list[dict[str, object]], metric: Callable[..., pc.Metrics], distribution: str,
              finetune_epochs: int, **kwargs: object) -> Recipe:
    def recipe(model: nn.Module, params: pc.Params, data: DemoData) -> tuple[pc.Params, pc.Masks, str]:
        plan = pc.select(model, pc.from_config_list(configs))
        masks = pc.prune(params, plan, metric, distribution=distribution, **kwargs)  # type: ignore[arg-type]
        tuned = train(model, params, data, epochs=finetune_epochs, masks=masks, lr=1e-3)
        return tuned, masks, _report(model, params, masks, plan).table()

    return recipe


def _taylor(configs: list[dict[str, object]], finetune_epochs: int) -> Recipe:
    """Data-driven: first-order Taylor importance from the gradients of a few training batches."""

    def recipe(model: nn.Module, params: pc.Params, data: DemoData) -> tuple[pc.Params, pc.Masks, str]:
        plan = pc.select(model, pc.from_config_list(configs))
        batches = list(zip(data.x_train.split(64), data.y_train.split(64), strict=True))[:8]
        stats = pc.collect_taylor(model, params, batches, nn.functional.cross_entropy, plan)
        masks = pc.allocate(pc.taylor_fo(stats), plan)
        tuned = train(model, params, data, epochs=finetune_epochs, masks=masks, lr=1e-3)
        return tuned, masks, _report(model, params, masks, plan).table()

    return recipe


def _agp(configs: list[dict[str, object]], finetune_epochs: int, final: float) -> Recipe:
    """Gradual: AGP raises level sparsity to ``final`` over the fine-tuning epochs (one mask update each)."""

    def recipe(model: nn.Module, params: pc.Params, data: DemoData) -> tuple[pc.Params, pc.Masks, str]:
        plan = pc.select(model, pc.from_config_list(configs))
        prune = pc.agp(final, plan, begin=-1, end=finetune_epochs - 1)  # epoch e prunes to s((e+1)/N)
        state = prune.init(params)
        tuned = dict(params)
        for epoch in range(finetune_epochs):
            tuned, state = prune.update(tuned, state, step=epoch)
            tuned = train(model, tuned, data, epochs=1, masks=state.masks, lr=1e-3, seed=epoch)
        return tuned, state.masks, _report(model, params, state.masks, plan).table()

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
    torch.manual_seed(seed)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    data = digits_data(seed)
    model = make_cnn()
    start = time.perf_counter()
    dense = train(model, pc.params_of(model), data, epochs=epochs, seed=seed)
    total = sum(p.numel() for p in model.parameters())
    size = stored_bytes(model)
    rows = [Row("dense", accuracy(model, dense, data), 0.0, total, total, size, time.perf_counter() - start)]
    save_file({k: v.contiguous() for k, v in dense.items()}, str(out / "dense.safetensors"))
    for name, recipe in recipes(finetune_epochs).items():
        start = time.perf_counter()
        params, masks, detail = recipe(model, dense, data)
        seconds = time.perf_counter() - start
        report = _report(model, params, masks)
        rows.append(Row(name, accuracy(model, params, data), 1 - report.params_kept / report.params_total,
                        report.params_kept, report.params_total, size, seconds, detail))
        save_file({k: v.contiguous() for k, v in params.items()}, str(out / f"{name}.safetensors"))
        pc.save_masks(out / f"{name}-masks.safetensors", masks)
        if verbose:
            print(f"\n{name}\n{detail}")
        if name == CHANNEL_RECIPE:
            rows[-1] = attrs.evolve(rows[-1], compact=compact_summary(model, dense, params, masks, data))
    for name, quant_recipe in quant_recipes(finetune_epochs).items():
        start = time.perf_counter()
        q, params, state = quant_recipe(model, dense, data)
        seconds = time.perf_counter() - start
        qparams = {k: ts.qparams for k, ts in state.tensors.items() if ts.qparams is not None}
        detail = "\n".join(f"{k}: scale {_span(qp.scale, '.3g')}, zero point {_span(qp.zero_point, 'g')}, "
                           f"codes [{qp.qmin}, {qp.qmax}]" for k, qp in qparams.items())
        rows.append(Row(name, accuracy(model, params, data, (q, state)), 0.0, total, total,
                        stored_bytes(model, q, state), seconds, detail))
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
                    data: DemoData) -> str:
    """Shrink a channel-pruned result into a compact model; params, FLOPs, latency and accuracy."""
    compact, report = pc.shrink(model, masks, data.x_test[:8], params=params, exact=True)
    compact.eval()
    with torch.no_grad():
        acc = float((compact(data.x_test).argmax(1) == data.y_test).float().mean())
    dense_ms = _latency_ms(model, data.x_test, dense)
    compact_ms = _latency_ms(compact, data.x_test)
    return (f"compact model: params {report.params_before} -> {report.params_after}, FLOPs/sample "
            f"{report.flops_before} -> {report.flops_after}, latency {dense_ms:.2f} -> {compact_ms:.2f} ms "
            f"({dense_ms / compact_ms:.2f}x), accuracy {acc:.2%} (max output deviation from the masked "
            f"model {report.output_error:.1e})")


def format_rows(rows: list[Row]) -> str:
    """The table ``purecompress demo`` prints."""
    lines = [f"{'recipe':<18} {'accuracy':>8} {'sparsity':>8} {'params kept':>12} {'size KiB':>8} {'seconds':>8}"]
    for r in rows:
        lines.append(f"{r.name:<18} {r.accuracy:>8.2%} {r.sparsity:>8.2%} "
                     f"{r.params_kept:>6}/{r.params_total:<5} {r.size_bytes / 1024:>8.1f} {r.seconds:>8.2f}")
    return "\n".join(lines)
