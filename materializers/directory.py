"""Shared plumbing: objects that save themselves to a folder, published atomically to the artifact store.

On a local artifact store the object writes into a hidden staging folder next to the artifact URI, which is
renamed onto the URI once complete (``stage1_core.common.atomic_io.atomic_directory``): a crash mid-save never leaves
a half-written artifact folder. On an object store (s3...) the object is written to a local temporary folder
and uploaded; objects there appear whole or not at all. Loading copies to a local folder, so the project's
save/load code stays plain (it works from a notebook or a miner).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from fsspec.utils import get_protocol
from zenml.materializers.base_materializer import BaseMaterializer
from zenml.utils import io_utils

from stage1_core.common.atomic_io import atomic_directory, write_atomic


def is_local(uri: str) -> bool:
    """Whether an artifact URI is a local path (where renames are atomic)."""
    return get_protocol(uri) == "file"


def save_directory(materializer: BaseMaterializer, write: Callable[[Path], Any]) -> None:
    """Let ``write`` fill a folder that becomes the materializer's artifact URI only once complete."""
    if is_local(materializer.uri):
        with atomic_directory(Path(materializer.uri)) as staging:
            write(staging)
        return
    with materializer.get_temporary_directory(delete_at_exit=True) as local:
        write(Path(local))
        io_utils.copy_dir(local, materializer.uri, overwrite=True)


def save_file(materializer: BaseMaterializer, name: str, content: str | bytes) -> str:
    """Write one file into the artifact URI (atomically on a local store); returns its path."""
    path = f"{materializer.uri.rstrip('/')}/{name}"
    if is_local(path):
        write_atomic(Path(path), content)
        return path
    with materializer.artifact_store.open(path, "wb" if isinstance(content, bytes) else "w") as handle:
        handle.write(content)
    return path


def load_directory(materializer: BaseMaterializer, read: Callable[[Path], Any]) -> Any:
    """Copy the artifact to a local folder (kept until the step ends) and let ``read`` load it."""
    with materializer.get_temporary_directory(delete_at_exit=False) as local:
        io_utils.copy_dir(materializer.uri, local, overwrite=True)
        return read(Path(local))
