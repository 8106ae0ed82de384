"""Sequential calibration: capture block inputs, then for each block feed hooks, compress,
and re-run it so the pruned outputs become the next block's inputs (Frantar & Alistarh 2023,
Sec. 4, "sequential" layer-wise pruning).

Only the current block and the calibration activations live on the compute device.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor, nn

from .distributed import reduce_statistics_, solve_shared
from .errors import ModelError
from .methods.base import LayerCompressor, LayerResult
from .models.adapter import ModelAdapter

if TYPE_CHECKING:
    from .distributed import Group

log = logging.getLogger(__name__)

BlockInput = tuple[tuple[Any, ...], dict[str, Any]]  # (args, kwargs) of one block call
Progress = Callable[[int, int, list[LayerResult]], None]  # (block index, n blocks, results)


def _hidden_of(args: tuple, kwargs: dict) -> Tensor:
    return args[0] if args else kwargs["hidden_states"]


def _with_hidden(args: tuple, kwargs: dict, hidden: Tensor) -> BlockInput:
    if args:
        return (hidden, *args[1:]), kwargs
    return args, {**kwargs, "hidden_states": hidden}


def _block_output(out: Any) -> Tensor:
    """Blocks return a tensor (transformers 5) or a tuple whose first item is the hidden state."""
    return out[0] if isinstance(out, (tuple, list)) else out


def _device_of(module: nn.Module) -> torch.device:
    p = next(module.parameters(), None)
    return p.device if p is not None else torch.device("cpu")


def capture_block_inputs(
    model: nn.Module,
    adapter: ModelAdapter,
    batches: Iterable[dict[str, Tensor]],
    device: torch.device,
    home: torch.device | None = None,
) -> list[BlockInput]:
    """Record the (args, kwargs) the first block receives for every batch.

    The block list is swapped for a one-element list holding only the first block, whose
    forward pre-hook records its inputs; the forward pass then ends naturally after that
    block (no exception is raised to stop it). Output heads are not run: the model's
    ``base_model`` is called.
    """
    list_name, blocks = adapter.block_list(model)
    parent_name, _, attr = list_name.rpartition(".")
    parent = model.get_submodule(parent_name) if parent_name else model
    base = getattr(model, "base_model", model)
    records: list[BlockInput] = []

    def record(_module: nn.Module, args: tuple, kwargs: dict) -> None:
        records.append((args, dict(kwargs)))

    home = home or _device_of(model)  # where the model is kept: it goes back there after
    setattr(parent, attr, nn.ModuleList([blocks[0]]))
    handle = blocks[0].register_forward_pre_hook(record, with_kwargs=True)
    try:
        base.to(device)
        with torch.no_grad():
            for batch in batches:
                base(**{k: v.to(device) for k, v in batch.items()}, use_cache=False)
    finally:
        handle.remove()
        base.to(home)
        setattr(parent, attr, blocks)
    if not records:
        raise ModelError("the calibration set produced no batches: nothing reached block 0")
    return records


class _Feeder:
    """Feeds every compressor its layer's inputs through forward hooks.

    Layers that receive the very same input tensor in a forward pass (q/k/v projections,
    gate/up projections) share one Hessian accumulator from the first batch on, so XᵀX is
    computed once for them.
    """

    def __init__(self) -> None:
        self.last_input: Tensor | None = None
        self.last: LayerCompressor | None = None
        self.leader: dict[int, LayerCompressor] = {}

    def hook(self, comp: LayerCompressor) -> Callable:
        def feed(_module: nn.Module, inputs: tuple, _output: Any) -> None:
            x = inputs[0]
            leader = self.leader.get(id(comp))
            if leader is None and x is self.last_input and comp.hessian.n_tokens == 0:
                leader = self.leader[id(comp)] = self.last  # type: ignore[assignment]
                comp.hessian = leader.hessian
            if leader is not None:
                if x is not self.last_input:
                    raise ModelError(
                        f"{comp.layer_name}: shared its input with {leader.layer_name} on one "
                        "batch but not on another: the block's forward is not deterministic"
                    )
                return
            comp.add_batch(x)
            self.last_input, self.last = x, comp

        return feed


def block_outputs(block: nn.Module, inputs: Iterable[BlockInput]) -> Iterator[Tensor]:
    """The hidden state ``block`` returns for each recorded input, one at a time."""
    with torch.no_grad():
        for args, kwargs in inputs:
            yield _block_output(block(*args, **kwargs))


def run_block(block: nn.Module, inputs: Sequence[BlockInput]) -> list[BlockInput]:
    """Run ``block`` on every recorded input; return the inputs of the next block."""
    return [_with_hidden(args, kwargs, out)
            for (args, kwargs), out in zip(inputs, block_outputs(block, inputs))]


@contextlib.contextmanager
def _feeding(
    block: nn.Module, prefix: str, adapter: ModelAdapter,
    make_compressor: Callable[[str, nn.Module], LayerCompressor],
) -> Iterator[dict[str, LayerCompressor]]:
    """Compressors for the block's targets, fed by forward hooks while the context is open."""
    compressors = {name: make_compressor(name, layer)
                   for name, layer in adapter.targets(block, prefix).items()}
    feeder = _Feeder()
    handles = [c.layer.register_forward_hook(feeder.hook(c)) for c in compressors.values()]
    try:
        yield compressors
    finally:
        for h in handles:
            h.remove()


