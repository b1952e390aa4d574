"""Reliability plumbing: content hashes, one run at a time, resource checks, reproducibility records.

Atomic writes live in :mod:`stage1_core.common.atomic_io` (standard library only, so serving can use them too).
- The run lock: an OS file lock (``filelock``: ``flock`` on POSIX) that the kernel releases when its holder dies,
  even on SIGKILL, so a killed run never leaves a stale lock behind.
- Resource checks: rough, documented upper estimates of disk and memory, compared with what is free before a
  run starts, so a run that cannot fit stops at once with what to change instead of dying hours in.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import logging
import os
import platform
import shutil
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path

import pandas as pd
import psutil
import torch
from filelock import FileLock, Timeout
from pydantic import BaseModel, Field
from transformers import AutoConfig, AutoModel

from stage1_core.common.atomic_io import write_atomic
from stage1_core.common.config import StrictConfig
from stage1_core.modeling.backbone import DEMO_CONFIGS, resolve_backbone
from stage1_core.run.config import RunConfig

logger = logging.getLogger(__name__)

JPEG_BYTES_PER_PIXEL = 0.5  # demo JPEGs at quality 90 measure 0.2-0.3 bytes per pixel; 0.5 is a safe upper bound
PROCESS_BYTES = 2**30  # torch, transformers, lightning, ZenML and MLflow loaded in one process
ACTIVATION_FLOATS_PER_TOKEN = (
    16  # per layer and hidden unit: q, k, v, attention output, 4x MLP, norms, residuals (+ grads)
)
TRACKED_PACKAGES = (
    "torch",
    "torchvision",
    "transformers",
    "peft",
    "lightning",
    "numpy",
    "pandas",
    "scikit-learn",
    "zenml",
    "mlflow",
    "onnx",
    "onnxruntime",
)


# ---------------------------------------------------------------------------------------------------- content hashes


def content_hash(*parts: object) -> str:
    """sha256 over what determines a result: data frames, torch modules (their weights), pydantic models, text, bytes.

    Used as a cache / checkpoint key: equal parts give equal hashes in any process on any machine.
    """
    digest = hashlib.sha256()
    for part in parts:
        if isinstance(part, pd.DataFrame):
            digest.update(pd.util.hash_pandas_object(part, index=False).to_numpy().tobytes())
            digest.update(",".join(map(str, part.columns)).encode())
        elif isinstance(part, torch.nn.Module):
            for name, tensor in sorted(part.state_dict().items()):
                digest.update(name.encode())
                digest.update(tensor.detach().cpu().contiguous().view(-1).view(torch.uint8).numpy().tobytes())
        elif isinstance(part, BaseModel):
            digest.update(part.model_dump_json().encode())
        elif isinstance(part, bytes):
            digest.update(part)
        elif isinstance(part, str):
            digest.update(part.encode())
        else:
            raise TypeError(
                f"content_hash: cannot hash a {type(part).__name__}; "
                "pass a DataFrame, torch module, pydantic model, str or bytes"
            )
        digest.update(b"\x00")
    return digest.hexdigest()


def manifest_data_hash(manifest: pd.DataFrame) -> str:
    """Hash of the data a manifest describes, order-free.

    It covers each image's sha256 with its label (and split when assigned).
    """
    columns = [column for column in ("sha256", "label", "split") if column in manifest.columns]
    rows = sorted(map(tuple, manifest[columns].astype(str).to_numpy().tolist()))
    return hashlib.sha256("\n".join("\t".join(row) for row in rows).encode()).hexdigest()


# ---------------------------------------------------------------------------------------------------- reproducibility


class ReproducibilityRecord(BaseModel):
    """What a result depends on, so it can be traced and rerun: seed, data hash, config hash and the software."""

    seed: int
    data_hash: str
    config_hash: str
    python: str
    platform: str
    packages: dict[str, str]
    torch_deterministic: bool
    torch_threads: int


def package_versions(names: tuple[str, ...] = TRACKED_PACKAGES) -> dict[str, str]:
    """Installed versions of ``names`` ("not installed" where absent)."""
    versions = {}
    for name in names:
        try:
            versions[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            versions[name] = "not installed"
    return versions


def reproducibility_record(seed: int, data_hash: str, config_hash: str) -> ReproducibilityRecord:
    """The record of this process: pass the seed and the hashes of the data and config a step used."""
    return ReproducibilityRecord(
        seed=seed,
        data_hash=data_hash,
        config_hash=config_hash,
        python=sys.version.split()[0],
        platform=platform.platform(),
        packages=package_versions(),
        torch_deterministic=torch.are_deterministic_algorithms_enabled(),
        torch_threads=torch.get_num_threads(),
    )


# ---------------------------------------------------------------------------------------------------- the run lock


class ReliabilityConfig(StrictConfig):
    """How a run guards itself: the run lock's patience and the resource check before it starts."""

    lock_timeout_s: float = Field(
        6 * 3600.0, ge=0.0, description="how long a run waits for another run to finish before failing"
    )
    check_resources: bool = True
    safety_factor: float = Field(1.25, ge=1.0, description="the disk and memory estimates are multiplied by this")


