"""Built-in English calibration corpus: the Python standard library's own documentation.

Nothing is downloaded. The corpus is made of

* the texts of :data:`pydoc_data.topics.topics` (the language reference topics that
  ``help("assert")`` shows), keyed ``topics:<name>``, and
* the docstrings of the modules, classes and functions of the standard library's ``.py``
  sources, keyed ``doc:<relative/path.py>`` (module) or ``doc:<relative/path.py>:<Qual.name>``
  (class or function), e.g. ``doc:json/decoder.py:JSONDecoder.decode``.

Only docstrings of at least :data:`MIN_DOCSTRING_CHARS` characters are kept (prose, not
one-liners); whitespace is normalised and repeated texts are kept once (first occurrence), so
the same passage never lands in both splits.

On CPython 3.11.7 this gives 2,273 documents and 1.67 MB of text (78 topics, 0.46 MB; the
rest docstrings of ~600 files), 2,049 for calibration and 224 for evaluation. Building it
parses 11 MB of sources with :mod:`ast`: about 2 s on one core (measured 1.9-2.5 s), once per
Python installation: the documents are then kept as JSON in prunekit's cache folder, named by
a fingerprint of the sources (their paths, sizes and times). The corpus is deterministic for a
given Python version: the stdlib is walked in sorted order, so every run returns the same
documents in the same order.
Other Python versions ship other docstrings, so the exact documents differ between versions.

The calibration/evaluation split is a stable hash of the key (SHA-1, never Python's salted
``hash()``): about :data:`EVAL_FRACTION` of the documents are held out for evaluation.
"""

from __future__ import annotations

import ast
import contextlib
import functools
import gc
import hashlib
import json
import logging
import os
import re
import sys
import sysconfig
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from prunekit.errors import DataError
from prunekit.files import cache_root

logger = logging.getLogger(__name__)

#: Docstrings shorter than this (after whitespace normalisation) are dropped.
MIN_DOCSTRING_CHARS = 200
#: Fraction of keys that :func:`is_eval_key` sends to the evaluation split.
EVAL_FRACTION = 0.1
#: Folder names never walked in the stdlib tree.
SKIPPED_DIRS = frozenset(
    {"site-packages", "dist-packages", "test", "tests", "idlelib", "lib2to3", "__pycache__"}
)

_BLOCK_FIELDS = ("body", "orelse", "finalbody", "handlers", "cases")
_BLOCK_NODES = (ast.stmt, ast.excepthandler, ast.match_case)
_SPLITS = ("calib", "eval")


@dataclass(frozen=True)
class Document:
    """One text of a corpus with a stable, unique key (e.g. ``topics:assert``)."""

    key: str
    text: str


def is_eval_key(key: str, eval_fraction: float = EVAL_FRACTION) -> bool:
    """Whether ``key`` belongs to the evaluation split, by a stable hash of the key.

    The first 8 bytes of SHA-1(key) are read as an integer u in [0, 2**64); the key is held
    out for evaluation when u / 2**64 < eval_fraction. The same key gives the same answer on
    every run, machine and Python version (unlike the salted built-in ``hash``).
    """
    if not 0.0 < eval_fraction < 1.0:
        raise ValueError(f"eval_fraction={eval_fraction!r} must be in (0, 1), e.g. 0.1")
    digest = hashlib.sha1(key.encode("utf-8")).digest()
    return int.from_bytes(digest[:8], "big") < eval_fraction * 2**64


def normalise_text(text: str) -> str:
    """Normalise whitespace: tabs to spaces, no trailing spaces, at most one blank line."""
    text = text.replace("\r\n", "\n").replace("\t", "    ")
    text = re.sub(r"[ \f\v]+\n", "\n", text)
    text = re.sub(r"\n{3,}", "\n\n", text)
    return text.strip()


