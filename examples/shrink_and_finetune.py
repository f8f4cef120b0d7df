"""Prune a small CNN by channels, shrink it into a compact model, fine-tune it, and time it.

    python examples/shrink_and_finetune.py --sparsity 0.5

Uses scikit-learn's bundled digits (8x8 images, no download). The compact model is an ordinary
``nn.Module`` with fewer channels: it trains with any optimizer and runs faster everywhere.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
import torch.nn.functional as F
from sklearn.datasets import load_digits
from torch import nn

import purecompress as pc
from purecompress.graph import shrink


def conv_bn(cin: int, cout: int) -> list[nn.Module]:
    return [nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU()]


def make_model(width: int) -> nn.Module:
    w = width
    return nn.Sequential(*conv_bn(1, w), *conv_bn(w, w), nn.MaxPool2d(2), *conv_bn(w, 2 * w), *conv_bn(2 * w, 2 * w),
                         nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(2 * w, 10))


def train(model: nn.Module, x: torch.Tensor, y: torch.Tensor, epochs: int, lr: float = 3e-3) -> None:
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    model.train()
    g = torch.Generator().manual_seed(0)
    for _ in range(epochs):
        for idx in torch.randperm(len(x), generator=g).split(64):
            opt.zero_grad()
            F.cross_entropy(model(x[idx]), y[idx]).backward()
            opt.step()
    model.eval()


def accuracy(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> float:
    with torch.no_grad():
        return float((model(x).argmax(1) == y).float().mean())


def latency_ms(model: nn.Module, x: torch.Tensor, repeats: int = 7) -> float:
    with torch.no_grad():
        model(x)
        times = []
        for _ in range(repeats):
            start = time.perf_counter()
            model(x)
            times.append(time.perf_counter() - start)
    return 1000 * statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sparsity", type=float, default=0.5, help="fraction of conv channels pruned")
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--finetune-epochs", type=int, default=2)
    parser.add_argument("--width", type=int, default=24)
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads (timings included)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    digits = load_digits()
    x = torch.tensor(digits.images, dtype=torch.float32).unsqueeze(1) / 16.0
    y = torch.tensor(digits.target)
    x_train, y_train, x_test, y_test = x[:1400], y[:1400], x[1400:], y[1400:]

    model = make_model(args.width)
    train(model, x_train, y_train, args.epochs)
    print(f"dense accuracy: {accuracy(model, x_test, y_test):.3f}")

    # one-shot L1 channel pruning of every conv (the core pipeline), then the compact model
    plan = pc.select(model, pc.from_config_list([{"sparsity": args.sparsity, "op_types": ["Conv2d"]}]))
    masks = pc.prune(pc.params_of(model), plan, pc.l1_norm)
    with torch.no_grad():
        masked = torch.func.functional_call(model, pc.apply_masks(pc.params_of(model), masks), (x_test,))
    print(f"masked accuracy: {float((masked.argmax(1) == y_test).float().mean()):.3f}")
    compact, report = shrink(model, masks, x_test[:8])
    print(report.table())
    print(f"compact vs masked output rel. error: {report.output_error:.1e} "
          f"(inexact folds behind zero-padded convs: {sorted(report.inexact)})")
    print(f"compact accuracy: {accuracy(compact, x_test, y_test):.3f}")

    train(compact, x_train, y_train, args.finetune_epochs, lr=1e-3)
    print(f"compact accuracy (fine-tuned {args.finetune_epochs} epochs): {accuracy(compact, x_test, y_test):.3f}")

    batch = torch.randn(128, 1, 8, 8)
    dense_ms, compact_ms = latency_ms(model, batch), latency_ms(compact, batch)
    print(f"params: {report.params_before} -> {report.params_after} "
          f"({report.params_before / report.params_after:.2f}x fewer)")
    print(f"FLOPs: {report.flops_before} -> {report.flops_after} "
          f"({report.flops_before / report.flops_after:.2f}x fewer)")
    print(f"latency (batch 128, CPU): {dense_ms:.2f} ms -> {compact_ms:.2f} ms")
    print(f"latency ratio: {dense_ms / compact_ms:.2f}")


if __name__ == "__main__":
    main()
