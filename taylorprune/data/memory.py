"""Whether data held in memory can fit: checked before allocating, so that a size no machine of
this kind could hold is one :class:`UserError` instead of the allocator failing or the OS killing
the run."""

from __future__ import annotations

import os

from taylorprune.errors import UserError


def physical_memory() -> int | None:
    """Bytes of RAM of this machine, or None where the OS does not say."""
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (AttributeError, ValueError, OSError):
        return None


def check_fits(nbytes: int, what: str) -> None:
    """Refuse to allocate ``nbytes`` for ``what`` when it exceeds this machine's RAM.

    Only what cannot possibly fit is refused; a size that fits RAM but not what is free is left to
    the allocator.
    """
    total = physical_memory()
    if total is not None and nbytes > total:
        raise UserError(f"{what} needs {_size(nbytes)} of memory; this machine has {_size(total)}")


def _size(nbytes: int) -> str:
    return f"{nbytes / 2**30:,.1f} GiB" if nbytes >= 2**30 else f"{nbytes / 2**20:,.1f} MiB"
