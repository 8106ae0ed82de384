"""One pruning job over several processes and machines with ``torch.distributed``.

Launched by ``torchrun`` (which sets RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR/PORT), every
process runs the same sequential pipeline on its own share of the calibration batches:

- statistics: each rank accumulates its layers' Hessians H_r over its N_r tokens; they are
  combined into the Hessian of all N = Σ N_r tokens, H = Σ_r N_r H_r / N, by one all-reduce
  of N_r·H_r and of N_r (the running-mean convention of :mod:`prunekit.hessian`);
- solves: the block's layers are shared out among the ranks by their solve cost (longest
  first to the least loaded rank), each rank solves its own, and every compressed weight is
  broadcast from its owner, so that every rank holds the whole pruned block before running it
  to make the next block's inputs.

The result equals one process's to floating-point tolerance: only the order of the Hessian
sums differs. NCCL is used for CUDA devices, gloo for the CPU.
"""

from __future__ import annotations

import contextlib
import datetime
import logging
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

import torch
import torch.distributed as dist

from .errors import UsageError
from .methods.base import LayerCompressor, LayerResult, weight_matrix

log = logging.getLogger(__name__)

T = TypeVar("T")
TIMEOUT = datetime.timedelta(minutes=60)  # a rank may wait while another solves a big layer


@dataclass(frozen=True)
class Group:
    """This process's place in a job: ``rank`` of ``world`` processes, over ``backend``."""

    rank: int
    world: int
    backend: str

    @property
    def is_main(self) -> bool:
        """Rank 0 prints, evaluates and writes the output."""
        return self.rank == 0

    def shard(self, items: Sequence[T]) -> list[T]:
        """This rank's share of ``items`` (every ``world``-th one, from ``rank``)."""
        if len(items) < self.world:
            raise UsageError(
                f"{len(items)} calibration batches for {self.world} processes: every process "
                f"needs at least one; pass more --samples or a smaller --batch-size"
            )
        return list(items[self.rank::self.world])

    def barrier(self) -> None:
        dist.barrier()

    def broadcast_object(self, obj: Any, src: int = 0) -> Any:
        """``obj`` of rank ``src``, on every rank."""
        box = [obj]
        dist.broadcast_object_list(box, src=src, device=self._object_device())
        return box[0]

    def _object_device(self) -> torch.device | None:
        return torch.device("cuda", torch.cuda.current_device()) if self.backend == "nccl" else None


def launched() -> bool:
    """Whether this process was started by torchrun (or another launcher) with several ranks."""
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


def process_device(device: str | torch.device) -> torch.device:
    """The device of this process: a CUDA ``device`` becomes ``cuda:LOCAL_RANK`` under a
    launcher (one GPU per process), anything else stays as it is."""
    if not launched():
        return torch.device(device)
    try:
        device = torch.device(device)
    except RuntimeError:
        raise UsageError(f"--device {device!r} is not a device: use cpu or cuda") from None
    if device.type == "cuda":
        return torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
    return device


@contextlib.contextmanager
def from_environment(device: str | torch.device) -> Iterator[Group | None]:
    """The process group torchrun set up, joined for the duration (None when not launched
    with several processes). NCCL for a CUDA ``device``, gloo otherwise."""
    if not launched():
        yield None
        return
    if not dist.is_available():
        raise UsageError("this PyTorch build has no torch.distributed: run one process")
    device = process_device(device)
    backend = "nccl" if device.type == "cuda" else "gloo"
    owned = not dist.is_initialized()
    if owned:
        if device.type == "cuda":
            torch.cuda.set_device(device)
        dist.init_process_group(backend, timeout=TIMEOUT)
    group = Group(dist.get_rank(), dist.get_world_size(), dist.get_backend())
    log.info("rank %d of %d (%s) on %s", group.rank, group.world, group.backend, device)
    try:
        yield group
        if owned:  # leave together: no rank tears the group down while another still works
            dist.barrier()
    finally:
        if owned:
            dist.destroy_process_group()


def reduce_statistics_(compressors: Sequence[LayerCompressor], group: Group) -> None:
    """Replace every rank's Hessians by those of all ranks' tokens, H = Σ_r N_r H_r / Σ_r N_r.

    Layers that share one accumulator (same input) are reduced once. Every rank must hold the
    same sharing, which holds when each has at least one batch (:meth:`Group.shard`).
    """
    seen: set[int] = set()
    for comp in compressors:
        acc = comp.hessian
        if acc is None or id(acc) in seen:
            continue
        seen.add(id(acc))
        n = torch.tensor([float(acc.n_tokens)], dtype=torch.float64, device=acc.H.device)
        acc.H.mul_(acc.n_tokens)  # N_r H_r: the sums of 2 x xᵀ
        dist.all_reduce(acc.H)
        dist.all_reduce(n)
        total = int(n.item())
        if total:
            acc.H.div_(total)
        acc.n_tokens = total


def solve_cost(comp: LayerCompressor) -> float:
    """Relative cost of a layer's solve: a factorisation (c³) and a sweep of r rows (r c²)."""
    rows, cols = weight_matrix(comp.layer).shape
    return float(cols) ** 3 + float(rows) * float(cols) ** 2


def assign(costs: Sequence[float], world: int) -> list[int]:
    """Owner rank of each job: longest first, each to the least loaded rank (LPT scheduling).
    Deterministic, so every rank computes the same plan."""
    load = [0.0] * world
    owner = [0] * len(costs)
    for i in sorted(range(len(costs)), key=lambda i: (-costs[i], i)):
        rank = min(range(world), key=lambda r: (load[r], r))
        owner[i] = rank
        load[rank] += costs[i]
    return owner


def solve_shared(compressors: Sequence[LayerCompressor], group: Group) -> list[LayerResult]:
    """Each rank compresses the layers :func:`assign` gives it; every compressed weight and
    its result are then broadcast from the owner, so all ranks end with the same block."""
    owners = assign([solve_cost(c) for c in compressors], group.world)
    results: list[LayerResult | None] = [
        c.compress() if owner == group.rank else None for c, owner in zip(compressors, owners)
    ]
    for i, (comp, owner) in enumerate(zip(compressors, owners)):
        weight = comp.layer.weight.data
        dist.broadcast(weight, src=owner)
        results[i] = group.broadcast_object(results[i], src=owner)
        comp.free()
    return results  # type: ignore[return-value]
