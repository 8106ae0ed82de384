"""prunekit checkpoints: a folder with one safetensors file of compactly stored tensors and a
JSON manifest that says how to rebuild every tensor bit for bit (docs/formats.md).

    DIR/prunekit.json       manifest: format name and version, the model (Hugging Face config
                            class, or a plain builder), every tensor's format, shape, dtype and
                            parts, the file's size and SHA-256, provenance, the prune report
    DIR/prunekit.safetensors   the parts, named "<tensor>::<part>" (not model.safetensors, so
                            that transformers refuses the folder instead of half-loading it)
    DIR/config.json, tokenizer files   (Hugging Face models)

Writing goes to a temporary folder renamed at the end; loading checks the version, the file's
size and checksum, and every part's dtype and shape before building the model, and fails with
a :class:`ModelError` that says what is wrong.
"""

from __future__ import annotations

import datetime
import hashlib
import json
import logging
import math
import platform
from collections.abc import Callable, Collection, Mapping
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import Tensor, nn
from transformers import AutoConfig, AutoModel, AutoModelForCausalLM

from .._version import __version__
from ..errors import ModelError
from ..models.digits import digits_mlp, parse_small_spec
from ..models.loaders import model_kind
from ..quant.grid import QuantizedWeight
from .tensors import FORMATS, Encoded, best_encoding, decode

log = logging.getLogger(__name__)

MANIFEST = "prunekit.json"
WEIGHTS = "prunekit.safetensors"  # not model.safetensors: transformers must not half-load it
FORMAT_NAME = "prunekit-checkpoint"
VERSION = 2  # 2: tensors may live in several files (a streamed model, one per block)
DTYPES = {str(d).removeprefix("torch."): d for d in (
    torch.float32, torch.float16, torch.bfloat16, torch.float64, torch.int64, torch.int32,
    torch.int16, torch.int8, torch.uint8, torch.bool)}


def is_checkpoint(path: str | Path) -> bool:
    return (Path(path) / MANIFEST).is_file()


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 22), b""):
            h.update(chunk)
    return h.hexdigest()


def _dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")


def _conv1d_layers(model: nn.Module) -> set[str]:
    return {n for n, m in model.named_modules() if type(m).__name__ == "Conv1D"}


def encode_state(model: nn.Module, quantized: Mapping[str, QuantizedWeight] | None = None,
                 tensor_format: str = "auto", targets: Collection[str] | None = None,
                 prefix: str = "", file: str | None = None,
                 ) -> tuple[dict[str, Tensor], dict[str, Any]]:
    """Every state-dict tensor in its smallest exact format: ({part name: tensor}, {tensor
    name: manifest entry}). ``quantized``: {layer name: codes} of quantized layers.
    ``tensor_format``: "auto" (smallest), or one format for the weights of the ``targets``
    layers (default: every layer with a 2-D weight); an error names a weight it cannot hold.
    ``prefix``: the module's qualified name in its model (one block of a streamed model);
    ``file``: the safetensors file of a multi-file checkpoint its parts go to."""
    check_tensor_format(tensor_format)
    quantized = quantized or {}
    conv1d = _conv1d_layers(model)
    parts: dict[str, Tensor] = {}
    entries: dict[str, Any] = {}
    seen: dict[tuple, str] = {}
    stored: set[int] = set()
    for local, t in model.state_dict().items():
        name = f"{prefix}.{local}" if prefix else local
        key = (t.data_ptr(), tuple(t.shape), t.stride(), t.dtype) if t.numel() else None
        if key is not None and key in seen:  # tied weights are stored once
            entries[name] = {"tied_to": seen[key]}
            continue
        if key is not None:
            seen[key] = name
        layer = name.removesuffix(".weight")
        transposed = local.endswith(".weight") and local.removesuffix(".weight") in conv1d
        forced = (tensor_format != "auto" and t.dim() == 2 and name.endswith(".weight")
                  and (targets is None or layer in targets))
        qw = quantized.get(layer) if name.endswith(".weight") else None
        entry = encode_tensor(name, t.T if transposed else t, parts, stored, qw,
                              tensor_format if forced else None)
        if transposed:
            entry["transposed"] = True  # Conv1D stores (in, out): encoded as (out, in)
        if file is not None:
            entry["file"] = file
        entries[name] = entry
    return parts, entries


