"""The empirical Neural Tangent Kernel of any nn.Module, dense or under a pruning mask.

For a network f(x; θ) with K outputs, the empirical NTK (Jacot et al. 2018; Lee et al. 2019,
"Wide Neural Networks of Any Depth Evolve as Linear Models") is

    Θ(x, x') = J(x) J(x')ᵀ,    J(x) = ∂f(x; θ)/∂θ  (K × P),

a K × K block for every pair of inputs; the full kernel over N and N' inputs is (N·K) × (N'·K),
the traced one Σ_k Θ_kk (N × N). Under a mask m (1 = kept) the pruned network's kernel is
Θ_m(x, x') = J_m(x) J_m(x')ᵀ with J_m = J ⊙ m evaluated at the masked weights θ ⊙ m: only the
kept parameters move in training (Liu & Zenke 2020; Chen et al. 2021 on lottery tickets and
the NTK).

Two implementations, checked against each other:
  - :func:`jacobian_ntk` contracts per-sample Jacobians (torch.func.vmap of jacrev), in chunks
    of inputs so that only chunk × K × P numbers live at a time;
  - :func:`implicit_ntk` never forms J: for each output of x' it pulls a unit cotangent back
    to a parameter tangent u = J(x')ᵀ e (vjp) and pushes it forward, J(x) u (jvp); cotangents
    are vmapped in chunks.
Masks are dicts {parameter name: bool tensor of its shape}; parameters not named are kept
whole. The model is never modified (torch.func.functional_call).
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import Tensor, nn
from torch.func import functional_call, jacrev, jvp, vjp, vmap

from ..errors import UsageError

Masks = Mapping[str, Tensor]


def _params(model: nn.Module, masks: Masks | None) -> dict[str, Tensor]:
    """The model's parameters, detached, with pruned entries set to zero (θ ⊙ m)."""
    params = {n: p.detach() for n, p in model.named_parameters()}
    for name, m in (masks or {}).items():
        if name not in params:
            raise UsageError(f"mask for {name!r}: the model has no such parameter; its "
                             f"parameters are {', '.join(params)}")
        if tuple(m.shape) != tuple(params[name].shape):
            raise UsageError(f"mask for {name!r} has shape {tuple(m.shape)}, the parameter "
                             f"{tuple(params[name].shape)}")
        params[name] = params[name] * m.to(params[name].dtype)
    return params


def _masked(tangent: dict[str, Tensor], masks: Masks | None) -> dict[str, Tensor]:
    if not masks:
        return tangent
    return {n: (t * masks[n].to(t.dtype) if n in masks else t) for n, t in tangent.items()}


def _fn(model: nn.Module, buffers: dict[str, Tensor]):
    def f(params: dict[str, Tensor], x: Tensor) -> Tensor:  # x: (B, ...) -> (B, K)
        return functional_call(model, (params, buffers), (x,))
    return f


def _finish(theta: Tensor, trace: bool) -> Tensor:
    """(N, K, N', K) -> the full (N·K, N'·K) kernel, or the trace over outputs (N, N')."""
    n1, k, n2, _ = theta.shape
    if trace:
        return torch.diagonal(theta, dim1=1, dim2=3).sum(-1)
    return theta.reshape(n1 * k, n2 * k)


def jacobian_ntk(model: nn.Module, x1: Tensor, x2: Tensor | None = None, *,
                 masks: Masks | None = None, trace: bool = False, chunk: int = 256,
                 max_bytes: float = 4 * 2 ** 30) -> Tensor:
    """Θ(x1, x2) by contracting per-sample Jacobians (N1·K × N2·K, or N1 × N2 with ``trace``).

    ``masks``: the pruned network's kernel Θ_m (J ⊙ m at θ ⊙ m). ``chunk``: inputs per
    Jacobian batch. The Jacobians of x2 are kept while they take at most ``max_bytes``
    (N2 · K · P numbers), else recomputed for every block of rows."""
    params = _params(model, masks)
    buffers = {n: b.detach() for n, b in model.named_buffers()}
    f = _fn(model, buffers)
    mask_b = {n: m[None, None] for n, m in (masks or {}).items()}

    def single(p: dict[str, Tensor], x: Tensor) -> Tensor:
        return f(p, x[None])[0]  # (K,)

    def jac(x: Tensor) -> Tensor:  # (B, K, P) flattened over parameters
        J = _masked(vmap(jacrev(single), in_dims=(None, 0))(params, x), mask_b)
        return torch.cat([j.reshape(j.shape[0], j.shape[1], -1) for j in J.values()], dim=2)

    x2 = x1 if x2 is None else x2
    blocks2 = [x2[i : i + chunk] for i in range(0, len(x2), chunk)]
    k = f(params, x2[:1]).shape[1]
    n_params = sum(p.numel() for p in params.values())
    cache = len(x2) * k * n_params * x2.element_size() <= max_bytes
    J2 = [jac(b) for b in blocks2] if cache else None
    rows = []
    spec = "akp,bkp->ab" if trace else "akp,bjp->akbj"  # traced: only the K diagonal pairs
    for i in range(0, len(x1), chunk):
        Ja = J2[i // chunk] if cache and x2 is x1 else jac(x1[i : i + chunk])
        row = [torch.einsum(spec, Ja, J2[j] if cache else jac(b)) for j, b in enumerate(blocks2)]
        rows.append(torch.cat(row, dim=1 if trace else 2))
    theta = torch.cat(rows, dim=0)
    return theta if trace else _finish(theta, False)


def implicit_ntk(model: nn.Module, x1: Tensor, x2: Tensor | None = None, *,
                 masks: Masks | None = None, trace: bool = False, chunk: int = 64) -> Tensor:
    """Θ(x1, x2) from vjp/jvp products, without forming the Jacobian: for each of the N2·K
    outputs e of f(x2), Θ(x1, x2) e = J(x1) (J(x2)ᵀ e). ``chunk``: cotangents per vmap."""
    params = _params(model, masks)
    buffers = {n: b.detach() for n, b in model.named_buffers()}
    f = _fn(model, buffers)
    x2 = x1 if x2 is None else x2
    out2, pullback = vjp(lambda p: f(p, x2), params)  # (N2, K)
    n2, k = out2.shape

    def column(e: Tensor) -> Tensor:  # e: (N2, K) one-hot -> Θ(x1, x2) e: (N1, K)
        (u,) = pullback(e)
        u = _masked(u, masks)
        return jvp(lambda p: f(p, x1), (params,), (u,))[1]

    eye = torch.eye(n2 * k, dtype=out2.dtype, device=out2.device)
    cols = []
    for i in range(0, n2 * k, chunk):
        cots = eye[i : i + chunk].reshape(-1, n2, k)
        cols.append(vmap(column)(cots))  # (c, N1, K)
    theta = torch.cat(cols, dim=0).reshape(n2, k, len(x1), k).permute(2, 3, 0, 1)
    return _finish(theta, trace)


def ntk(model: nn.Module, x1: Tensor, x2: Tensor | None = None, *, masks: Masks | None = None,
        trace: bool = True, method: str = "jacobian", chunk: int | None = None) -> Tensor:
    """The empirical NTK with either implementation (``method`` "jacobian" or "implicit")."""
    if method == "jacobian":
        return jacobian_ntk(model, x1, x2, masks=masks, trace=trace, chunk=chunk or 256)
    if method == "implicit":
        return implicit_ntk(model, x1, x2, masks=masks, trace=trace, chunk=chunk or 64)
    raise UsageError(f"NTK method {method!r}: use 'jacobian' or 'implicit'")
