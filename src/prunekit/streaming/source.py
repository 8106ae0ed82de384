"""Reading a safetensors checkpoint, single file or sharded, through shared read-only memory
maps: one tensor at a time, its pages dropped from the resident set once read."""

from __future__ import annotations

import json
import math
import mmap
import os
import warnings
from pathlib import Path

import torch
from torch import Tensor

from ..errors import ModelError


INDEX = "model.safetensors.index.json"


SINGLE = "model.safetensors"


SAFETENSORS_DTYPES = {
    "F64": torch.float64, "F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16,
    "I64": torch.int64, "I32": torch.int32, "I16": torch.int16, "I8": torch.int8,
    "U8": torch.uint8, "BOOL": torch.bool,
}


class _MappedFile:
    """One safetensors file mapped read-only and shared (``mmap.ACCESS_READ``): its pages
    belong to the page cache, not to the process's private memory, so a memory limit on the
    process (RLIMIT_DATA, a cgroup's anonymous memory) does not count the checkpoint. Layout:
    8-byte little-endian header length, a JSON header {name: dtype, shape, data_offsets},
    then the data."""

    def __init__(self, path: Path) -> None:
        try:
            with open(path, "rb") as f:
                n = int.from_bytes(f.read(8), "little")
                header = json.loads(f.read(n))
                self.map = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
        except (OSError, ValueError) as exc:
            raise ModelError(f"{path}: not a readable safetensors file ({exc})") from None
        header.pop("__metadata__", None)
        self.header, self.start, self.path = header, 8 + n, path

    def shape(self, name: str) -> tuple[int, ...]:
        return tuple(self.header[name]["shape"])

    def read(self, name: str) -> Tensor:
        """A private copy of tensor ``name`` (the mapping itself is never written)."""
        info = self.header[name]
        dtype = SAFETENSORS_DTYPES.get(info["dtype"])
        if dtype is None:
            raise ModelError(f"{self.path}: {name} has dtype {info['dtype']}, which prunekit "
                             f"does not read (supported: {', '.join(SAFETENSORS_DTYPES)})")
        begin, end = (self.start + o for o in info["data_offsets"])
        shape = info["shape"]
        if end - begin != math.prod(shape) * dtype.itemsize:
            raise ModelError(f"{self.path}: {name} holds {end - begin} bytes, not {shape} "
                             f"{info['dtype']}: the file is corrupt")
        out = torch.empty(shape, dtype=dtype)
        if out.numel():
            with warnings.catch_warnings():  # a view of the read-only map, copied at once
                warnings.simplefilter("ignore", UserWarning)
                view = torch.frombuffer(self.map, dtype=dtype, count=out.numel(), offset=begin)
            out.copy_(view.view(shape))
            del view
            self._unmap_pages(begin, end)
        return out

    def _unmap_pages(self, begin: int, end: int) -> None:
        """Drop the pages just read from this process's resident set: they stay in the page
        cache (a shared read-only map), but no longer count as the process's memory."""
        if hasattr(mmap, "MADV_DONTNEED"):  # Linux and most Unixes
            first = begin - begin % mmap.PAGESIZE
            self.map.madvise(mmap.MADV_DONTNEED, first, end - first)


class SafetensorsSource:
    """The safetensors files of a Hugging Face checkpoint folder (one file or a sharded index),
    memory-mapped; tensors are read one at a time."""

    def __init__(self, folder: str | os.PathLike) -> None:
        self.folder = Path(folder)
        if (self.folder / INDEX).is_file():
            try:
                weight_map = json.loads((self.folder / INDEX).read_text())["weight_map"]
            except (OSError, ValueError, KeyError) as exc:
                raise ModelError(f"{self.folder / INDEX}: unreadable index ({exc})") from None
        elif (self.folder / SINGLE).is_file():
            weight_map = None
        else:
            raise ModelError(
                f"{str(self.folder)!r} has no {SINGLE} or {INDEX}: streaming reads safetensors "
                "checkpoints; convert it once with model.save_pretrained(folder) (safetensors "
                "is the default), or prune it in memory without --stream"
            )
        files = sorted(set(weight_map.values())) if weight_map else [SINGLE]
        self._files = {f: _MappedFile(self.folder / f) for f in files}
        self.file_of = weight_map or dict.fromkeys(self._files[SINGLE].header, SINGLE)
        for name, f in self.file_of.items():
            if name not in self._files[f].header:
                raise ModelError(f"{self.folder / INDEX} puts {name} in {f}, which does not "
                                 "hold it: the checkpoint is incomplete")

    def __contains__(self, name: str) -> bool:
        return name in self.file_of

    def read(self, name: str, dtype: torch.dtype | None = None) -> Tensor:
        """Tensor ``name`` as a new CPU tensor (floating point ones converted to ``dtype``)."""
        t = self._files[self.file_of[name]].read(name)
        return t.to(dtype) if dtype is not None and t.dtype.is_floating_point else t

    def shape(self, name: str) -> tuple[int, ...]:
        return self._files[self.file_of[name]].shape(name)

    def nbytes(self) -> int:
        """Bytes of the checkpoint's safetensors files."""
        return sum((self.folder / f).stat().st_size for f in self._files)