def check_tensor_format(tensor_format: str) -> None:
    if tensor_format != "auto" and tensor_format not in FORMATS:
        raise ModelError(f"tensor format {tensor_format!r}: use auto or one of {', '.join(FORMATS)}")


def encode_tensor(name: str, W: Tensor, parts: dict[str, Tensor], stored: set[int],
                  qw: QuantizedWeight | None = None, forced: str | None = None) -> dict[str, Any]:
    """Encode one tensor in its smallest exact format (or ``forced``), adding its parts to
    ``parts`` (``stored``: data pointers already there); returns its manifest entry."""
    try:
        enc = best_encoding(W, qw, forced) \
            if W.dtype.is_floating_point else Encoded("dense", {"values": W.contiguous()}, {})
    except ValueError as exc:
        raise ModelError(f"{name}: {exc}") from None
    entry = {"format": enc.format, "shape": list(W.shape), "dtype": _dtype_name(W.dtype),
             "meta": enc.meta, "numel": W.numel(), "nonzero": int((W != 0).sum()), "parts": {}}
    for part, value in enc.parts.items():
        value = value.contiguous()
        if value.numel() and value.data_ptr() in stored:  # shared (e.g. one AWQ scale of
            value = value.clone()  # q/k/v): safetensors stores each part on its own
        stored.add(value.data_ptr())
        parts[f"{name}::{part}"] = value
        entry["parts"][part] = {"dtype": _dtype_name(value.dtype), "shape": list(value.shape)}
    return entry


def model_description(model: nn.Module, builder: str | None = None) -> dict[str, Any]:
    """How to rebuild the module: a Hugging Face config (written beside), or a builder spec."""
    config = getattr(model, "config", None)
    if config is not None and hasattr(model, "save_pretrained"):
        return {"kind": "hf", "class": type(model).__name__, "task": model_kind(config)}
    return {"kind": "plain", "class": f"{type(model).__module__}.{type(model).__qualname__}",
            "builder": builder}


def write_parts(folder: Path, file: str, parts: Mapping[str, Tensor]) -> dict[str, Any]:
    """Write ``parts`` to ``folder/file``; returns its manifest record (bytes, SHA-256)."""
    save_file(dict(parts), str(folder / file), metadata={"format": FORMAT_NAME})
    return {"bytes": (folder / file).stat().st_size, "sha256": _sha256(folder / file)}


def write_checkpoint(folder: Path, model: nn.Module, *, quantized=None, tokenizer=None,
                     report: dict | None = None, builder: str | None = None,
                     tensor_format: str = "auto", targets: Collection[str] | None = None,
                     provenance: dict | None = None) -> dict:
    """Write the checkpoint files into ``folder`` (an empty, temporary folder: the caller
    renames it into place). Returns the manifest."""
    parts, entries = encode_state(model, quantized, tensor_format, targets)
    files = {WEIGHTS: write_parts(folder, WEIGHTS, parts)}
    return write_manifest(folder, model, entries, files, tokenizer=tokenizer, report=report,
                          builder=builder, provenance=provenance)


def write_manifest(folder: Path, model: nn.Module, entries: dict[str, Any],
                   files: dict[str, Any], *, tokenizer=None, report: dict | None = None,
                   builder: str | None = None, provenance: dict | None = None) -> dict:
    """Write the manifest of tensors ``entries`` stored in ``files`` (with the config and
    tokenizer of a Hugging Face ``model``, which may be a skeleton without weights)."""
    description = model_description(model, builder)
    if description["kind"] == "hf":
        model.config.save_pretrained(folder)
        if tokenizer is not None:
            tokenizer.save_pretrained(folder)
    manifest = {
        "format": FORMAT_NAME, "version": 1 if set(files) == {WEIGHTS} else VERSION,
        "model": description, "tensors": entries, "files": files,
        "provenance": {"prunekit": __version__, "torch": torch.__version__,
                       "python": platform.python_version(),
                       "written": datetime.datetime.now(datetime.timezone.utc).isoformat(
                           timespec="seconds"), **(provenance or {})},
        "report": report,
    }
    (folder / MANIFEST).write_text(json.dumps(manifest, indent=1) + "\n")
    return manifest


