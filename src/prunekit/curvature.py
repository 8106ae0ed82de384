"""Second-order information of a whole small network, flattened over its prunable parameters.

For the exact pruning methods of LeCun et al. (1990, OBD) and Hassibi & Stork (1993, OBS):
the exact Hessian of the loss (torch.func), the Gauss–Newton matrix E[Jᵀ H_out J] and the
empirical Fisher E[g gᵀ] from per-sample gradients (Martens 2020, "New insights and
perspectives on the natural gradient method", Secs. 8–9), and their diagonals.

``loss_fn(outputs, targets)`` must return the mean loss over the batch (as PyTorch's losses do
by default). Parameters are flattened in ``model.named_parameters()`` order.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torch import Tensor, nn
from torch.func import functional_call, grad, hessian, jacrev, vmap

from .errors import UsageError

LossFn = Callable[[Tensor, Tensor], Tensor]
MAX_DENSE_PARAMS = 20_000


def prunable_names(model: nn.Module) -> list[str]:
    """Weights of Linear and Conv layers (parameters with 2+ dimensions named ``*weight``)."""
    return [n for n, p in model.named_parameters() if p.dim() >= 2 and n.endswith("weight")]


def check_dense_size(n: int, max_params: int, dtype: torch.dtype = torch.float64) -> None:
    """Refuse a dense n × n matrix above ``max_params`` parameters, saying what it would cost."""
    if n > max_params:
        gib = n * n * torch.finfo(dtype).bits / 8 / 2**30
        raise UsageError(
            f"a dense Hessian of {n:,} parameters needs {gib:.1f} GiB ({dtype}) plus working "
            f"memory: prune a smaller network, restrict it to fewer layers, use the diagonal, or "
            f"raise max_params above {max_params:,} if that memory is available"
        )


def _flat_loss(model: nn.Module, loss_fn: LossFn, names: Sequence[str]):
    """(f, w0): f(w_flat, inputs, targets) -> loss with the named parameters taken from w_flat."""
    params = dict(model.named_parameters())
    shapes = [params[n].shape for n in names]
    sizes = [params[n].numel() for n in names]
    w0 = torch.cat([params[n].detach().reshape(-1) for n in names])
    fixed = {k: v.detach() for k, v in {**params, **dict(model.named_buffers())}.items()
             if k not in names}

    def f(w_flat: Tensor, inputs: Tensor, targets: Tensor) -> Tensor:
        parts = torch.split(w_flat, sizes)
        state = {**fixed, **{n: p.reshape(s) for n, p, s in zip(names, parts, shapes)}}
        return loss_fn(functional_call(model, state, (inputs,)), targets)

    return f, w0


def loss_hessian(model: nn.Module, loss_fn: LossFn, inputs: Tensor, targets: Tensor,
                 names: Sequence[str] | None = None, max_params: int = MAX_DENSE_PARAMS) -> Tensor:
    """The exact Hessian ∂²L/∂w² (n, n) of the mean loss over (inputs, targets)."""
    names = list(names or prunable_names(model))
    f, w0 = _flat_loss(model, loss_fn, names)
    check_dense_size(w0.numel(), max_params, w0.dtype)
    return hessian(f)(w0, inputs, targets)


def per_sample_gradients(model: nn.Module, loss_fn: LossFn, inputs: Tensor, targets: Tensor,
                         names: Sequence[str] | None = None) -> Tensor:
    """g_i = ∂L(x_i, t_i)/∂w for every sample: (N, n)."""
    f, w0 = _flat_loss(model, loss_fn, list(names or prunable_names(model)))

    def one(x: Tensor, t: Tensor) -> Tensor:
        return grad(f)(w0, x[None], t[None])

    return vmap(one)(inputs, targets)


def empirical_fisher(model: nn.Module, loss_fn: LossFn, inputs: Tensor, targets: Tensor,
                     names: Sequence[str] | None = None, max_params: int = MAX_DENSE_PARAMS
                     ) -> Tensor:
    """F = 1/N Σ g_i g_iᵀ (n, n) from per-sample gradients."""
    G = per_sample_gradients(model, loss_fn, inputs, targets, names)  # (N, n)
    check_dense_size(G.shape[1], max_params, G.dtype)
    return G.T @ G / G.shape[0]


def gauss_newton(model: nn.Module, loss_fn: LossFn, inputs: Tensor, targets: Tensor,
                 names: Sequence[str] | None = None, max_params: int = MAX_DENSE_PARAMS) -> Tensor:
    """G = 1/N Σ J_iᵀ H_i J_i (n, n): J_i = ∂f(x_i)/∂w, H_i = ∂²ℓ/∂f² of the per-sample loss."""
    out_of, w0 = _flat_loss(model, lambda out, _t: out, list(names or prunable_names(model)))
    check_dense_size(w0.numel(), max_params, w0.dtype)

    def one(x: Tensor, t: Tensor) -> Tensor:
        J = jacrev(out_of)(w0, x[None], t[None]).reshape(-1, w0.numel())  # (K, n)
        y = out_of(w0, x[None], t[None])
        H_out = hessian(lambda o: loss_fn(o, t[None]))(y).reshape(J.shape[0], J.shape[0])
        return J.T @ H_out @ J

    return vmap(one)(inputs, targets).mean(0)


def fisher_diagonal(model: nn.Module, loss_fn: LossFn, inputs: Tensor, targets: Tensor,
                    names: Sequence[str] | None = None) -> Tensor:
    """diag(F) = 1/N Σ g_i² (n,), without forming F: any size of network."""
    return per_sample_gradients(model, loss_fn, inputs, targets, names).square().mean(0)
