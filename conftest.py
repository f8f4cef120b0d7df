"""Repository-wide pytest setup: lets the optional torchvision (a CUDA wheel) import on the CPU torch.

Lightning imports torchmetrics, which imports torchvision, and NNI imports Lightning; see
``benchmarks/zoo_import.py`` for why torchvision's own import fails on the CPU build of torch.
"""

from benchmarks.zoo_import import install_import_hook

install_import_hook()
