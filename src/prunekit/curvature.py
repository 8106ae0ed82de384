"""Second-order information of a whole small network, flattened over its prunable parameters.

For the exact pruning methods of LeCun et al. (1990, OBD) and Hassibi & Stork (1993, OBS):
the exact Hessian of the loss (torch.func), the Gauss–Newton matrix E[Jᵀ H_out J] and the
empirical Fisher E[g gᵀ] from per-sample gradients (Martens 2020, "New insights and
perspectives on the natural gradient method", Secs. 8–9), and their diagonals.

``loss_fn(outputs, targets)`` must return the mean loss over the batch (as PyTorch's losses do
by default). Parameters are flattened in ``model.named_parameters()`` order.

Memory. Every dense result is built in chunks so that, besides the n × n result itself, the
working memory does not grow with n or N: the exact Hessian ``chunk_size`` rows (= columns)
× ``sample_chunk_size`` samples at a time (Hessian-vector products), Gauss–Newton and the
Fisher ``chunk_size`` samples at a time. Products that are symmetric in exact arithmetic are
accumulated on the block-lower triangle only (about half the flops) and mirrored in place, so
no second n × n temporary is ever made. ``check_dense_size`` runs before any n × n allocation.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence

import torch
from torch import Tensor, nn
from torch.func import functional_call, grad, hessian, jacrev, vjp, vmap

from .errors import UsageError
from .hessian import add_lower_product_

LossFn = Callable[[Tensor, Tensor], Tensor]
MAX_DENSE_PARAMS = 20_000
HESSIAN_COLUMNS = 32    # basis vectors per batched Hessian-vector product
HESSIAN_SAMPLES = 256   # samples per Hessian-vector product
GN_SAMPLES = 64         # samples per Gauss–Newton chunk: Jacobians of 64 × K × n numbers
FISHER_SAMPLES = 256    # samples per per-sample-gradient chunk: 256 × n numbers
_BLOCK = 1024           # row block of the block-lower-triangular products and the mirror


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
            f"raise max_params (--max-params) above {max_params:,} if that memory is available"
        )


def _check_chunk(value: int, name: str, what: str) -> None:
    """Refuse a chunk size that is not a positive int, naming the function and the parameter."""
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise UsageError(f"{what}: {name} must be a positive integer such as 64, got {value!r}")


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


def _symmetrize_(H: Tensor, block: int = _BLOCK) -> Tensor:
    """H ← (H + Hᵀ)/2 in place, one pair of (block × block) tiles at a time: no n × n copy."""
    n = H.shape[0]
    for i in range(0, n, block):
        for j in range(i, n, block):
            upper, lower = H[i : i + block, j : j + block], H[j : j + block, i : i + block]
            avg = (upper + lower.T) / 2  # (b_i, b_j), a fresh tensor: safe when i == j
            upper.copy_(avg)
            lower.copy_(avg.T)
    return H


def _mirror_lower_(H: Tensor, block: int = _BLOCK) -> Tensor:
    """Complete a matrix whose block-lower triangle (see :func:`_add_lower_product_`) is filled.

    Tiles strictly below the diagonal are copied to their transposes; diagonal tiles, which
    hold a full (not exactly symmetric) product, are symmetrised. In place.
    """
    n = H.shape[0]
    for i in range(0, n, block):
        diag = H[i : i + block, i : i + block]
        diag.copy_((diag + diag.T) / 2)
        H[:i, i : i + block] = H[i : i + block, :i].T
    return H


def _sample_chunks(inputs: Tensor, targets: Tensor, chunk_size: int
                   ) -> Iterator[tuple[Tensor, Tensor]]:
    for s in range(0, inputs.shape[0], chunk_size):
        yield inputs[s : s + chunk_size], targets[s : s + chunk_size]


def _add_hessian_rows_(H: Tensor, f: Callable[..., Tensor], w0: Tensor, X: Tensor, T: Tensor,
                       weight: float, chunk_size: int) -> None:
    """H += weight · ∇²L_b(w0), L_b = f(·, X, T) the mean loss of one sample chunk; in place.

    Rows come ``chunk_size`` at a time as Hessian-vector products e_jᵀ ∇²L_b (Pearlmutter 1994,
    "Fast exact multiplication by the Hessian"), vmapped over a chunk of basis vectors. They
    are taken reverse-over-reverse: one vjp of ∇L_b, whose graph is built once per sample
    chunk and reused by every column chunk (Griewank & Walther 2008, "Evaluating
    Derivatives", Ch. 5, second-order adjoints). Forward-over-reverse, jvp(∇L_b, w0, e_j),
    would redo the forward and backward pass for every column chunk (measured ~1.5× slower on
    2 CPU cores for a 64-128-10 MLP), and jvp of grad through mse_loss(reduction="mean")
    fails in PyTorch 2.x ("ZeroTensors are immutable", pytorch#123996).
    """
    n = w0.numel()
    _, pull = vjp(lambda w: grad(f)(w, X, T), w0)  # pull(v) = (vᵀ ∇²L_b,)
    for c0 in range(0, n, chunk_size):
        c1 = min(c0 + chunk_size, n)
        basis = torch.zeros(c1 - c0, n, dtype=w0.dtype, device=w0.device)  # (c, n): e_c0..e_c1
        basis[torch.arange(c1 - c0), torch.arange(c0, c1)] = 1.0
        H[c0:c1].add_(vmap(pull)(basis)[0], alpha=weight)  # rows c0:c1 of ∇²L_b: (c, n)


def loss_hessian(model: nn.Module, loss_fn: LossFn, inputs: Tensor, targets: Tensor,
                 names: Sequence[str] | None = None, max_params: int = MAX_DENSE_PARAMS, *,
                 chunk_size: int = HESSIAN_COLUMNS, sample_chunk_size: int = HESSIAN_SAMPLES
                 ) -> Tensor:
    """The exact Hessian ∂²L/∂w² (n, n) of the mean loss over (inputs, targets).

    L = 1/N Σᵢ ℓᵢ is split into chunks b of ``sample_chunk_size`` samples, H = Σ_b (N_b/N) H_b,
    and each H_b is built ``chunk_size`` rows at a time from Hessian-vector products (see
    :func:`_add_hessian_rows_`). Working memory is about chunk_size × sample_chunk_size ×
    (the activations of one sample) plus the n × n result, where ``torch.func.hessian`` needs
    n × N × that. Smaller chunks use less memory but more Python overhead; the defaults keep
    one call's activations (32 × 256 × width floats) in cache for MLPs of width ~100.

    Sample chunks rely on the module convention that ``loss_fn`` is a plain mean over samples
    (not, e.g., class-weighted cross-entropy); pass ``sample_chunk_size >= N`` otherwise.
    H is symmetric in exact arithmetic but its rows are computed independently, so the result
    is symmetrised, (H + Hᵀ)/2, in place: this only removes rounding differences.
    """
    _check_chunk(chunk_size, "chunk_size", "loss_hessian")
    _check_chunk(sample_chunk_size, "sample_chunk_size", "loss_hessian")
    names = list(names or prunable_names(model))
    f, w0 = _flat_loss(model, loss_fn, names)
    n, N = w0.numel(), inputs.shape[0]
    check_dense_size(n, max_params, w0.dtype)
    H = torch.zeros(n, n, dtype=w0.dtype, device=w0.device)
    for X, T in _sample_chunks(inputs, targets, sample_chunk_size):
        _add_hessian_rows_(H, f, w0, X, T, X.shape[0] / N, chunk_size)
    return _symmetrize_(H)


def _per_sample_grad_fn(model: nn.Module, loss_fn: LossFn, names: Sequence[str] | None):
    """(g, w0): g(X, T) -> per-sample gradients (B, n) of the batch-of-one losses ℓ(x_i, t_i)."""
    f, w0 = _flat_loss(model, loss_fn, list(names or prunable_names(model)))

    def one(x: Tensor, t: Tensor) -> Tensor:
        return grad(f)(w0, x[None], t[None])  # (n,)

    return vmap(one), w0


def per_sample_gradients(model: nn.Module, loss_fn: LossFn, inputs: Tensor, targets: Tensor,
                         names: Sequence[str] | None = None, *,
                         chunk_size: int = FISHER_SAMPLES) -> Tensor:
    """g_i = ∂L(x_i, t_i)/∂w for every sample: (N, n), ``chunk_size`` samples per vmap."""
    _check_chunk(chunk_size, "chunk_size", "per_sample_gradients")
    g, _ = _per_sample_grad_fn(model, loss_fn, names)
    return torch.cat([g(X, T) for X, T in _sample_chunks(inputs, targets, chunk_size)])


def empirical_fisher(model: nn.Module, loss_fn: LossFn, inputs: Tensor, targets: Tensor,
                     names: Sequence[str] | None = None, max_params: int = MAX_DENSE_PARAMS, *,
                     chunk_size: int = FISHER_SAMPLES) -> Tensor:
    """F = 1/N Σ g_i g_iᵀ (n, n) from per-sample gradients, accumulated ``chunk_size`` at a time.

    Martens (2020); Kunstner, Balles & Hennig (2019), "Limitations of the empirical Fisher
    approximation". Only chunk × n gradients live at once.
    """
    _check_chunk(chunk_size, "chunk_size", "empirical_fisher")
    g, w0 = _per_sample_grad_fn(model, loss_fn, names)
    n, N = w0.numel(), inputs.shape[0]
    check_dense_size(n, max_params, w0.dtype)
    F = torch.zeros(n, n, dtype=w0.dtype, device=w0.device)
    for X, T in _sample_chunks(inputs, targets, chunk_size):
        G = g(X, T)  # (B, n)
        add_lower_product_(F, G, G)
    return _mirror_lower_(F).div_(N)


def gauss_newton(model: nn.Module, loss_fn: LossFn, inputs: Tensor, targets: Tensor,
                 names: Sequence[str] | None = None, max_params: int = MAX_DENSE_PARAMS, *,
                 chunk_size: int = GN_SAMPLES) -> Tensor:
    """G = 1/N Σ J_iᵀ H_i J_i (n, n): J_i = ∂f(x_i)/∂w, H_i = ∂²ℓ/∂f² of the per-sample loss.

    Martens (2020), the generalised Gauss–Newton matrix. Accumulated ``chunk_size`` samples at a
    time as one matrix product Σ_i J_iᵀ (H_i J_i) over the chunk, so at most chunk × K × n
    Jacobian entries (K outputs per sample) live besides the result. H_i need not be invertible
    or factorable (softmax cross-entropy's is PSD and singular). Each term is symmetric, so
    only the block-lower triangle is accumulated and then mirrored.
    """
    _check_chunk(chunk_size, "chunk_size", "gauss_newton")
    out_of, w0 = _flat_loss(model, lambda out, _t: out, list(names or prunable_names(model)))
    n, N = w0.numel(), inputs.shape[0]
    check_dense_size(n, max_params, w0.dtype)

    def one(x: Tensor, t: Tensor) -> tuple[Tensor, Tensor]:
        J = jacrev(out_of)(w0, x[None], t[None]).reshape(-1, n)  # (K, n)
        y = out_of(w0, x[None], t[None])  # (1, K...)
        H_out = hessian(lambda o: loss_fn(o, t[None]))(y).reshape(J.shape[0], J.shape[0])
        return J, H_out  # (K, n), (K, K)

    G = torch.zeros(n, n, dtype=w0.dtype, device=w0.device)
    for X, T in _sample_chunks(inputs, targets, chunk_size):
        J, H_out = vmap(one)(X, T)  # (B, K, n), (B, K, K)
        HJ = torch.bmm(H_out, J)  # (B, K, n)
        add_lower_product_(G, J.reshape(-1, n), HJ.reshape(-1, n))  # Σ_i J_iᵀ (H_i J_i)
    return _mirror_lower_(G).div_(N)


def fisher_diagonal(model: nn.Module, loss_fn: LossFn, inputs: Tensor, targets: Tensor,
                    names: Sequence[str] | None = None, *,
                    chunk_size: int = FISHER_SAMPLES) -> Tensor:
    """diag(F) = 1/N Σ g_i² (n,), without forming F: any size of network, chunk × n memory."""
    _check_chunk(chunk_size, "chunk_size", "fisher_diagonal")
    g, w0 = _per_sample_grad_fn(model, loss_fn, names)
    diag = torch.zeros_like(w0)  # (n,)
    for X, T in _sample_chunks(inputs, targets, chunk_size):
        diag += g(X, T).square().sum(0)
    return diag / inputs.shape[0]


def flat_weights(model: nn.Module, names: list[str]) -> Tensor:
    """The named parameters concatenated, in order: (n,)."""
    params = dict(model.named_parameters())
    return torch.cat([params[n].detach().reshape(-1) for n in names])


def write_flat_(model: nn.Module, names: list[str], w: Tensor) -> None:
    """Copy the flat vector ``w`` back into the named parameters."""
    params = dict(model.named_parameters())
    with torch.no_grad():
        for n, part in zip(names, torch.split(w, [params[n].numel() for n in names])):
            params[n].copy_(part.reshape(params[n].shape))


CURVATURES: dict[str, Callable[..., Tensor]] = {
    "fisher": empirical_fisher, "gauss-newton": gauss_newton, "exact": loss_hessian,
}


def curvature_diagonal(model: nn.Module, loss_fn: LossFn, x: Tensor, y: Tensor,
                       names: list[str], curvature: str = "fisher",
                       max_params: int = MAX_DENSE_PARAMS) -> Tensor:
    """diag of the ``curvature`` (a key of :data:`CURVATURES`): the Fisher's without forming
    it (any size), the others' from the dense matrix (at most ``max_params`` weights)."""
    if curvature == "fisher":
        return fisher_diagonal(model, loss_fn, x, y, names)
    dense = CURVATURES[curvature](model, loss_fn, x, y, names, max_params=max_params)
    return torch.diagonal(dense).clone()
