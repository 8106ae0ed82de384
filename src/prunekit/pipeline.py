"""Sequential calibration: capture block inputs, then for each block feed hooks, compress,
and re-run it so the pruned outputs become the next block's inputs (Frantar & Alistarh 2023,
Sec. 4, "sequential" layer-wise pruning).

Inside a block, either every layer is calibrated on the dense block (one run of it), or, "true
sequential" (GPTQ's ``--true-sequential``, Frantar et al. 2023), stage by stage in the order
the forward calls them (q/k/v, the attention output, the MLP's up/gate, its down projection):
each stage's inputs are recomputed with the stages before it already compressed, by a forward
that stops once the stage's last layer has been fed.

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
    on_batch: Callable[[dict[str, Tensor]], None] | None = None,
) -> list[BlockInput]:
    """Record the (args, kwargs) the first block receives for every batch.

    The block list is swapped for a one-element list holding only the first block, whose
    forward pre-hook records its inputs; the forward pass then ends naturally after that
    block (no exception is raised to stop it). Output heads are not run: the model's
    ``base_model`` is called. ``on_batch(batch)`` is called before each batch's forward.
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
                if on_batch is not None:
                    on_batch(batch)
                base(**{k: v.to(device) for k, v in batch.items()}, use_cache=False)
    finally:
        handle.remove()
        base.to(home)
        setattr(parent, attr, blocks)
    if not records:
        raise ModelError("the calibration set produced no batches: nothing reached block 0")
    return records


def token_mask(batch: dict[str, Tensor]) -> Tensor | None:
    """The (batch, tokens) bool mask of the real tokens of a calibration batch: its
    ``attention_mask``, or None when there is no padding (every token counts)."""
    mask = batch.get("attention_mask")
    if mask is None or bool(mask.all()):
        return None
    return mask.bool()


def real_tokens(x: Tensor, mask: Tensor | None, name: str) -> Tensor:
    """x (batch, tokens, features) without its padding tokens (n real, features); x itself
    when ``mask`` is None. ``name``: the layer, for the error."""
    if mask is None:
        return x
    if tuple(x.shape[:2]) != tuple(mask.shape):
        raise ModelError(
            f"{name}: input of shape {tuple(x.shape)} does not start with the batch's (batch, "
            f"tokens) {tuple(mask.shape)}: padding cannot be left out; calibrate without "
            "padding (--calib-protocol windows)")
    return x[mask.to(x.device)]


class _Feeder:
    """Feeds every compressor its layer's inputs through forward hooks.

    Layers that receive the very same input tensor in a forward pass (q/k/v projections,
    gate/up projections) share one Hessian accumulator from the first batch on, so XᵀX is
    computed once for them. ``mask`` (set before each batch: :func:`token_mask`) keeps padding
    tokens out of every statistic.
    """

    def __init__(self) -> None:
        self.last_input: Tensor | None = None
        self.last: LayerCompressor | None = None
        self.leader: dict[int, LayerCompressor] = {}
        self.mask: Tensor | None = None

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
            comp.add_batch(real_tokens(x, self.mask, comp.layer_name))
            self.last_input, self.last = x, comp

        return feed


class _Stop(Exception):
    """Ends a partial forward of a block once the current stage's layers have been fed."""


def _fed_outputs(block: nn.Module, inputs: Iterable[BlockInput],
                 masks: Sequence[Tensor | None] | None,
                 feeder: _Feeder) -> Iterator[Tensor | None]:
    """Run ``block`` on each input with ``feeder.mask`` set to that input's token mask first;
    yields the block's output, or None where a hook stopped the forward (:class:`_Stop`)."""
    with torch.no_grad():
        for i, (args, kwargs) in enumerate(inputs):
            feeder.mask = masks[i] if masks is not None else None
            try:
                out = _block_output(block(*args, **kwargs))
            except _Stop:
                out = None
            yield out


def block_outputs(block: nn.Module, inputs: Iterable[BlockInput]) -> Iterator[Tensor]:
    """The hidden state ``block`` returns for each recorded input, one at a time."""
    with torch.no_grad():
        for args, kwargs in inputs:
            yield _block_output(block(*args, **kwargs))


