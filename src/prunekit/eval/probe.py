"""A downstream metric for encoders: the accuracy of a linear probe on frozen embeddings
(Alain & Bengio 2016, "Understanding intermediate layers using linear classifier probes").

A multinomial logistic regression with an L2 penalty is fitted on the embeddings of a fixed
training split and scored on a fixed test split. The objective (mean cross-entropy
+ ``l2``/2·‖W‖², bias unpenalised) is strictly convex in W, so its minimum is unique: the
probe is fitted to convergence with L-BFGS in float64 from zeros, and the same embeddings give
the same accuracy on every run. Dense and pruned models are each probed with a probe of their
own, as a user who ships the pruned encoder would train one.
"""

from __future__ import annotations

import torch
from torch import Tensor


def fit_logistic(x: Tensor, y: Tensor, n_classes: int, l2: float = 1e-3,
                 max_iter: int = 500) -> tuple[Tensor, Tensor]:
    """(W (n_classes, d), b (n_classes,)) minimising mean CE(xWᵀ + b, y) + l2/2 ‖W‖².
    x: (n, d) features, y: (n,) class indices in [0, n_classes)."""
    x = x.double()
    W = torch.zeros(n_classes, x.shape[1], dtype=torch.float64, requires_grad=True)
    b = torch.zeros(n_classes, dtype=torch.float64, requires_grad=True)
    opt = torch.optim.LBFGS([W, b], lr=1.0, max_iter=max_iter, tolerance_grad=1e-10,
                            tolerance_change=1e-14, history_size=20,
                            line_search_fn="strong_wolfe")

    def closure() -> Tensor:
        opt.zero_grad()
        loss = torch.nn.functional.cross_entropy(x @ W.T + b, y) + 0.5 * l2 * W.square().sum()
        loss.backward()
        return loss

    opt.step(closure)
    return W.detach(), b.detach()


def probe_accuracy(train_x: Tensor, train_y: Tensor, test_x: Tensor, test_y: Tensor,
                   n_classes: int, l2: float = 1e-3) -> float:
    """Test accuracy of the logistic-regression probe fitted on the training embeddings."""
    W, b = fit_logistic(train_x, train_y, n_classes, l2)
    predicted = (test_x.double() @ W.T + b).argmax(-1)
    return float((predicted == test_y).double().mean())
