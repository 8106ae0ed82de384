"""Optimal Brain Damage (LeCun, Denker & Solla 1990): prune by the diagonal second-order
saliency s_q = H_qq · w_q² / 2 (their Eq. 6, at a minimum of the loss), with no weight update.

Works on any flat weight vector and the diagonal of any Hessian approximation of it (exact,
Gauss–Newton, empirical Fisher).
"""

from __future__ import annotations

import torch
from torch import Tensor


def obd_saliency(w: Tensor, H_diag: Tensor) -> Tensor:
    """s = H_qq · w_q² / 2 for every weight.  w, H_diag: (n,) -> (n,)."""
    return 0.5 * H_diag * w.square()


def obd_prune(w: Tensor, H_diag: Tensor, n_prune: int) -> tuple[Tensor, Tensor]:
    """Zero the ``n_prune`` weights of smallest OBD saliency (ties: lowest index first).

    Returns (pruned copy of w, indices removed in order of increasing saliency).
    """
    order = torch.argsort(obd_saliency(w, H_diag), stable=True)[:n_prune]
    out = w.clone()
    out[order] = 0.0
    return out, order
