"""An NNI 2.x quantization-aware-training script running on purecompress: only the import changed.

    # from nni.algorithms.compression.pytorch.quantization import QAT_Quantizer
    from purecompress.compat.quantization import QAT_Quantizer

A small CNN (Conv-BN-ReLU x2, Linear) learns to tell generated "horizontal" from "vertical" stripe
images; QAT_Quantizer quantizes conv/linear weights and inputs to 8 bits, folds the BatchNorms
(enabled by ``dummy_input``, as in NNI) and counts optimizer steps. ``export_model`` writes the
float state_dict (it loads into a fresh ``Net``) and the calibration config, which a new quantizer
loads back to evaluate the quantized model without retraining.

Run: ``python examples/nni_style_qat.py [--steps 60] [--out DIR]``.
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from purecompress.compat.quantization import QAT_Quantizer


class Net(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(1, 8, 3, padding=1)
        self.bn1 = nn.BatchNorm2d(8)
        self.relu1 = nn.ReLU()
        self.conv2 = nn.Conv2d(8, 16, 3, padding=1)
        self.bn2 = nn.BatchNorm2d(16)
        self.relu2 = nn.ReLU()
        self.fc = nn.Linear(16, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.relu1(self.bn1(self.conv1(x)))
        x = self.relu2(self.bn2(self.conv2(F.max_pool2d(x, 2))))
        return self.fc(x.mean(dim=(2, 3)))


def stripes(n: int, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """``n`` noisy 16x16 images of horizontal (label 0) or vertical (label 1) stripes."""
    labels = torch.randint(0, 2, (n,), generator=generator)
    phase = torch.randint(0, 2, (n, 1, 1), generator=generator)
    rows = (torch.arange(16).view(1, 16, 1) + phase) % 2
    images = torch.where(labels.view(n, 1, 1) == 0, rows.expand(n, 16, 16), rows.transpose(1, 2).expand(n, 16, 16))
    images = images.float() + 0.3 * torch.randn(n, 16, 16, generator=generator)
    return images.unsqueeze(1), labels


def accuracy(model: nn.Module, data: tuple[torch.Tensor, torch.Tensor]) -> float:
    model.eval()
    with torch.no_grad():
        return (model(data[0]).argmax(1) == data[1]).float().mean().item()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=60)
    parser.add_argument("--out", type=Path, default=None, help="export directory (default: a temp dir)")
    args = parser.parse_args()
    torch.manual_seed(0)
    gen = torch.Generator().manual_seed(0)
    test = stripes(256, gen)

    model = Net()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    config_list = [{
        "quant_types": ["weight", "input"],
        "quant_bits": {"weight": 8, "input": 8},
        "op_types": ["Conv2d", "Linear"],
    }, {
        "quant_types": ["output"],
        "quant_bits": 8,
        "op_types": ["ReLU"],
    }]
    dummy_input = torch.randn(1, 1, 16, 16)
    quantizer = QAT_Quantizer(model, config_list, optimizer, dummy_input=dummy_input)
    quantizer.compress()
    print(f"folded BatchNorms: {quantizer.conv_bn_patterns}")

    for step in range(args.steps):
        model.train()
        images, labels = stripes(32, gen)
        optimizer.zero_grad()
        loss = F.cross_entropy(model(images), labels)
        loss.backward()
        optimizer.step()  # also advances the quantizer's step counter
        if step % 20 == 0:
            print(f"step {step:3d}  loss {loss.item():.3f}")
    qat_accuracy = accuracy(model, test)
    print(f"QAT model accuracy (8-bit weights and activations): {qat_accuracy:.3f}  steps={int(model.steps)}")

    out = args.out or Path(tempfile.mkdtemp(prefix="qat_"))
    out.mkdir(parents=True, exist_ok=True)
    calibration = quantizer.export_model(out / "model.pth", out / "calibration.pth")
    for layer, entry in calibration.items():
        print(f"  {layer}: " + ", ".join(f"{k}={float(v.reshape(-1)[0]) if torch.is_tensor(v) else v:.4g}"
                                          for k, v in entry.items()))

    # Reload: the float weights go into a plain Net, the calibration into a fresh quantizer.
    restored = Net()
    restored.load_state_dict(torch.load(out / "model.pth", weights_only=True))
    new_quantizer = QAT_Quantizer(restored, config_list, torch.optim.SGD(restored.parameters(), lr=0.0),
                                  dummy_input=dummy_input)
    new_quantizer.load_calibration_config(torch.load(out / "calibration.pth", weights_only=True))
    restored_accuracy = accuracy(restored, test)
    print(f"reloaded quantized model accuracy: {restored_accuracy:.3f}  (files in {out})")
    assert qat_accuracy > 0.9, "QAT did not learn the task"
    assert abs(restored_accuracy - qat_accuracy) < 0.05


if __name__ == "__main__":
    main()
