"""prunekit's cache folder, and file permissions of folders written atomically: a temporary
folder (``mkdtemp``: 0700) and safetensors files (0600) get the modes the user's umask gives
ordinary ones before they are renamed into place."""

from __future__ import annotations

import os
from pathlib import Path


def cache_root() -> Path:
    """Where prunekit keeps what it derives once (converted models, the stdlib corpus):
    ``$PRUNEKIT_CACHE``, else ``$XDG_CACHE_HOME/prunekit``, else ``~/.cache/prunekit``."""
    if os.environ.get("PRUNEKIT_CACHE"):
        return Path(os.environ["PRUNEKIT_CACHE"]).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base).expanduser() / "prunekit"


def current_umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def chmod_files(folder: Path) -> None:
    """The files directly in ``folder`` as the umask makes ordinary files."""
    for f in folder.iterdir():
        if f.is_file():
            f.chmod(0o666 & ~current_umask())


def publish_permissions(folder: Path) -> None:
    """``folder`` and its files as the umask makes ordinary ones."""
    chmod_files(folder)
    folder.chmod(0o777 & ~current_umask())
