"""Prune a Hugging Face checkpoint larger than memory, one block at a time.

The model is built as a skeleton whose parameters live on PyTorch's ``meta`` device (no
memory; buffers such as rotary frequencies are computed for real). Its safetensors files,
sharded or not, are memory-mapped. Then, as in SparseGPT's sequential scheme (Frantar &
Alistarh 2023, Sec. 4), for each block: its weights are read, its statistics gathered from
the calibration activations, its layers compressed, its outputs (the next block's inputs)
computed, and its compressed tensors written to their own file; then its weights are dropped.
Activations live on disk between blocks, one batch in memory at a time, so the peak is about
one block, its statistics and solver workspace, and one batch (:func:`~.skeleton.estimate_memory`).

Every finished block is recorded in a work folder beside the output (``.NAME.partial``): its
tensors, the next block's inputs and ``state.json``. An interrupted or crashed run leaves the
output untouched, and the same command resumes after the last finished block. The finished
folder is renamed into place at the end, and the work folder removed.

The package: :mod:`~.source` reads the checkpoint, :mod:`~.skeleton` builds the meta model
and estimates the memory, :mod:`~.work` keeps the resumable work folder, :mod:`~.writers`
write the blocks and assemble the output, and :mod:`~.job` runs it all.
"""

from .job import StreamJob, stream_model, stream_prune
from .skeleton import MemoryEstimate, empty_model, estimate_memory, return_freed_memory
from .source import INDEX, SINGLE, SafetensorsSource
from .work import STATE, WorkDir

__all__ = ["INDEX", "SINGLE", "STATE", "MemoryEstimate", "SafetensorsSource", "StreamJob",
           "WorkDir", "empty_model", "estimate_memory", "return_freed_memory", "stream_model",
           "stream_prune"]
