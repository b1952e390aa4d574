"""Atomic writes: every file or folder another step (or a later run) may load is written under a hidden temporary
sibling name and renamed into place (``os.replace`` / ``os.rename`` are atomic on POSIX), so a crash leaves either
the old state or the complete new one, never a half-written file that looks complete.

Standard library only, so the serving path (exported bundles) can use it without importing torch.
"""

from __future__ import annotations

import errno
import logging
import os
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from uuid import uuid4

logger = logging.getLogger(__name__)

PARTIAL_MARKER = ".partial-"


def partial_sibling(target: Path) -> Path:
    """A unique hidden name next to ``target`` (same folder, hence same filesystem: the rename stays atomic)."""
    return target.with_name(f".{target.name}{PARTIAL_MARKER}{os.getpid()}-{uuid4().hex[:8]}")


def _fsync(path: Path) -> None:
    """Flush a written file to disk, so a power loss after the rename cannot expose an empty file."""
    descriptor = os.open(path, os.O_RDONLY)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)


@contextmanager
def atomic_file(target: Path, durable: bool = True) -> Iterator[Path]:
    """Yield a temporary path to write; on success it replaces ``target`` in one rename, on error it is removed.

    Usage: ``with atomic_file(out) as tmp: frame.to_parquet(tmp)``. ``durable`` also flushes the file to disk
    before the rename (survives a power loss, not only a killed process); skip it for many small files.
    """
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    temporary = partial_sibling(target)
    try:
        yield temporary
        if durable:
            _fsync(temporary)
        os.replace(temporary, target)
    finally:
        temporary.unlink(missing_ok=True)


def write_atomic(target: Path, content: bytes | str, durable: bool = True) -> Path:
    """Write ``content`` to ``target`` atomically (bytes as they are, text as UTF-8); returns ``target``."""
    with atomic_file(target, durable) as temporary:
        temporary.write_bytes(content.encode() if isinstance(content, str) else content)
    return Path(target)


@contextmanager
def atomic_directory(target: Path) -> Iterator[Path]:
    """Yield an empty temporary folder to fill; on success it becomes ``target`` (replacing an existing one).

    A folder is complete or absent: a crash while filling it leaves only a hidden ``.name.partial-*``
    sibling, which :func:`remove_partials` clears, and never a ``target`` that a later run takes as complete.
    """
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = partial_sibling(target)
    staging.mkdir()
    try:
        yield staging
        try:
            os.rename(staging, target)  # succeeds when target is absent or an empty folder
        except OSError as error:
            if error.errno not in (errno.ENOTEMPTY, errno.EEXIST):
                raise
            retired = partial_sibling(target)
            os.rename(target, retired)
            os.rename(staging, target)
            shutil.rmtree(retired)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def remove_partials(target: Path) -> list[Path]:
    """Remove the leftovers of interrupted atomic writes of ``target``; returns what was removed.

    Only call it where no other process can be writing ``target`` (e.g. under the run lock).
    """
    target = Path(target)
    if not target.parent.is_dir():
        return []
    removed = sorted(target.parent.glob(f".{target.name}{PARTIAL_MARKER}*"))
    for leftover in removed:
        logger.warning(
            "removing %s: the unfinished output of an interrupted run (the complete output was never published)",
            leftover,
        )
        shutil.rmtree(leftover) if leftover.is_dir() else leftover.unlink()
    return removed