class RunLockTimeout(RuntimeError):
    """Another run held the lock for longer than the configured timeout."""


def _describe_owner(owner_file: Path) -> str:
    owner = _read_owner(owner_file)
    if owner is None:
        return "another run (owner unknown)"
    return f"run started by pid {owner.pid} at {owner.started.isoformat(timespec='seconds')} ({owner.command})"


class LockOwner(BaseModel):
    """Who holds the run lock: written beside it while a run holds it, removed when the run ends."""

    pid: int
    started: datetime
    command: str


def _read_owner(owner_file: Path) -> LockOwner | None:
    try:
        return LockOwner.model_validate_json(owner_file.read_text())
    except (OSError, ValueError):
        return None


@contextmanager
def run_lock(
    lock_file: Path,
    timeout_s: float,
    poll_s: float = 0.5,
    on_dead_owner: Callable[[LockOwner], None] | None = None,
) -> Iterator[None]:
    """Hold an inter-process lock for the duration of a run; wait (saying for whom) up to ``timeout_s``.

    A run that ends in any way Python sees (success, exception, signal) removes its owner file before it
    releases the lock. Finding one on acquiring the lock therefore means its run was killed (SIGKILL, out of
    memory, power loss): ``on_dead_owner`` is called with it first, to settle what that run left behind.

    Raises:
        RunLockTimeout: the other run still holds the lock after ``timeout_s``; the message names it.
    """
    lock_file.parent.mkdir(parents=True, exist_ok=True)
    owner_file = lock_file.with_name(lock_file.name + ".owner.json")
    lock = FileLock(lock_file)
    try:
        lock.acquire(timeout=0)
    except Timeout:
        owner = _describe_owner(owner_file)
        logger.warning("waiting for %s to finish (lock %s, up to %.0f s)", owner, lock_file, timeout_s)
        started = time.monotonic()
        try:
            lock.acquire(timeout=timeout_s, poll_interval=poll_s)
        except Timeout:
            raise RunLockTimeout(
                f"{owner} still holds {lock_file} after {timeout_s:.0f} s; "
                "wait for it to finish, or raise reliability.lock_timeout_s"
            ) from None
        logger.info("lock acquired after %.1f s of waiting", time.monotonic() - started)
    try:
        dead = _read_owner(owner_file) if owner_file.exists() else None
        if dead is not None and on_dead_owner is not None:
            logger.warning("the run started by pid %d at %s was killed: settling what it left", dead.pid, dead.started)
            on_dead_owner(dead)
        owner = LockOwner(pid=os.getpid(), started=datetime.now(UTC), command=" ".join(sys.argv))
        write_atomic(owner_file, owner.model_dump_json())
        yield
    finally:
        owner_file.unlink(missing_ok=True)
        lock.release()


# ---------------------------------------------------------------------------------------------------- resource checks


class ResourceNeed(BaseModel):
    """One estimated need: bytes, where (a path for disk, None for memory), and the knob that lowers it."""

    what: str
    bytes: int
    path: Path | None = None
    lower_it: str


class InsufficientResourcesError(RuntimeError):
    """The estimated needs do not fit in the free disk space or the available memory."""


