"""The inverse-Hessian factor that SparseGPT and GPTQ share (Optimal Brain Surgeon, column by column).

For a layer ``y = W x`` and the loss ``||W X - W' X||^2``, the Hessian of each row is
``H = X^T X``. Eliminating columns left to right, the OBS update of column ``j`` uses row ``j``
of the inverse of ``H`` restricted to the columns not yet eliminated; all those rows are the rows
of the upper Cholesky factor ``U`` of ``H^-1`` (``U[j, j:] = Hinv_j[0, :] / sqrt(Hinv_j[0, 0])``),
so one factorisation serves every step.
"""

from __future__ import annotations

import torch
from torch import Tensor

__all__ = ["inverse_hessian_factor"]


def inverse_hessian_factor(hessian: Tensor, *, damp: float = 0.01) -> Tensor:
    """Upper Cholesky factor ``U`` of ``(H + damp * mean(diag H) * I)^-1``, in float32.

    Dead inputs (a zero diagonal entry: the feature was always 0) get a unit diagonal, so they
    are independent of the rest and their weights are rounded/pruned without spreading error.

    Args:
        hessian: ``[in, in]`` symmetric positive semi-definite (``X^T X``, any positive scale).
        damp: dampening relative to the mean diagonal (> 0 makes ``H`` positive definite).

    Returns:
        ``[in, in]`` upper-triangular float32 ``U`` with ``U^T U = H_damped^-1``.

    Raises:
        ValueError: when the damped ``H`` is not positive definite (raise ``damp``).

    >>> u = inverse_hessian_factor(torch.diag(torch.tensor([1., 4.])), damp=0.0)
    >>> torch.allclose(u.T @ u, torch.diag(torch.tensor([1., 0.25]))), u.diagonal()
    (True, tensor([1.0000, 0.5000]))
    """
    if hessian.dim() != 2 or hessian.shape[0] != hessian.shape[1]:
        raise ValueError(f"the Hessian must be square, got shape {tuple(hessian.shape)}")
    if damp < 0:
        raise ValueError(f"damp must be >= 0, got {damp}")
    h = hessian.float().clone()
    diag = h.diagonal()
    diag[diag == 0] = 1.0
    diag.add_(damp * float(diag.mean()))
    lower, info = torch.linalg.cholesky_ex(h)
    if int(info):
        raise ValueError(f"the damped Hessian is not positive definite (damp={damp}); raise damp")
    upper, info = torch.linalg.cholesky_ex(torch.cholesky_inverse(lower), upper=True)
    if int(info):
        raise ValueError(f"the inverse Hessian is not positive definite (damp={damp}); raise damp")
    return upper
