"""The output folder of a run: checked before any work, locked while the run writes, and never
left pairing results with a recipe that did not produce them.

Order of events: :func:`check_out_dir` (nothing written: the path can be created and written, and
holds no results unless ``--overwrite`` or ``--resume``), then, once the inputs are known to be
good, :func:`open_out_dir`: the folder is created and locked (a second run on it fails at once),
earlier results and checkpoints are retired when they no longer belong to the recipe, and the
resolved recipe is written as ``recipe.yaml``.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import logging
import os
from collections.abc import Iterator
from pathlib import Path

from taylorprune._io import atomic_write_text, is_temporary
from taylorprune.errors import UserError
from taylorprune.pipeline.checkpoints import FOLDER, retire_run_checkpoints

log = logging.getLogger("taylorprune")

RECIPE_FILE = "recipe.yaml"
LOCK_FILE = ".taylorprune.lock"
# What a finished run writes besides recipe.yaml and checkpoints/ (report.py, plots.py, the
# pruned model): what --overwrite retires.
RESULT_FILES = (
    "report.json",
    "report.md",
    "metrics.csv",
    "model.pt",
    "progress.png",
    "channels.png",
)


def check_out_dir(out_dir: Path, *, overwrite: bool, resume: bool) -> None:
    """Refuse, before any work and without writing anything, an output path that cannot be
    created or written, or a folder holding results (unless ``overwrite`` or ``resume``)."""
    out_dir = Path(out_dir)
    _check_path_limits(out_dir)
    if _exists(out_dir) and not out_dir.is_dir():
        raise UserError(f"output path {out_dir} exists and is not a folder")
    existing = _nearest_existing(out_dir)
    if not existing.is_dir():
        raise UserError(f"output path {out_dir}: {existing} is a file, not a folder")
    if not os.access(existing, os.W_OK | os.X_OK):
        what = "output folder" if existing == out_dir else f"{existing} (where {out_dir} would go)"
        raise UserError(f"{what} is not writable")
    if resume:
        if not out_dir.is_dir():
            raise UserError(f"--resume: {out_dir} does not exist; there is no run to resume")
        if not (out_dir / RECIPE_FILE).is_file() and _contents(out_dir):
            raise UserError(f"--resume: {out_dir} holds no taylorprune run (no {RECIPE_FILE})")
    elif _contents(out_dir) and not overwrite:
        raise UserError(
            f"output folder {out_dir} already holds results; choose another -o, or pass --overwrite"
        )


@contextlib.contextmanager
def locked(out_dir: Path) -> Iterator[None]:
    """Create ``out_dir`` and hold its lock for the block; another run holding it is an error."""
    out_dir = Path(out_dir)
    _make_dirs(out_dir)
    path = out_dir / LOCK_FILE
    fd = _acquire(path)
    try:
        yield
    finally:
        with contextlib.suppress(OSError):
            if _same_file(fd, path):
                path.unlink()
        os.close(fd)


def prepare_contents(out_dir: Path, recipe_yaml: str, *, overwrite: bool, resume: bool) -> None:
    """Under the lock: check again what the folder holds, retire what no longer belongs to the
    recipe, then write ``recipe.yaml`` (``resume``: only when it changed)."""
    out_dir = Path(out_dir)
    recipe_file = out_dir / RECIPE_FILE
    if not resume:
        if _contents(out_dir) and not overwrite:
            raise UserError(
                f"output folder {out_dir} already holds results; choose another -o, or pass "
                "--overwrite"
            )
        retire(out_dir)
    elif not recipe_file.is_file() or recipe_file.read_text() != recipe_yaml:
        # an allowed change (checked against the checkpoint): the old results are not this recipe's
        _retire_results(out_dir)
    _remove_leftovers(out_dir)
    if not recipe_file.is_file() or recipe_file.read_text() != recipe_yaml:
        atomic_write_text(recipe_yaml, recipe_file)


def retire(out_dir: Path) -> None:
    """Remove an earlier run: its checkpoints first (nothing left to resume by mistake), then its
    results, then its recipe, so that whatever is left at any moment belongs to its recipe."""
    retire_run_checkpoints(out_dir)
    _retire_results(out_dir)
    (Path(out_dir) / RECIPE_FILE).unlink(missing_ok=True)


# -- internals ---------------------------------------------------------------------------------
def _retire_results(out_dir: Path) -> None:
    for name in RESULT_FILES:
        (Path(out_dir) / name).unlink(missing_ok=True)


def _contents(out_dir: Path) -> list[str]:
    """What ``out_dir`` holds besides the lock and temporary files a killed writer left."""
    if not out_dir.is_dir():
        return []
    return [p.name for p in out_dir.iterdir() if p.name != LOCK_FILE and not is_temporary(p.name)]


def _remove_leftovers(out_dir: Path) -> None:
    for p in out_dir.iterdir():
        if is_temporary(p.name) and p.is_file():
            p.unlink(missing_ok=True)


def _exists(path: Path) -> bool:
    """Like ``Path.exists``, but a path too long to look up does not exist either."""
    try:
        os.stat(path)
    except (OSError, ValueError):
        return False
    return True


def _nearest_existing(path: Path) -> Path:
    path = Path(os.path.abspath(path))
    while not _exists(path):
        path = path.parent
    return path


def _check_path_limits(out_dir: Path) -> None:
    full = os.path.abspath(out_dir)
    existing = _nearest_existing(out_dir)
    try:
        name_max = os.pathconf(existing, "PC_NAME_MAX")
        path_max = os.pathconf(existing, "PC_PATH_MAX")
    except (OSError, ValueError):
        name_max, path_max = 255, 4096
    longest = max((len(os.fsencode(part)) for part in Path(full).parts), default=0)
    if longest > name_max:
        raise UserError(
            f"output path: a folder name of {longest} bytes is longer than this file system "
            f"allows ({name_max})"
        )
    # room for the longest file a run writes inside it
    inside = len(os.fsencode(os.path.join(full, FOLDER, "finetune-000.state.pt")))
    if inside >= path_max:
        raise UserError(
            f"output path: {len(os.fsencode(full))} bytes is too long for this file system "
            f"(paths up to {path_max} bytes)"
        )


def _make_dirs(out_dir: Path) -> None:
    """``mkdir -p``, undone if it fails part way: nothing is left behind."""
    missing: list[Path] = []
    path = Path(os.path.abspath(out_dir))
    while not _exists(path):
        missing.append(path)
        path = path.parent
    made: list[Path] = []
    try:
        for p in reversed(missing):
            p.mkdir()
            made.append(p)
    except OSError as exc:
        for p in reversed(made):
            with contextlib.suppress(OSError):
                p.rmdir()
        raise UserError(f"cannot create output folder {out_dir}: {exc.strerror or exc}") from None


def _acquire(path: Path) -> int:
    """Open and lock ``path``; retried when the file was replaced between open and lock."""
    for _ in range(5):
        try:
            fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o666)
        except OSError as exc:
            raise UserError(f"output folder {path.parent}: cannot write: {exc.strerror}") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            os.close(fd)
            if exc.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                raise UserError(
                    f"output folder {path.parent} is in use by another taylorprune run; wait for "
                    "it to end, or choose another -o"
                ) from None
            raise UserError(f"output folder {path.parent}: cannot lock: {exc.strerror}") from None
        if _same_file(fd, path):
            return fd
        os.close(fd)  # the holder finished and removed the file meanwhile: lock the new one
    raise UserError(f"output folder {path.parent}: cannot lock {path.name}")


def _same_file(fd: int, path: Path) -> bool:
    try:
        a, b = os.fstat(fd), os.stat(path)
    except OSError:
        return False
    return (a.st_dev, a.st_ino) == (b.st_dev, b.st_ino)