def available_memory_bytes() -> int:
    """Memory this process can still use: the system's available memory, capped by a cgroup (container) limit."""
    available = psutil.virtual_memory().available
    limit_file, usage_file = Path("/sys/fs/cgroup/memory.max"), Path("/sys/fs/cgroup/memory.current")
    try:
        limit = limit_file.read_text().strip()
        if limit != "max":
            available = min(available, int(limit) - int(usage_file.read_text()))
    except (OSError, ValueError):
        pass
    return available


def _existing_ancestor(path: Path) -> Path:
    path = path.expanduser().absolute()
    while not path.exists():
        path = path.parent
    return path


def _gib(n_bytes: float) -> str:
    return f"{n_bytes / 2**30:.2f} GiB"


def check_resources(
    needs: list[ResourceNeed], safety_factor: float = 1.25, available_memory: int | None = None
) -> None:
    """Compare disk needs (summed per filesystem) and memory needs with what is free; raise with what to change.

    Raises:
        InsufficientResourcesError: one line per shortfall, naming the needs, the free amount and the knobs.
    """
    problems = []
    by_device: dict[int, list[ResourceNeed]] = {}
    for need in needs:
        if need.path is not None:
            by_device.setdefault(os.stat(_existing_ancestor(need.path)).st_dev, []).append(need)
    for group in by_device.values():
        wanted = safety_factor * sum(need.bytes for need in group)
        mount = _existing_ancestor(group[0].path)
        free = shutil.disk_usage(mount).free
        if wanted > free:
            parts = ", ".join(f"{need.what} {_gib(need.bytes)} at {need.path}" for need in group if need.bytes)
            knobs = "; ".join(dict.fromkeys(need.lower_it for need in group if need.bytes))
            problems.append(
                f"not enough disk space on the filesystem of {mount}: the run needs ~{_gib(wanted)} ({parts}), "
                f"{_gib(free)} is free. Change: {knobs}; or free space there"
            )
    memory = [need for need in needs if need.path is None]
    wanted = safety_factor * sum(need.bytes for need in memory)
    free = available_memory if available_memory is not None else available_memory_bytes()
    if wanted > free:
        parts = ", ".join(f"{need.what} {_gib(need.bytes)}" for need in memory if need.bytes)
        knobs = "; ".join(dict.fromkeys(need.lower_it for need in memory if need.bytes))
        problems.append(
            f"not enough memory: the run needs ~{_gib(wanted)} ({parts}), {_gib(free)} is available. Change: {knobs}"
        )
    if problems:
        raise InsufficientResourcesError(" | ".join(problems))
    logger.info("resource check passed: %s", ", ".join(f"{need.what} {_gib(need.bytes)}" for need in needs))


def directory_bytes(path: Path) -> int:
    """Bytes of the files under ``path`` (0 when absent)."""
    path = Path(path).expanduser()
    if path.is_file():
        return path.stat().st_size
    return sum(entry.stat().st_size for entry in path.rglob("*") if entry.is_file()) if path.is_dir() else 0


def _backbone_shape(name_or_path: str) -> tuple[int, object] | None:
    """(parameter count, transformers config) of a backbone, without loading weights.

    None if its config is unreachable.
    """
    try:
        config = (
            DEMO_CONFIGS[name_or_path]()
            if name_or_path in DEMO_CONFIGS
            else AutoConfig.from_pretrained(resolve_backbone(name_or_path), local_files_only=True)
        )
    except (OSError, ValueError):
        return None
    with torch.device("meta"):
        model = AutoModel.from_config(config)
    return sum(parameter.numel() for parameter in model.parameters()), config