def read_manifest(path: str | Path) -> dict[str, Any]:
    """The manifest of checkpoint ``path``, with its format name and version checked."""
    path = Path(path)
    file = path / MANIFEST
    if not file.is_file():
        raise ModelError(f"{str(path)!r} is not a prunekit checkpoint: no {MANIFEST} (a plain "
                         "Hugging Face folder loads with prunekit.load_model)")
    try:
        manifest = json.loads(file.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ModelError(f"{file}: unreadable manifest ({exc}): the checkpoint is corrupt") from None
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT_NAME:
        raise ModelError(f"{file} is not a {FORMAT_NAME} manifest: a foreign or corrupt file")
    version = manifest.get("version")
    if not isinstance(version, int) or version > VERSION:
        raise ModelError(f"{file}: checkpoint format version {version!r}; this prunekit reads "
                         f"version {VERSION} and older: upgrade prunekit")
    for key in ("model", "tensors", "files"):
        if not isinstance(manifest.get(key), dict):
            raise ModelError(f"{file}: manifest has no {key!r} section: the checkpoint is corrupt")
    return manifest


def _check_files(path: Path, manifest: dict) -> None:
    for name, info in manifest["files"].items():
        f = path / name
        if not f.is_file():
            raise ModelError(f"{f}: missing: the checkpoint is incomplete")
        size = f.stat().st_size
        if size != info.get("bytes"):
            raise ModelError(f"{f}: {size} bytes, the manifest says {info.get('bytes')}: the "
                             "file is truncated or was replaced")
        if _sha256(f) != info.get("sha256"):
            raise ModelError(f"{f}: checksum mismatch: the file is corrupt")


def read_state(path: str | Path, manifest: dict | None = None) -> dict[str, Tensor]:
    """The decoded state dict of checkpoint ``path``, validated against its manifest."""
    path = Path(path)
    manifest = manifest or read_manifest(path)
    _check_files(path, manifest)
    stored: dict[str, Tensor] = {}
    for file in manifest["files"]:
        try:
            part = load_file(str(path / file))
        except (SafetensorError, OSError) as exc:
            raise ModelError(f"{path / file}: not a readable safetensors file ({exc})") from None
        expected = {f"{n}::{p}" for n, e in manifest["tensors"].items()
                    if e.get("file", WEIGHTS) == file for p in e.get("parts", {})}
        if set(part) != expected:
            extra, missing = sorted(set(part) - expected), sorted(expected - set(part))
            raise ModelError(f"{path / file} does not match the manifest: missing "
                             f"{missing[:3]}, unexpected {extra[:3]}")
        stored.update(part)
    state: dict[str, Tensor] = {}
    for name, entry in manifest["tensors"].items():
        if "tied_to" in entry:
            continue
        parts = {}
        for part, info in entry["parts"].items():
            t = stored[f"{name}::{part}"]
            if _dtype_name(t.dtype) != info["dtype"] or list(t.shape) != info["shape"]:
                raise ModelError(f"{name}::{part}: {_dtype_name(t.dtype)} {list(t.shape)} in the "
                                 f"file, {info['dtype']} {info['shape']} in the manifest")
            parts[part] = t
        dtype = DTYPES.get(entry["dtype"])
        if dtype is None or entry["format"] not in FORMATS:
            raise ModelError(f"{name}: unknown dtype {entry['dtype']!r} or format "
                             f"{entry['format']!r}: written by a newer prunekit?")
        t = decode(Encoded(entry["format"], parts, entry.get("meta", {})), tuple(entry["shape"]),
                   dtype)
        if math.prod(entry["shape"]) != entry.get("numel", t.numel()):
            raise ModelError(f"{name}: shape {entry['shape']} does not hold {entry['numel']} values")
        state[name] = t.T.contiguous() if entry.get("transposed") else t
    for name, entry in manifest["tensors"].items():
        if "tied_to" in entry:
            if entry["tied_to"] not in state:
                raise ModelError(f"{name}: tied to {entry['tied_to']!r}, which is not stored")
            state[name] = state[entry["tied_to"]]
    return state


def build_model(path: Path, manifest: dict, skeleton: nn.Module | None = None) -> nn.Module:
    """The module to load the state into: ``skeleton``, the Hugging Face class from the config
    beside the manifest, or the plain builder."""
    if skeleton is not None:
        return skeleton
    desc = manifest["model"]
    if desc.get("kind") == "hf":
        config = AutoConfig.from_pretrained(path, local_files_only=True)
        auto = AutoModelForCausalLM if desc.get("task") == "causal" else AutoModel
        return auto.from_config(config)
    builder = desc.get("builder")
    if builder:
        return digits_mlp(parse_small_spec(builder))
    raise ModelError(f"{path}: a plain {desc.get('class')} without a builder: pass the module "
                     "to load into, prunekit.load(DIR, model=MyModule(...))")


def load_state_into(model: nn.Module, state: dict[str, Tensor]) -> nn.Module:
    """Copy ``state`` into ``model`` (dtypes included), every key matched, bit for bit."""
    own = model.state_dict()
    missing, unexpected = sorted(set(own) - set(state)), sorted(set(state) - set(own))
    if missing or unexpected:
        raise ModelError(f"the checkpoint does not fit the model: missing {missing[:3]}, "
                         f"unexpected {unexpected[:3]}")
    with torch.no_grad():
        for name, t in state.items():
            if tuple(own[name].shape) != tuple(t.shape):
                raise ModelError(f"{name}: {tuple(t.shape)} in the checkpoint, "
                                 f"{tuple(own[name].shape)} in the model")
        for name, param in list(model.named_parameters()) + list(model.named_buffers()):
            if name in state and param.dtype != state[name].dtype:
                param.data = param.data.to(state[name].dtype)
        model.load_state_dict(state, strict=True)
    return model.eval()


def checkpoint_writer(model: nn.Module, **kwargs: Any) -> Callable[[Path], None]:
    """``write(folder)`` for :func:`prunekit.api.write_output`."""
    return lambda folder: write_checkpoint(folder, model, **kwargs) and None


def inspect_checkpoint(path: str | Path) -> dict[str, Any]:
    """What a checkpoint stores, from its manifest and the real file sizes: per tensor (format,
    shape, sparsity, stored bytes, bits per value) and totals against dense float16/float32.
    The parts' bytes are measured from the safetensors file's own header offsets."""
    path = Path(path)
    manifest = read_manifest(path)
    sizes = {k: v for f in manifest["files"] for k, v in _part_sizes(path / f).items()}
    rows, numel, nonzero = [], 0, 0
    for name, entry in manifest["tensors"].items():
        if "tied_to" in entry:
            rows.append({"name": name, "format": f"tied to {entry['tied_to']}", "shape": None,
                         "sparsity": None, "bytes": 0, "bits_per_value": None})
            continue
        stored = sum(sizes.get(f"{name}::{p}", 0) for p in entry["parts"])
        n = entry.get("numel", math.prod(entry["shape"]))
        numel += n
        nonzero += entry.get("nonzero", n)
        meta = entry.get("meta", {})
        fmt = entry["format"]
        if "bits" in meta:
            fmt += f" int{meta['bits']}" + (f" g{meta['group']}" if meta.get("group") else " ch")
        if "n" in meta:
            fmt += f" {meta['n']}:{meta['m']}"
        rows.append({"name": name, "format": fmt, "shape": entry["shape"], "dtype": entry["dtype"],
                     "sparsity": 1 - entry.get("nonzero", n) / n if n else 0.0, "bytes": stored,
                     "bits_per_value": 8 * stored / n if n else 0.0})
    files = {f: (path / f).stat().st_size for f in manifest["files"]}
    total = sum(files.values())
    return {"path": str(path), "model": manifest["model"], "tensors": rows, "files": files,
            "totals": {"values": numel, "sparsity": 1 - nonzero / numel if numel else 0.0,
                       "bytes": total, "bits_per_value": 8 * total / numel if numel else 0.0,
                       "dense_fp16_bytes": 2 * numel, "dense_fp32_bytes": 4 * numel,
                       "ratio_fp16": 2 * numel / total if total else 0.0,
                       "ratio_fp32": 4 * numel / total if total else 0.0},
            "provenance": manifest.get("provenance", {}),
            "method": (manifest.get("report") or {}).get("method")}


def _part_sizes(file: Path) -> dict[str, int]:
    """{tensor key: bytes} from a safetensors header (8-byte length, JSON with data offsets)."""
    with open(file, "rb") as f:
        n = int.from_bytes(f.read(8), "little")
        header = json.loads(f.read(n))
    return {k: v["data_offsets"][1] - v["data_offsets"][0] for k, v in header.items()
            if k != "__metadata__"}
