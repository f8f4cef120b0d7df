"""Every device check in one run: one table, a few minutes on one CUDA device.

Rows (each a ratio measured side by side in this process, as every benchmark here):

- masked training step vs plain (MLP 8x1024, 50% L1 channel masks), eager and ``torch.compile``;
- QAT step vs plain (same MLP, 8-bit weights and inputs), eager and compiled (the compiled QAT step
  is one graph: ``tests/test_quant_sites.py``);
- K = 16 candidate sparsities of every layer of a small CNN: one vmapped pass vs the loop;
- shrink: dense vs compact inference at 50% channels (VGG-style CNN);
- 2:4 semi-structured ``F.linear`` vs dense at LLM shapes (CUDA, half precision; ``n/a`` elsewhere),
  with the outputs checked against the masked dense product.

Nothing is installed or downloaded. ``--device cpu --quick`` runs the same code on the CPU in
seconds (the test suite does, so the script cannot rot between device sessions)::

    python benchmarks/gpu.py                      # on the lent machine
    python benchmarks/gpu.py --device cpu --quick --no-compile
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from pathlib import Path

import torch
from torch import Tensor, nn
from torch.func import functional_call

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _models import vgg  # noqa: E402
from _timing import environment, interleaved_medians, table  # noqa: E402

import purecompress as pc  # noqa: E402
import purecompress.quant as pq  # noqa: E402
from purecompress import llm  # noqa: E402

Step = Callable[[], object]


def timed(steps: dict[str, Step], device: torch.device, repeats: int, inner: int) -> dict[str, float]:
    """Median seconds per call of each step, rounds interleaved, after two warm-up (compiling) calls."""
    sync = torch.cuda.synchronize if device.type == "cuda" else None
    return interleaved_medians(steps, repeats=repeats, inner=inner, warmup=2, sync=sync)


def training_steps(device: torch.device, width: int, batch: int, compiled: bool) -> dict[str, Step]:
    """Plain, masked and QAT SGD steps on one MLP (the same loss, the same optimizer)."""
    torch.manual_seed(0)
    layers: list[nn.Module] = []
    for _ in range(8):
        layers += [nn.Linear(width, width), nn.ReLU()]
    model = nn.Sequential(*layers, nn.Linear(width, 10)).to(device)
    x, y = torch.randn(batch, width, device=device), torch.randint(0, 10, (batch,), device=device)
    base = {k: v.detach().clone().requires_grad_() for k, v in model.named_parameters()}
    plan = pc.select(model, pc.from_config_list([{"sparsity": 0.5, "op_types": ["Linear"]}]))
    masks = pc.prune(pc.params_of(model), plan, pc.l1_norm)
    q = pq.qat(model, [{"quant_types": ["weight", "input"], "quant_bits": 8, "op_types": ["Linear"]}])
    state = [q.init(base)]

    def plain(p: dict[str, Tensor]) -> Tensor:
        return nn.functional.cross_entropy(functional_call(model, p, (x,)), y)

    def masked(p: dict[str, Tensor]) -> Tensor:
        return nn.functional.cross_entropy(functional_call(model, pc.apply_masks(p, masks), (x,)), y)

    def quantized(p: dict[str, Tensor], s: pq.QuantState) -> tuple[Tensor, pq.QuantState]:
        out, s = q(model, p, s, x)
        return nn.functional.cross_entropy(out, y), s

    wrap = (lambda f: torch.compile(f)) if compiled else (lambda f: f)
    plain_c, masked_c, quantized_c = wrap(plain), wrap(masked), wrap(quantized)

    def sgd(loss: Tensor) -> None:
        loss.backward()
        with torch.no_grad():
            for v in base.values():
                v -= 1e-3 * v.grad
                v.grad = None

    def qat_step() -> None:
        loss, state[0] = quantized_c(base, state[0])
        sgd(loss)
        _, state[0] = q.update(base, state[0])

    return {"plain": lambda: sgd(plain_c(base)), "masked": lambda: sgd(masked_c(base)), "qat": qat_step}


def sensitivity_ratio(device: torch.device, repeats: int) -> tuple[float, bool]:
    """Loop / vmapped time of K = 16 candidate sparsities per layer, and whether the scores agree."""
    torch.manual_seed(0)
    model = vgg((16, "M", 32, "M", 64, "M"), classes=10, spatial=16).to(device).eval()
    params = pc.params_of(model)
    layers = [n for n, p in params.items() if n.endswith(".weight") and p.dim() in (2, 4)]
    sparsities = [i / 16 for i in range(16)]
    x, y = torch.randn(16, 3, 16, 16, device=device), torch.randint(0, 10, (16,), device=device)

    def loss(p: pc.Params) -> Tensor:
        return nn.functional.cross_entropy(functional_call(model, p, (x,)), y)

    with torch.no_grad():
        t = timed({"loop": lambda: pc.sensitivity(params, layers, sparsities, loss, vmapped=False),
                   "vmap": lambda: pc.sensitivity(params, layers, sparsities, loss)}, device, repeats, 1)
        fast = pc.sensitivity(params, layers, sparsities, loss)
        slow = pc.sensitivity(params, layers, sparsities, loss, vmapped=False)
    return t["loop"] / t["vmap"], bool(torch.allclose(fast.scores, slow.scores, rtol=1e-4, atol=1e-5))


def shrink_ratio(device: torch.device, batch: int, repeats: int) -> tuple[float, float]:
    """Dense / compact inference time at 50% channels, and the compact model's output error."""
    torch.manual_seed(0)
    model = vgg().eval()
    x = torch.randn(batch, 3, 32, 32)
    plan = pc.select(model, pc.from_config_list([{"sparsity": 0.5, "op_types": ["Conv2d"]}]))
    masks = pc.prune(pc.params_of(model), plan, pc.l1_norm)
    compact, report = pc.shrink(model, masks, x[:2])
    model, compact, x = model.to(device), compact.to(device), x.to(device)
    with torch.no_grad():
        t = timed({"dense": lambda: model(x), "compact": lambda: compact(x)}, device, repeats, 3)
    return t["dense"] / t["compact"], report.output_error


