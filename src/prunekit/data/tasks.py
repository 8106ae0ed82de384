"""A text-classification task built from data on the machine: which standard-library package
family a docstring comes from (``email``, ``asyncio``, ``tkinter``, ...).

The docstrings are those of the built-in corpus (:mod:`prunekit.data.corpus`). Train and test
are disjoint by module: a whole source file goes to one side, so the test measures whether a
model learned the family's subject, not a module's wording. The module split is a stable hash
of the file path (SHA-1), the same on every run and machine for a given Python version.
"""

from __future__ import annotations

import hashlib
from collections import Counter
from dataclasses import dataclass

from ..errors import DataError
from .corpus import stdlib_documents

#: family -> the top-level stdlib packages it takes its docstrings from
FAMILIES: dict[str, tuple[str, ...]] = {
    "asyncio": ("asyncio",),
    "distutils": ("distutils",),
    "email": ("email",),
    "importlib": ("importlib",),
    "tkinter": ("tkinter",),
    "unittest": ("unittest",),
    "web": ("http", "urllib", "wsgiref", "xmlrpc"),
    "xml": ("xml",),
}


@dataclass(frozen=True)
class TextTask:
    """texts, integer labels and source files of both splits, and the label names."""

    labels: tuple[str, ...]
    train_texts: list[str]
    train_labels: list[int]
    train_sources: list[str]
    test_texts: list[str]
    test_labels: list[int]
    test_sources: list[str]

    def summary(self) -> str:
        tr, te = Counter(self.train_labels), Counter(self.test_labels)
        per = ", ".join(f"{name} {tr[i]}/{te[i]}" for i, name in enumerate(self.labels))
        return (f"{len(self.train_texts)} train / {len(self.test_texts)} test docstrings, "
                f"{len(self.labels)} families (train/test: {per})")


def _module_in_test(path: str, test_fraction: float) -> bool:
    u = int.from_bytes(hashlib.sha1(path.encode()).digest()[:8], "big")
    return u < test_fraction * 2**64


def stdlib_family_task(test_fraction: float = 0.3) -> TextTask:
    """The docstring → package-family task, split by module (see the module docstring)."""
    family_of = {pkg: fam for fam, pkgs in FAMILIES.items() for pkg in pkgs}
    labels = tuple(FAMILIES)
    split: dict[bool, tuple[list[str], list[int], list[str]]] = {False: ([], [], []),
                                                                  True: ([], [], [])}
    for doc in stdlib_documents():
        if not doc.key.startswith("doc:"):
            continue
        path = doc.key[4:].split(":")[0]
        family = family_of.get(path.split("/")[0]) if "/" in path else None
        if family is None:
            continue
        texts, ys, sources = split[_module_in_test(path, test_fraction)]
        texts.append(doc.text)
        ys.append(labels.index(family))
        sources.append(path)
    task = TextTask(labels, *split[False], *split[True])
    missing = [n for i, n in enumerate(labels)
               if i not in task.train_labels or i not in task.test_labels]
    if missing:
        raise DataError(f"families {missing} have no docstrings in one split on this Python: "
                        "choose another test_fraction")
    return task