def gather_statistics(
    block: nn.Module, prefix: str, adapter: ModelAdapter, inputs: Iterable[BlockInput],
    make_compressor: Callable[[str, nn.Module], LayerCompressor],
) -> dict[str, LayerCompressor]:
    """Compressors for the block's targets, fed by one run of the block on ``inputs``."""
    with _feeding(block, prefix, adapter, make_compressor) as compressors:
        for _ in block_outputs(block, inputs):
            pass
    return compressors


def compress_block(
    model: nn.Module, block: nn.Module, prefix: str, adapter: ModelAdapter,
    compressors: dict[str, LayerCompressor], group: Group | None = None,
) -> list[LayerResult]:
    """Compress the block's targets from their statistics (in place) and free them.

    With a process ``group``, the statistics are first summed over its ranks and the layer
    solves are shared out among them (:func:`prunekit.distributed.solve_shared`); every rank
    ends with the same weights and results.
    """
    comps = list(compressors.values())
    if not comps:
        return []
    if group is not None:
        reduce_statistics_(comps, group)
    type(comps[0]).prepare_block(comps, adapter.scale_folds(model, block, prefix))
    if group is not None:
        return solve_shared(comps, group)
    results = []
    for c in comps:
        results.append(c.compress())
        c.free()
    return results


def run_sequential(
    model: nn.Module,
    adapter: ModelAdapter,
    batches: Iterable[dict[str, Tensor]],
    make_compressor: Callable[[str, nn.Module], LayerCompressor],
    device: torch.device | str = "cpu",
    progress: Progress | None = None,
    group: Group | None = None,
) -> list[LayerResult]:
    """Compress every target layer of ``model`` block by block; returns per-layer results.

    Block 0's statistics are gathered during the capture pass itself, which runs that block
    anyway; every later block runs twice (statistics, then pruned outputs for the next one).
    With a process ``group`` each rank passes its own share of the calibration ``batches``
    (see :meth:`prunekit.distributed.Group.shard`).
    """
    device = torch.device(device)
    list_name, blocks = adapter.block_list(model)
    home = _device_of(model)
    blocks[0].to(device)
    with _feeding(blocks[0], f"{list_name}.0", adapter, make_compressor) as compressors:
        inputs = capture_block_inputs(model, adapter, batches, device, home)
    results: list[LayerResult] = []
    for i, block in enumerate(blocks):
        prefix = f"{list_name}.{i}"
        home = _device_of(block)
        block.to(device)
        if i > 0:
            compressors = gather_statistics(block, prefix, adapter, inputs, make_compressor)
        block_results = compress_block(model, block, prefix, adapter, compressors, group)
        results.extend(block_results)
        if i + 1 < len(blocks):  # the pruned outputs feed the next block
            inputs = run_block(block, inputs)
        block.to(home)
        if progress is not None:
            progress(i, len(blocks), block_results)
        log.debug("block %d/%d done", i + 1, len(blocks))
    return results
