"""Shared plumbing: objects that save themselves to a local folder, copied to and from the artifact store.

Writing to a local temporary folder first keeps the project's save/load code plain (it works from a
notebook or a miner) and works for any artifact store, local or s3.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from zenml.materializers.base_materializer import BaseMaterializer
from zenml.utils import io_utils


def save_directory(materializer: BaseMaterializer, write: Callable[[Path], Any]) -> None:
    """Let ``write`` fill a local folder, then copy it to the materializer's artifact URI."""
    with materializer.get_temporary_directory(delete_at_exit=True) as local:
        write(Path(local))
        io_utils.copy_dir(local, materializer.uri, overwrite=True)


def load_directory(materializer: BaseMaterializer, read: Callable[[Path], Any]) -> Any:
    """Copy the artifact to a local folder (kept until the step ends) and let ``read`` load it."""
    with materializer.get_temporary_directory(delete_at_exit=False) as local:
        io_utils.copy_dir(materializer.uri, local, overwrite=True)
        return read(Path(local))