def input_norms(
    model: nn.Module, adapter: ModelAdapter, batches: Iterable[dict[str, Tensor]],
    device: torch.device | str = "cpu",
) -> dict[str, Tensor]:
    """{target name: ‖X_j‖₂ of each input column over the calibration tokens} of the dense
    model (padding left out), block by block as the pipeline runs it: what OWL's outlier
    ratios need before any block is pruned."""
    device = torch.device(device)
    list_name, blocks = adapter.block_list(model)
    masks: list[Tensor | None] = []
    inputs = capture_block_inputs(model, adapter, batches, device, _device_of(model),
                                  lambda batch: masks.append(token_mask(batch)))
    sums: dict[str, Tensor] = {}
    state = _Feeder()  # only its mask: set before each input

    def add(name: str) -> Callable:
        def hook(_module: nn.Module, args: tuple) -> None:
            x = real_tokens(args[0].detach(), state.mask, name)
            x = x.reshape(-1, x.shape[-1]).double()
            sums[name] = sums.get(name, 0) + x.pow(2).sum(0).cpu()
        return hook

    for i, block in enumerate(blocks):
        home = _device_of(block)
        block.to(device)
        handles = [layer.register_forward_pre_hook(add(name)) for name, layer
                   in adapter.targets(block, f"{list_name}.{i}").items()]
        try:
            outputs = list(_fed_outputs(block, inputs, masks, state))
        finally:
            for h in handles:
                h.remove()
            block.to(home)
        inputs = [_with_hidden(a, k, out) for (a, k), out in zip(inputs, outputs)]
    return {name: s.sqrt().float() for name, s in sums.items()}


def run_block(block: nn.Module, inputs: Sequence[BlockInput]) -> list[BlockInput]:
    """Run ``block`` on every recorded input; return the inputs of the next block."""
    return [_with_hidden(args, kwargs, out)
            for (args, kwargs), out in zip(inputs, block_outputs(block, inputs))]


@contextlib.contextmanager
def _feeding(
    layers: dict[str, nn.Module], make_compressor: Callable[[str, nn.Module], LayerCompressor],
) -> Iterator[tuple[dict[str, LayerCompressor], _Feeder]]:
    """Compressors for ``layers``, fed by forward hooks while the context is open."""
    compressors = {name: make_compressor(name, layer) for name, layer in layers.items()}
    feeder = _Feeder()
    handles = [c.layer.register_forward_hook(feeder.hook(c)) for c in compressors.values()]
    try:
        yield compressors, feeder
    finally:
        for h in handles:
            h.remove()


def gather_statistics(
    block: nn.Module, prefix: str, adapter: ModelAdapter, inputs: Iterable[BlockInput],
    make_compressor: Callable[[str, nn.Module], LayerCompressor],
    masks: Sequence[Tensor | None] | None = None,
) -> dict[str, LayerCompressor]:
    """Compressors for the block's targets, fed by one run of the block on ``inputs``;
    ``masks[i]`` (:func:`token_mask`) leaves input i's padding tokens out."""
    with _feeding(adapter.targets(block, prefix), make_compressor) as (compressors, feeder):
        for _ in _fed_outputs(block, inputs, masks, feeder):
            pass
    return compressors


def call_stages(block: nn.Module, targets: dict[str, nn.Module],
                first: BlockInput) -> list[list[str]]:
    """The block's target layers grouped into stages, in the order the forward calls them on
    ``first``: layers that receive the very same input tensor (q/k/v; gate/up) form one
    stage. Targets the forward never calls are left out (their statistics would be empty)."""
    seen: list[tuple[str, Tensor]] = []  # the inputs are held: an id() could be reused

    def record(name: str) -> Callable:
        def hook(_module: nn.Module, inputs: tuple) -> None:
            if all(n != name for n, _ in seen):
                seen.append((name, inputs[0]))
        return hook

    handles = [layer.register_forward_pre_hook(record(n)) for n, layer in targets.items()]
    try:
        with torch.no_grad():
            block(*first[0], **first[1])
    finally:
        for h in handles:
            h.remove()
    stages: list[list[str]] = []
    for i, (name, x) in enumerate(seen):
        if i and x is seen[i - 1][1]:
            stages[-1].append(name)
        else:
            stages.append([name])
    return stages


