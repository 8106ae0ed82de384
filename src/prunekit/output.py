"""Output folders, written atomically: a run writes into a hidden temporary sibling that is
renamed into place only when complete, so a failure never leaves half a folder, and an
existing folder (with ``overwrite``) is replaced only once the new one is whole."""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path

from torch import nn

from .errors import ModelError, UsageError
from .files import chmod_files, current_umask
from .formats.checkpoint import write_checkpoint
from .formats.export import export_compressed_tensors
from .models.loaders import LoadedModel
from .report import PruneReport, report_text, write_json
from .run import quantized_weights


REPORT_FILE = "prune_report.json"
TABLE_FILE = "prune_report.txt"


def check_output(out: str | os.PathLike, overwrite: bool) -> Path:
    """Fail before any work if ``out`` cannot be written: it exists (without ``overwrite``),
    it is a file, or its nearest existing parent is not a writable folder."""
    path = Path(out).expanduser()
    if path.exists() and not path.is_dir():
        raise UsageError(f"--out {str(path)!r} is a file, not a directory: pass another --out")
    if path.exists() and not overwrite:
        raise UsageError(f"output directory {str(path)!r} exists: pass --overwrite or another --out")
    parent = path.absolute().parent
    while not parent.exists():
        parent = parent.parent
    if not parent.is_dir() or not os.access(parent, os.W_OK | os.X_OK):
        raise UsageError(
            f"--out {str(path)!r}: {str(parent)!r} is not a writable directory: pass another --out"
        )
    return path


def write_output(report: PruneReport, out: Path, overwrite: bool,
                 write_model: Callable[[Path], None]) -> Path:
    """Write a model (by ``write_model(folder)``) and its report files to ``out`` atomically
    (see :func:`write_folder`)."""

    def write(tmp: Path) -> None:
        write_model(tmp)
        write_json(report, tmp / REPORT_FILE)
        (tmp / TABLE_FILE).write_text(report_text(report) + "\n")

    return write_folder(out, overwrite, write)


def write_folder(path: Path, overwrite: bool, write: Callable[[Path], None]) -> Path:
    """Fill a new folder ``path`` (checked by :func:`check_output` at the edge) with
    ``write(folder)``, atomically.

    Everything goes to a temporary sibling directory that is renamed at the end, so a failure
    never leaves a half-written folder, and an existing ``out`` (with ``overwrite``) is replaced
    only once the new one is complete; if the swap fails the old one is put back. OS errors
    (disk full, permissions) become a :class:`ModelError` naming ``out``.
    """
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.tmp-", dir=path.parent))
        tmp.chmod(0o777 & ~current_umask())  # mkdtemp makes 0700; the output is an ordinary folder
    except OSError as exc:
        raise ModelError(f"cannot write {str(path)!r}: {exc}: pass another --out") from None
    try:
        write(tmp)
        replace_dir(tmp, path, overwrite)
    except OSError as exc:
        raise ModelError(
            f"cannot write {str(path)!r}: {exc}; nothing was written there: free disk space, "
            "fix permissions, or pass another --out"
        ) from None
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return path


def replace_dir(new: Path, path: Path, overwrite: bool) -> None:
    """Rename ``new`` to ``path``; an existing ``path`` (with ``overwrite``) is swapped out,
    and restored on failure. One that appeared since the edge checked it, without
    ``overwrite``, is an error: nothing is replaced."""
    if not path.exists():
        new.rename(path)
        return
    if not overwrite:
        raise UsageError(f"output directory {str(path)!r} appeared during the run: pass "
                         "--overwrite or another --out")
    holder = Path(tempfile.mkdtemp(prefix=f".{path.name}.old-", dir=path.parent))
    try:
        path.rename(holder / path.name)
        try:
            new.rename(path)
        except BaseException:
            (holder / path.name).rename(path)
            raise
    finally:
        shutil.rmtree(holder, ignore_errors=True)


def save_module(model: nn.Module, report: PruneReport, out: Path, overwrite: bool = False,
                builder: str | None = None) -> Path:
    """Write a plain module as a prunekit checkpoint with its report to the checked folder
    ``out``, atomically; ``builder`` (e.g. 'digits-mlp:128') lets :func:`prunekit.load`
    rebuild it without an instance."""

    def write(tmp: Path) -> None:
        write_checkpoint(tmp, model, quantized=quantized_weights(report), report=report.to_dict(),
                         builder=builder)
        chmod_files(tmp)

    return write_output(report, out, overwrite, write)


def write_pruned(loaded: LoadedModel, report: PruneReport, out: Path, overwrite: bool = False,
                 fmt: str = "prunekit", tensor_format: str = "auto") -> Path:
    """Write a compressed Hugging Face model, its tokenizer and its report to the checked
    folder ``out`` in the checked format ``fmt`` (see :func:`prunekit.save_pruned`)."""
    quantized = quantized_weights(report)

    def write(tmp: Path) -> None:
        if fmt == "hf":
            loaded.model.save_pretrained(tmp)
            loaded.tokenizer.save_pretrained(tmp)
            return
        if fmt == "compressed-tensors":
            export_compressed_tensors(loaded.model, quantized, tmp, loaded.tokenizer)
        else:
            write_checkpoint(tmp, loaded.model, quantized=quantized, tokenizer=loaded.tokenizer,
                             report=report.to_dict(), tensor_format=tensor_format,
                             targets={r.name for r in report.layers},
                             provenance={"source": loaded.source, "method": report.label})
        chmod_files(tmp)

    return write_output(report, out, overwrite, write)
