"""Atomic file writes, the one implementation every writer of the package uses.

A file is written to a temporary file in the same folder, flushed to disk, given the permissions
the user's umask allows (as ``open()`` would; ``mkstemp`` alone gives 0600), then moved over the
target with ``os.replace``. A run killed mid-write leaves the previous good file in place, never a
truncated one; a failed write (a full disk, a read-only folder) removes the temporary file and
raises :class:`~taylorprune.errors.UserError` naming the file.

Temporary files are named ``.<name>.<random>.tmp``: :func:`is_temporary` recognises the ones a
killed writer left behind, so that a folder holding only those counts as empty.
"""

from __future__ import annotations

import contextlib
import os
import re
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any

import torch

from taylorprune.errors import UserError

_TEMPORARY = re.compile(r"^\..+\.[A-Za-z0-9_]+\.tmp$")


def umask() -> int:
    """The process's umask (read without changing it where Linux allows)."""
    with contextlib.suppress(OSError, ValueError):
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def atomic_write(path: str | os.PathLike, write: Callable[[IO[bytes]], Any]) -> Path:
    """Call ``write(f)`` on a temporary file, then move it to ``path`` (creating parent folders).

    Returns the path. Raises :class:`UserError` for any exception of ``write`` or of the file
    system (the message names ``path`` and the reason); the temporary file is removed on every
    failure, interrupts included.
    """
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    except OSError as exc:
        raise UserError(f"{path}: cannot write: {_reason(exc)}") from None
    try:
        with os.fdopen(fd, "wb") as f:
            os.fchmod(f.fileno(), 0o666 & ~umask())
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as exc:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        if isinstance(exc, Exception):
            # Whatever the writer raised (torch's zip writer raises RuntimeError on a full disk
            # or a file size limit), the user hears which file could not be written, in one line.
            raise UserError(f"{path}: cannot write: {_reason(exc)}") from exc
        raise
    return path


def atomic_save(obj: Any, path: str | os.PathLike) -> Path:
    """``torch.save(obj)`` to ``path`` atomically."""
    return atomic_write(path, lambda f: torch.save(obj, f))


def atomic_write_text(text: str, path: str | os.PathLike) -> Path:
    """Write ``text`` (UTF-8, newlines as given) to ``path`` atomically."""
    return atomic_write(path, lambda f: f.write(text.encode("utf-8")))


def is_temporary(name: str) -> bool:
    """Whether ``name`` is a temporary file of :func:`atomic_write` (left by a killed writer)."""
    return bool(_TEMPORARY.match(name))


def _reason(exc: Exception) -> str:
    if isinstance(exc, OSError):
        return exc.strerror or str(exc) or type(exc).__name__
    text = (str(exc).strip().splitlines() or [""])[0]
    if "inline_container" in text or "PytorchStreamWriter" in text:
        return "the file could not be written in full (disk full, or a file size limit)"
    return f"{type(exc).__name__}: {text}"[:300]
