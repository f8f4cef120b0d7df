"""QAT training-step time vs plain training: purecompress functional (eager and torch.compile),
purecompress compat ``QAT_Quantizer`` and NNI 2.10.1's ``QAT_Quantizer``, in one process.

Models: a VGG-style conv net (batch 32, 3x32x32) and an 8x512 MLP (batch 64). Quantization:
8-bit weights and inputs of every Conv2d/Linear (NNI's defaults: uint, per-tensor affine; inputs
tracked by EMA). A step is forward + cross-entropy + backward + SGD step. Every variant runs in
rounds interleaved with the others (less bias from a noisy shared machine); the table reports
the median step time and its ratio to the plain eager step (compiled variants also to the
compiled plain step). Compile time is excluded (reported separately); inductor compiles the conv
net slowly on a small CPU, so its compiled rows need ``--compile-conv``.

Run: ``python benchmarks/bench_qat.py [--repeats 5] [--no-compile] [--no-nni] [--compile-conv]``
(< 90 s on 2 cores without ``--compile-conv``).
"""

from __future__ import annotations

import argparse
import copy
import logging
import sys
import time
import warnings
from collections.abc import Callable
from pathlib import Path

import torch
from torch import Tensor, nn
from torch.func import functional_call

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _timing import environment, interleaved_medians, table  # noqa: E402

import purecompress.quant as pq  # noqa: E402

warnings.filterwarnings("ignore")
logging.disable(logging.WARNING)
torch.set_num_threads(1)  # one thread for every column: less noise on a shared machine

CONFIG = [{"quant_types": ["weight", "input"], "quant_bits": 8, "op_types": ["Conv2d", "Linear"]}]
Step = Callable[[], None]


def vgg() -> nn.Module:
    """VGG-style: conv3x3 blocks 32-32 / 64-64 / 128 with max pooling, then a Linear head."""
    def block(i: int, o: int) -> list[nn.Module]:
        return [nn.Conv2d(i, o, 3, padding=1), nn.ReLU()]
    return nn.Sequential(*block(3, 32), *block(32, 32), nn.MaxPool2d(2), *block(32, 64), *block(64, 64),
                         nn.MaxPool2d(2), *block(64, 128), nn.MaxPool2d(2), nn.Flatten(), nn.Linear(128 * 16, 10))


def mlp() -> nn.Module:
    """8 Linear(512, 512) + ReLU layers and a Linear head."""
    layers: list[nn.Module] = []
    for _ in range(8):
        layers += [nn.Linear(512, 512), nn.ReLU()]
    return nn.Sequential(*layers, nn.Linear(512, 10))


def plain_step(model: nn.Module, x: Tensor, y: Tensor) -> Step:
    opt = torch.optim.SGD(model.parameters(), lr=1e-3)

    def step() -> None:
        opt.zero_grad()
        nn.functional.cross_entropy(model(x), y).backward()
        opt.step()
    return step


def functional_step(model: nn.Module, x: Tensor, y: Tensor, *, compiled: bool, quantize: bool = True) -> Step:
    params = {k: v.detach().clone().requires_grad_() for k, v in model.named_parameters()}
    opt = torch.optim.SGD(params.values(), lr=1e-3)
    q = pq.qat(model, CONFIG)
    box = [q.init(params)]

    def loss(p: dict[str, Tensor], state: pq.QuantState) -> tuple[Tensor, pq.QuantState]:
        if quantize:
            out, state = q(model, p, state, x)
        else:
            out = functional_call(model, p, (x,))
        return nn.functional.cross_entropy(out, y), state

    fn = torch.compile(loss) if compiled else loss

    def step() -> None:
        opt.zero_grad()
        value, state = fn(params, box[0])
        value.backward()
        opt.step()
        _, box[0] = q.update(params, state)
    return step


def nni_like_step(module_path: str, model: nn.Module, x: Tensor, y: Tensor) -> Step:
    """A step with an NNI-API QAT_Quantizer (NNI's own or purecompress.compat's)."""
    module = __import__(module_path, fromlist=["QAT_Quantizer"])
    opt = torch.optim.SGD(model.parameters(), lr=1e-3)
    module.QAT_Quantizer(model, copy.deepcopy(CONFIG), opt, dummy_input=x[:2]).compress()

    def step() -> None:
        opt.zero_grad()
        nn.functional.cross_entropy(model(x), y).backward()
        opt.step()
    return step


def run(name: str, make: Callable[[], nn.Module], x: Tensor, y: Tensor, *, repeats: int, inner: int,
        use_compile: bool, use_nni: bool) -> list[list[str]]:
    """Time every variant on one model; rows of the table."""
    torch.manual_seed(0)
    base = make()
    steps: dict[str, Step] = {
        "plain (eager)": plain_step(copy.deepcopy(base), x, y),
        "purecompress functional QAT": functional_step(copy.deepcopy(base), x, y, compiled=False),
    }
    try:
        steps["purecompress compat QAT_Quantizer"] = nni_like_step("purecompress.compat.quantization",
                                                                   copy.deepcopy(base), x, y)
    except ImportError:
        pass
    if use_nni:
        try:
            steps["NNI 2.10.1 QAT_Quantizer"] = nni_like_step(
                "nni.algorithms.compression.pytorch.quantization", copy.deepcopy(base), x, y)
        except ImportError:
            pass
    compile_s = {}
    if use_compile:
        variants = (("plain (torch.compile)", False), ("purecompress functional QAT (torch.compile)", True))
        for label, quantize in variants:
            step = functional_step(copy.deepcopy(base), x, y, compiled=True, quantize=quantize)
            start = time.perf_counter()
            step()
            step()
            compile_s[label] = time.perf_counter() - start
            steps[label] = step
    for step in steps.values():  # warm up
        step()
    medians = interleaved_medians(steps, repeats=repeats, inner=inner)
    plain, plain_c = medians["plain (eager)"], medians.get("plain (torch.compile)")
    rows = []
    for label, t in medians.items():
        vs_c = f"{t / plain_c:.2f}x" if plain_c and "compile" in label else ""
        extra = f" (compile {compile_s[label]:.0f} s)" if label in compile_s else ""
        rows.append([name, label + extra, f"{t * 1e3:.1f}", f"{t / plain:.2f}x", vs_c])
    return rows


def main(repeats: int = 5, use_compile: bool = True, use_nni: bool = True,
         compile_conv: bool = False) -> list[list[str]]:
    """Run both models; print and return the markdown table rows."""
    gen = torch.Generator().manual_seed(0)
    rows = run("VGG-style conv, batch 32", vgg, torch.randn(32, 3, 32, 32, generator=gen),
               torch.randint(0, 10, (32,), generator=gen), repeats=repeats, inner=2,
               use_compile=use_compile and compile_conv, use_nni=use_nni)
    rows += run("MLP 8x512, batch 64", mlp, torch.randn(64, 512, generator=gen),
                torch.randint(0, 10, (64,), generator=gen), repeats=repeats, inner=5,
                use_compile=use_compile, use_nni=use_nni)
    print(environment())
    print(table(["model", "variant", "ms / step", "vs plain eager", "vs plain compiled"], rows))
    return rows


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--no-compile", action="store_true")
    parser.add_argument("--no-nni", action="store_true")
    parser.add_argument("--compile-conv", action="store_true", help="also compile the conv net (minutes)")
    args = parser.parse_args()
    main(args.repeats, not args.no_compile, not args.no_nni, args.compile_conv)
