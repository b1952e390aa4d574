"""A fingerprint of this library's source code, for step caches.

Why: a pipeline's step cache keys on the step function's own code, not on the library code it calls, so an
upgraded or edited ``stage1_core`` would silently reuse outputs the old code produced. The pipelines add this
fingerprint to every step's cache key (ZenML ``CachePolicy.cache_func``).
"""

from __future__ import annotations

import hashlib
from functools import cache
from pathlib import Path

PACKAGE_DIR = Path(__file__).resolve().parents[1]  # stage1_core/, with every sub-package


def source_fingerprint(package_dir: Path) -> str:
    """sha256 over the relative path and bytes of every ``.py`` file under ``package_dir``, in path order."""
    digest = hashlib.sha256()
    for path in sorted(package_dir.rglob("*.py")):
        digest.update(path.relative_to(package_dir).as_posix().encode())
        digest.update(b"\0")
        digest.update(path.read_bytes())
    return digest.hexdigest()


@cache
def library_fingerprint() -> str:
    """The fingerprint of the installed ``stage1_core`` (computed once per process)."""
    return source_fingerprint(PACKAGE_DIR)
