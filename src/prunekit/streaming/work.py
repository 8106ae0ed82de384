"""The work folder of a streamed run (``.NAME.partial``): its state, the finished blocks and
the activations between blocks, so that an interrupted run resumes after its last block."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file
from torch import Tensor

from ..errors import ModelError, UsageError
from ..pipeline import BlockInput, _hidden_of


STATE = "state.json"


STATE_VERSION = 1


_STORABLE = (Tensor, bool, int, float, str, type(None), torch.dtype, torch.Size)


def _to_storable(obj: Any, where: str) -> Any:
    """``obj`` with tensors moved to the CPU; an error for what torch.load(weights_only)
    could not read back (a cache object, a function)."""
    if isinstance(obj, Tensor):
        return obj.detach().cpu()
    if isinstance(obj, (tuple, list)):
        return type(obj)(_to_storable(o, where) for o in obj)
    if isinstance(obj, dict):
        return {k: _to_storable(v, f"{where}.{k}") for k, v in obj.items()}
    if isinstance(obj, _STORABLE):
        return obj
    raise ModelError(f"block input {where} is a {type(obj).__name__}: streaming can store only "
                     "tensors and plain values between blocks; prune this model in memory")


def _to_device(obj: Any, device: torch.device) -> Any:
    if isinstance(obj, Tensor):
        return obj.to(device)
    if isinstance(obj, (tuple, list)):
        return type(obj)(_to_device(o, device) for o in obj)
    if isinstance(obj, dict):
        return {k: _to_device(v, device) for k, v in obj.items()}
    return obj


class WorkDir:
    """``.NAME.partial`` beside the output ``NAME``: ``state.json`` (settings, blocks done,
    their results), ``blocks/`` (each finished block's tensors), ``inputs/`` (the block
    arguments of every batch other than the hidden state) and ``acts/I/`` (the hidden state of
    every batch entering block I)."""

    def __init__(self, out: Path) -> None:
        self.out = out
        self.path = out.parent / f".{out.name}.partial"

    def open(self, settings: dict[str, Any], restart: bool) -> dict[str, Any]:
        """The state of an unfinished run with the same ``settings``, or a new one."""
        if restart and self.path.exists():
            shutil.rmtree(self.path)
        state_file = self.path / STATE
        if state_file.is_file():
            state = json.loads(state_file.read_text())
            if state.get("settings") != settings or state.get("version") != STATE_VERSION:
                old = state.get("settings") or {}
                diff = sorted(k for k in set(old) | set(settings) if old.get(k) != settings.get(k))
                raise UsageError(
                    f"{self.path} holds an unfinished run with other settings ({', '.join(diff)}"
                    "): rerun with the same settings to resume it, or pass --restart to discard it"
                )
            return state
        if self.path.exists():  # a run that stopped before its first state: nothing to keep
            shutil.rmtree(self.path)
        (self.path / "blocks").mkdir(parents=True)  # inputs/ and acts/ come with their files
        state = {"version": STATE_VERSION, "settings": settings, "blocks_done": 0,
                 "layers": [], "files": {}, "entries": {}}
        self.save(state)
        return state

    def save(self, state: dict[str, Any]) -> None:
        """Replace ``state.json`` atomically (a crash leaves the old or the new one)."""
        tmp = self.path / f"{STATE}.tmp"
        tmp.write_text(json.dumps(state, default=str))
        os.replace(tmp, self.path / STATE)

    def acts(self, block: int, batch: int) -> Path:
        return self.path / "acts" / f"{block:05d}" / f"{batch:05d}.safetensors"

    def inputs(self, batch: int) -> Path:
        return self.path / "inputs" / f"{batch:05d}.pt"

    def store_input(self, batch: int, record: BlockInput) -> None:
        """Save batch ``batch``'s block-0 input: its extra arguments once, its hidden state
        as the first activations."""
        args, kwargs = record
        hidden = _hidden_of(args, kwargs)
        extras = {"in_args": bool(args), "args": args[1:] if args else (),
                  "kwargs": {k: v for k, v in kwargs.items() if k != "hidden_states"}}
        self.inputs(batch).parent.mkdir(parents=True, exist_ok=True)  # another machine's folder
        torch.save(_to_storable(extras, f"of batch {batch}"), self.inputs(batch))
        self.store_hidden(0, batch, hidden)

    def store_hidden(self, block: int, batch: int, hidden: Tensor) -> None:
        path = self.acts(block, batch)
        path.parent.mkdir(parents=True, exist_ok=True)
        save_file({"hidden": hidden.detach().cpu().contiguous()}, str(path))

    def load(self, block: int, batch: int, device: torch.device) -> BlockInput:
        path = self.acts(block, batch)
        if not path.is_file():
            raise ModelError(f"{path} is missing: resume with the same processes and machines "
                             "as the interrupted run, or pass --restart")
        hidden = load_file(str(path))["hidden"].to(device)
        extras = _to_device(torch.load(self.inputs(batch), weights_only=True), device)
        if extras["in_args"]:
            return (hidden, *extras["args"]), extras["kwargs"]
        return tuple(extras["args"]), {**extras["kwargs"], "hidden_states": hidden}

    def drop_block_inputs(self, block: int, batches: Sequence[int]) -> None:
        for j in batches:
            self.acts(block, j).unlink(missing_ok=True)
        with contextlib.suppress(OSError):
            self.acts(block, 0).parent.rmdir()


class _Inputs:
    """The recorded inputs of one block for this rank's batches, read from disk one by one."""

    def __init__(self, work: WorkDir, block: int, batches: Sequence[int], device: torch.device):
        self.work, self.block, self.batches, self.device = work, block, batches, device

    def __iter__(self) -> Iterator[BlockInput]:
        for j in self.batches:
            yield self.work.load(self.block, j, self.device)
