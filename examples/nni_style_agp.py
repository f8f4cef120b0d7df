"""An NNI 2.x AGPPruner script, unchanged but for its imports, on scikit-learn's digits (< 15 s).

With NNI this script would read ``from nni.compression.pytorch.pruning import AGPPruner``; here
the class comes from ``purecompress.compat.pruning`` and runs the same tasks (iterations
``0..N``, sparsity ``(1 - (1 - i/N)^3) * s``), writes the same ``log_dir`` layout (files that load
with ``weights_only=True``), and ``get_best_result()`` returns the same 5-tuple.

Run: ``python examples/nni_style_agp.py [--iterations 4] [--sparsity 0.8] [--log-dir DIR]``
"""

from __future__ import annotations

import argparse
import tempfile

import torch
from sklearn.datasets import load_digits
from torch import nn

from purecompress.compat.pruning import AGPPruner

torch.manual_seed(0)
digits = load_digits()
X = torch.tensor(digits.data, dtype=torch.float32) / 16.0
Y = torch.tensor(digits.target)
X_TRAIN, Y_TRAIN, X_TEST, Y_TEST = X[:1400], Y[:1400], X[1400:], Y[1400:]


def finetuner(model: nn.Module) -> None:
    """A few SGD steps (the pruner applies the masks while this runs)."""
    optimizer = torch.optim.SGD(model.parameters(), lr=0.3)
    model.train()
    for start in range(0, 1400, 100):
        optimizer.zero_grad()
        nn.functional.cross_entropy(model(X_TRAIN[start:start + 100]), Y_TRAIN[start:start + 100]).backward()
        optimizer.step()


def evaluator(model: nn.Module) -> float:
    """Test accuracy."""
    model.eval()
    with torch.no_grad():
        return float((model(X_TEST).argmax(1) == Y_TEST).float().mean())


def main(iterations: int = 4, sparsity: float = 0.8, log_dir: str | None = None) -> tuple:
    """Pretrain, run AGPPruner, return ``get_best_result()``."""
    model = nn.Sequential(nn.Linear(64, 128), nn.ReLU(), nn.Linear(128, 10))
    for _ in range(3):
        finetuner(model)
    config_list = [{"op_types": ["Linear"], "sparsity": sparsity}]
    log_dir = log_dir or tempfile.mkdtemp()
    pruner = AGPPruner(model, config_list, pruning_algorithm="level", total_iteration=iterations,
                       log_dir=log_dir, finetuner=finetuner, evaluator=evaluator)
    pruner.compress()
    task_id, compact_model, masks, score, configs = pruner.get_best_result()
    print(f"best task {task_id}: accuracy {evaluator(compact_model):.3f}, "
          f"sparsity {[round(float(1 - m['weight'].mean()), 3) for m in masks.values()]}")
    return task_id, compact_model, masks, score, configs


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--iterations", type=int, default=4)
    parser.add_argument("--sparsity", type=float, default=0.8)
    parser.add_argument("--log-dir", default=None)
    args = parser.parse_args()
    main(args.iterations, args.sparsity, args.log_dir)