def gather_stage(
    block: nn.Module, layers: dict[str, nn.Module], inputs: Sequence[BlockInput],
    make_compressor: Callable[[str, nn.Module], LayerCompressor],
    masks: Sequence[Tensor | None] | None = None,
) -> dict[str, LayerCompressor]:
    """Compressors for one stage's ``layers`` (in call order), fed by forwards of ``block``
    that stop right after the last of them has received its input."""
    def stop(*_: Any) -> None:
        raise _Stop

    with _feeding(layers, make_compressor) as (compressors, feeder):
        handle = list(layers.values())[-1].register_forward_hook(stop)  # after the feeder's
        try:
            for _ in _fed_outputs(block, inputs, masks, feeder):
                pass
        finally:
            handle.remove()
    return compressors


def compress_block_in_stages(
    model: nn.Module, block: nn.Module, prefix: str, adapter: ModelAdapter,
    inputs: Sequence[BlockInput], make_compressor: Callable[[str, nn.Module], LayerCompressor],
    masks: Sequence[Tensor | None] | None = None, group: Group | None = None,
) -> list[LayerResult]:
    """True-sequential compression of one block: each stage (:func:`call_stages`) is
    calibrated on the inputs the block gives it once the stages before it are compressed, then
    compressed (:func:`compress_block`). Results in the adapter's order of the targets."""
    targets = adapter.targets(block, prefix)
    if not targets:
        return []
    results: list[LayerResult] = []
    for stage in call_stages(block, targets, inputs[0]):
        compressors = gather_stage(block, {n: targets[n] for n in stage}, inputs,
                                   make_compressor, masks)
        results += compress_block(model, block, prefix, adapter, compressors, group)
    order = list(targets)
    return sorted(results, key=lambda r: order.index(r.name))


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
    true_sequential: bool = False,
) -> list[LayerResult]:
    """Compress every target layer of ``model`` block by block; returns per-layer results.

    Block 0's statistics are gathered during the capture pass itself, which runs that block
    anyway; every later block runs twice (statistics, then pruned outputs for the next one).
    ``true_sequential``: each block stage by stage (:func:`compress_block_in_stages`), at the
    cost of a partial forward per stage instead of the statistics run.
    With a process ``group`` each rank passes its own share of the calibration ``batches``
    (see :meth:`prunekit.distributed.Group.shard`).
    """
    device = torch.device(device)
    list_name, blocks = adapter.block_list(model)
    home = _device_of(model)
    blocks[0].to(device)
    masks: list[Tensor | None] = []

    def on_batch(batch: dict[str, Tensor]) -> None:
        masks.append(token_mask(batch))
        feeder.mask = masks[-1]

    if true_sequential:  # every stage gathers its own statistics
        inputs = capture_block_inputs(model, adapter, batches, device, home,
                                      lambda batch: masks.append(token_mask(batch)))
    else:
        with _feeding(adapter.targets(blocks[0], f"{list_name}.0"),
                      make_compressor) as (compressors, feeder):
            inputs = capture_block_inputs(model, adapter, batches, device, home, on_batch)
    results: list[LayerResult] = []
    for i, block in enumerate(blocks):
        prefix = f"{list_name}.{i}"
        home = _device_of(block)
        block.to(device)
        if true_sequential:
            block_results = compress_block_in_stages(model, block, prefix, adapter, inputs,
                                                     make_compressor, masks, group)
        else:
            if i > 0:
                compressors = gather_statistics(block, prefix, adapter, inputs,
                                                make_compressor, masks)
            block_results = compress_block(model, block, prefix, adapter, compressors, group)
        results.extend(block_results)
        if i + 1 < len(blocks):  # the pruned outputs feed the next block
            inputs = run_block(block, inputs)
        block.to(home)
        if progress is not None:
            progress(i, len(blocks), block_results)
        log.debug("block %d/%d done", i + 1, len(blocks))
    return results