def _activation_bytes(config: object, images: int, side: int) -> int:
    """Activations kept for backward by a ViT over ``images`` square inputs of ``side`` px (float32)."""
    tokens = (side // config.patch_size) ** 2 + 1 + getattr(config, "num_register_tokens", 0)
    per_layer = tokens * config.hidden_size * ACTIVATION_FLOATS_PER_TOKEN + 2 * config.num_attention_heads * tokens**2
    return 4 * images * per_layer * config.num_hidden_layers


def estimate_run_needs(config: RunConfig, zenml_dir: Path) -> list[ResourceNeed]:
    """Upper estimates of a run's disk (per path) and memory needs from its config, before anything runs.

    Disk: the demo images still to draw (``JPEG_BYTES_PER_PIXEL``), the image store (at most a copy of the data),
    two full training checkpoints (weights + Adam moments), and the run's model artifacts (adapted backbone,
    classifier, ONNX export, the registered copy). Memory: the process, the training state (weights, grads, Adam),
    the activations of the larger of the training and ExPLoRA batches, and one batch of input canvases.
    """
    data_path = Path(config.data.path).expanduser()
    if config.demo is not None and not data_path.exists():
        images = sum(config.demo_sources.values()) if config.demo_sources else config.demo.n_images
        data_bytes = int(images * config.demo.image_width * config.demo.image_height * JPEG_BYTES_PER_PIXEL)
        fewer = "fewer demo images (demo.n_images / demo_sources) or smaller ones (demo.image_width, demo.image_height)"
        needs = [ResourceNeed(what="demo images", bytes=data_bytes, path=data_path, lower_it=fewer)]
    else:
        data_bytes = directory_bytes(data_path) if "://" not in config.data.path else 0
        fewer = "a smaller dataset"
        needs = []
    store = Path(config.data.image_store).expanduser()
    needs.append(
        ResourceNeed(
            what="image store",
            bytes=max(0, data_bytes - directory_bytes(store)),
            path=store,
            lower_it=f"{fewer}, or data.image_store on a larger disk",
        )
    )
    shape = _backbone_shape(config.backbone)
    if shape is None:
        logger.warning(
            "resource check: the config of backbone %s is not on this machine; "
            "model sizes are left out of the estimate",
            config.backbone,
        )
        return needs + [
            ResourceNeed(what="process", bytes=PROCESS_BYTES, lower_it="nothing to lower: the libraries themselves")
        ]
    parameters, backbone_config = shape
    model_bytes = 4 * parameters
    checkpoint_root = (
        Path(config.train.checkpoint_root).expanduser() if config.train.checkpoint_root else Path(tempfile.gettempdir())
    )
    needs += [
        ResourceNeed(
            what="training checkpoints",
            bytes=2 * 3 * model_bytes,
            path=checkpoint_root,
            lower_it="train.checkpoint_root on a larger disk or a smaller backbone",
        ),
        ResourceNeed(
            what="model artifacts",
            bytes=4 * model_bytes,
            path=zenml_dir,
            lower_it="a smaller backbone, or the ZenML store on a larger disk",
        ),
    ]
    multiview, explora = config.classifier.multiview, config.explora
    train_views = config.train.batch_size * (1 if config.train.train_views == "global" else multiview.views_per_image)
    train_activations = _activation_bytes(backbone_config, train_views, multiview.view_size)
    explora_activations = 0
    if config.explora_enabled:
        explora_activations = 2 * (
            _activation_bytes(backbone_config, 2 * explora.batch_size, explora.global_crop_size)
            + _activation_bytes(backbone_config, explora.n_local_crops * explora.batch_size, explora.local_crop_size)
        )
    explora_batch = explora.batch_size if config.explora_enabled else 0
    batch = max(config.train.batch_size, explora_batch)
    return needs + [
        ResourceNeed(what="process", bytes=PROCESS_BYTES, lower_it="nothing to lower: the libraries themselves"),
        ResourceNeed(
            what="training state (weights, grads, Adam)", bytes=4 * model_bytes, lower_it="a smaller backbone"
        ),
        ResourceNeed(
            what=f"activations (train batch {config.train.batch_size}, ExPLoRA batch {explora_batch})",
            bytes=max(train_activations, explora_activations),
            lower_it="a smaller train.batch_size / explora.batch_size, "
            "or a smaller classifier.multiview.view_size / explora crop sizes",
        ),
        ResourceNeed(
            what="input canvases",
            bytes=4 * 3 * batch * multiview.canvas_size**2,
            lower_it="a smaller train.batch_size / explora.batch_size",
        ),
    ]