def semi_structured_rows(device: torch.device, shapes: list[tuple[int, int, int]], repeats: int) -> list[list[str]]:
    """2:4 semi-structured linear vs dense (CUDA only), outputs checked against the masked product."""
    if device.type != "cuda":
        return [[f"2:4 semi-structured linear {m}x{k} @ {k}x{n}", "n/a (CUDA only)", "", ""] for m, k, n in shapes]
    rows = []
    for m, k, n in shapes:
        torch.manual_seed(0)
        weight = torch.randn(n, k, device=device, dtype=torch.float16)
        x = torch.randn(m, k, device=device, dtype=torch.float16)
        masks = {"w": pc.Mask(pc.n_m_keep(weight.abs().float(), 2, 4), tuple(weight.shape))}
        sparse = llm.to_semi_structured({"w": weight}, masks)["w"]
        dense_masked = masks["w"].apply(weight)
        t = timed({"dense": lambda: nn.functional.linear(x, weight),
                   "sparse": lambda: nn.functional.linear(x, sparse)}, device, repeats, 20)
        err = (nn.functional.linear(x, sparse) - nn.functional.linear(x, dense_masked)).abs().max().item()
        rows.append([f"2:4 semi-structured linear {m}x{k} @ {k}x{n}", f"{t['sparse'] / t['dense']:.3f}x of dense",
                     "", f"max abs err {err:.2e}"])
    return rows


def main(argv: list[str] | None = None) -> str:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--quick", action="store_true", help="small shapes and few repeats (a smoke test)")
    parser.add_argument("--no-compile", action="store_true", help="skip the torch.compile rows")
    args = parser.parse_args(argv)
    device = torch.device(args.device)
    repeats = 2 if args.quick else 7
    width, batch = (64, 16) if args.quick else (1024, 256)
    rows: list[list[str]] = []
    for compiled in (False,) if args.no_compile else (False, True):
        t = timed(training_steps(device, width, batch, compiled), device, repeats, 2 if args.quick else 10)
        kind = "compiled" if compiled else "eager"
        rows.append([f"masked training step, MLP 8x{width} ({kind})", f"{t['masked'] / t['plain']:.3f}x of plain",
                     "<= 1.02x", ""])
        rows.append([f"QAT training step, MLP 8x{width} ({kind})", f"{t['qat'] / t['plain']:.3f}x of plain",
                     "<= 1.05x" if compiled else "", ""])
    ratio, same = sensitivity_ratio(device, repeats)
    rows.append(["sensitivity, K=16 candidates, VGG-style CNN (eval)", f"loop / vmapped {ratio:.2f}x", ">= 3x",
                 f"same scores: {same}"])
    gain, error = shrink_ratio(device, 8 if args.quick else 64, repeats)
    rows.append(["shrink at 50% channels, VGG-style CNN", f"dense / compact {gain:.2f}x", "",
                 f"output error {error:.1e}"])
    shapes = [(64, 256, 256)] if args.quick else [(2048, 4096, 4096), (2048, 4096, 11008), (2048, 11008, 4096)]
    rows += semi_structured_rows(device, shapes, repeats)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    out = f"{environment()}, device {name}\n" + table(["check", "measured", "target", "note"], rows)
    print(out)
    return out


if __name__ == "__main__":
    main()