def _iter_docstrings(tree: ast.AST, prefix: str = "") -> Iterator[tuple[str, str]]:
    """Yield ``(qualified_name, docstring)`` for every class and function under ``tree``.

    Only statement blocks are walked (``body``, ``orelse``, ``finalbody``, ``handlers``,
    ``cases``), never expressions, so definitions inside ``if``/``try``/``with`` blocks are
    found cheaply. Names nest with dots (``Outer.method``, ``func.inner``).
    """
    for field in _BLOCK_FIELDS:
        for node in getattr(tree, field, ()):
            if isinstance(node, (ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
                name = f"{prefix}{node.name}"
                doc = ast.get_docstring(node, clean=True)
                if doc:
                    yield name, doc
                yield from _iter_docstrings(node, prefix=f"{name}.")
            elif isinstance(node, _BLOCK_NODES):
                yield from _iter_docstrings(node, prefix=prefix)


def _file_documents(path: Path, rel: str) -> list[Document]:
    """Documents of one source file; an empty list when the file does not parse."""
    try:
        source = path.read_bytes()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # invalid escape sequences in old sources
            tree = ast.parse(source, filename=str(path))
    except (OSError, SyntaxError, ValueError, UnicodeDecodeError) as exc:
        logger.debug("skipping %s: %s", path, exc)
        return []
    docs = []
    module_doc = ast.get_docstring(tree, clean=True)
    if module_doc:
        docs.append(Document(f"doc:{rel}", module_doc))
    docs.extend(Document(f"doc:{rel}:{name}", doc) for name, doc in _iter_docstrings(tree))
    return docs


def _stdlib_source_files(root: Path) -> Iterator[tuple[Path, str]]:
    """Yield ``(path, posix_relative_path)`` of the stdlib ``.py`` files in sorted order."""
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(
            d for d in dirnames if d not in SKIPPED_DIRS and not d.startswith(".")
        )
        for filename in sorted(filenames):
            if filename.endswith(".py"):
                path = Path(dirpath) / filename
                yield path, path.relative_to(root).as_posix()


def _topic_documents() -> list[Document]:
    """The pydoc topics (language reference sections), sorted by name."""
    from pydoc_data.topics import topics  # lazy: 700 kB of text, read only for this corpus

    return [Document(f"topics:{name}", text) for name, text in sorted(topics.items())]


def _keep_prose(docs: list[Document]) -> list[Document]:
    """Normalise texts, drop short ones and keep the first of repeated texts and keys."""
    kept, seen_texts, seen_keys = [], set(), set()
    for doc in docs:
        text = normalise_text(doc.text)
        if len(text) < MIN_DOCSTRING_CHARS or text in seen_texts or doc.key in seen_keys:
            continue
        seen_texts.add(text)
        seen_keys.add(doc.key)
        kept.append(Document(doc.key, text))
    return kept


@contextlib.contextmanager
def _gc_paused() -> Iterator[None]:
    """Pause the cyclic garbage collector inside the block, then restore its previous state.

    Parsing ~11 MB of sources allocates millions of AST nodes that survive per file; in a
    process that already holds torch and transformers, the collector's full passes over
    every object then cost more than the parsing itself (measured 4.2 s -> 1.6 s). AST trees
    hold no reference cycles, so nothing is lost by collecting later.
    """
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was_enabled:
            gc.enable()


#: bump when what a stdlib corpus holds changes, so older cache files are not read
_CACHE_FORMAT = 1


def _stdlib_root() -> Path:
    root = Path(sysconfig.get_paths()["stdlib"])
    if not root.is_dir():
        raise DataError(
            f"the standard library folder {root} (sysconfig 'stdlib') does not exist; "
            "the built-in corpus needs the stdlib .py sources, or use a text file or dataset"
        )
    return root


def _build_stdlib_documents(root: Path) -> list[Document]:
    """Parse every stdlib source file under ``root`` (about 2 s)."""
    raw = _topic_documents()
    n_files = 0
    with _gc_paused():
        for path, rel in _stdlib_source_files(root):
            n_files += 1
            raw.extend(_file_documents(path, rel))
    docs = _keep_prose(raw)
    logger.debug(
        "stdlib corpus: %d documents, %d characters from %d files under %s",
        len(docs), sum(len(d.text) for d in docs), n_files, root,
    )
    return docs


def _stdlib_fingerprint(root: Path) -> str:
    """A digest of what the corpus is built from: the Python version, the folder, and each
    source file's path, size and modification time (a stat of each, no reading)."""
    h = hashlib.sha256(f"{_CACHE_FORMAT}|{sys.version}|{root}".encode())
    for path, rel in _stdlib_source_files(root):
        st = path.stat()
        h.update(f"|{rel}:{st.st_size}:{st.st_mtime_ns}".encode())
    return h.hexdigest()[:24]


@functools.lru_cache(maxsize=1)
def _cached_stdlib_documents() -> tuple[Document, ...]:
    """Build the corpus once per process, and keep it across processes as a JSON file in
    prunekit's cache folder (:func:`prunekit.files.cache_root`), named by a fingerprint of
    the sources; a cache that cannot be read or written is rebuilt or skipped, silently."""
    root = _stdlib_root()
    path = cache_root() / f"stdlib-corpus-{_stdlib_fingerprint(root)}.json"
    try:
        return tuple(Document(k, t) for k, t in json.loads(path.read_text("utf-8")))
    except (OSError, ValueError, TypeError) as exc:
        logger.debug("stdlib corpus cache %s not used: %s", path, exc)
    docs = _build_stdlib_documents(root)
    tmp = path.with_name(f".{path.name}.{os.getpid()}")  # renamed into place when whole
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp.write_text(json.dumps([[d.key, d.text] for d in docs]), "utf-8")
        os.replace(tmp, path)
    except OSError as exc:
        logger.debug("stdlib corpus cache %s not written: %s", path, exc)
        with contextlib.suppress(OSError):
            tmp.unlink(missing_ok=True)
    return tuple(docs)


def stdlib_documents() -> list[Document]:
    """All documents of the built-in stdlib corpus, in a fixed order (topics, then files).

    2,273 documents and 1.67 MB of English prose on CPython 3.11.7; built in about 2 s on
    first use, then read from prunekit's cache folder (0.1 s). Returns a new list on every call.
    """
    return list(_cached_stdlib_documents())


def stdlib_split(split: Literal["calib", "eval"]) -> list[Document]:
    """The calibration (~90 %) or evaluation (~10 %) documents of the stdlib corpus.

    The two splits are disjoint and together make :func:`stdlib_documents`; membership is
    decided by :func:`is_eval_key` on the document key, so it is stable across runs.
    """
    if split not in _SPLITS:
        raise DataError(f"split={split!r} is not one of {_SPLITS}; use 'calib' or 'eval'")
    want_eval = split == "eval"
    return [d for d in _cached_stdlib_documents() if is_eval_key(d.key) == want_eval]
