"""Load a DINOv2 / DINOv3 vision transformer from Hugging Face transformers.

One loader serves every case, so the demo run and a user's real weights go through the same
code: a local directory written by ``save_pretrained`` (real weights copied onto the machine), such a
directory at an fsspec URL (``s3://bucket/weights/dinov2-small``: copied once into a local cache, the way
cluster pods get weights without a hub), a hub id (only on a machine that can reach the hub or has it
cached), or a demo name. ``dinov2-demo`` names the
project's own pre-trained demo weights, committed under ``stage1_core/demo/weights/dinov2-demo`` (made by
``stage1_core.demo.pretrain``, described by its ``MODEL_CARD.md``) and read through the local-directory
path like real weights; the other demo names are small randomly initialised configs of the real
architectures (nothing downloaded).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from pathlib import Path

import fsspec
import torch
from safetensors import SafetensorError
from torch import nn
from transformers import AutoConfig, AutoModel, Dinov2Config, DINOv3ViTConfig, PreTrainedModel

from stage1_core.common.atomic_io import atomic_directory

logger = logging.getLogger(__name__)

SUPPORTED_MODEL_TYPES: tuple[str, ...] = ("dinov2", "dinov2_with_registers", "dinov3_vit")


def _dinov2_demo_config() -> Dinov2Config:
    return Dinov2Config(
        hidden_size=192,
        num_hidden_layers=4,
        num_attention_heads=3,
        intermediate_size=768,
        patch_size=14,
        image_size=112,
    )


IMAGENET_MEAN = (0.485, 0.456, 0.406)  # the normalisation DINOv2/DINOv3 were pre-trained with
IMAGENET_STD = (0.229, 0.224, 0.225)
QUERY_NAMES: tuple[str, ...] = ("q_proj", "query", "q")
VALUE_NAMES: tuple[str, ...] = ("v_proj", "value", "v")

# The demo package ships these weights (it also makes them: stage1_core.demo.pretrain);
# this module only reads the folder.
PRETRAINED_DEMOS = {"dinov2-demo": Path(__file__).resolve().parents[1] / "demo" / "weights" / "dinov2-demo"}
DEMO_CONFIGS = {
    # the dinov2-demo architecture at random init: what pretrain_demo starts from
    "dinov2-demo-random": _dinov2_demo_config,
    "dinov3-demo": lambda: DINOv3ViTConfig(
        hidden_size=192,
        num_hidden_layers=4,
        num_attention_heads=3,
        intermediate_size=768,
        patch_size=16,
        image_size=112,
        num_register_tokens=4,
    ),
}

HUB_EXAMPLES = (
    "facebook/dinov2-small",
    "facebook/dinov2-base",
    "facebook/dinov3-vits16-pretrain-lvd1689m",
    "facebook/dinov3-vitb16-pretrain-lvd1689m",
)


CACHE_ENV = "ROADWORK_BACKBONE_CACHE"  # where weights fetched from a URL are kept (default below)
DEFAULT_CACHE = Path("~/.cache/roadwork/backbones")
VERSION_KEYS = ("ETag", "etag", "LastModified", "mtime", "created")  # what fsspec file systems report per file


class BackboneLoadError(ValueError):
    """The requested backbone cannot be loaded; the message says what is supported."""


def _usage() -> str:
    return (
        f"supported: a demo name {sorted(PRETRAINED_DEMOS | DEMO_CONFIGS)}, "
        "a local directory written by save_pretrained "
        f"(config.json + weights) of model type {list(SUPPORTED_MODEL_TYPES)} or such a directory at a URL "
        "(s3://bucket/weights/dinov2-small, any fsspec file system), or a hub id such as "
        f"{', '.join(HUB_EXAMPLES)} on a machine that can reach the hub or has it in its cache "
        "(copy the weights to a local directory or a bucket and pass its path for offline machines)"
    )


def is_url(name_or_path: str) -> bool:
    """Whether a backbone is given as a URL (``s3://...``, ``file://...``): fetched through fsspec."""
    return "://" in name_or_path


def backbone_cache() -> Path:
    """The local folder of fetched weights: ``$ROADWORK_BACKBONE_CACHE``, else ``~/.cache/roadwork/backbones``."""
    return Path(os.environ.get(CACHE_ENV) or DEFAULT_CACHE).expanduser()


def fetch_backbone(url: str, cache: Path | None = None) -> Path:
    """Copy the ``save_pretrained`` directory at ``url`` into the local cache once; return the local copy.

    The copy is named by a hash of the URL and of each remote file's name, size and version (ETag or modification
    time), so unchanged weights are never fetched twice and new weights at the same URL are fetched again. It is
    published atomically: a fetch killed halfway leaves no folder that looks complete.

    Raises:
        BackboneLoadError: no file system for the URL's scheme, nothing there, or it cannot be read.
    """
    try:
        filesystem, root = fsspec.core.url_to_fs(url)
        files = {path: info for path, info in filesystem.find(root, detail=True).items() if info["type"] == "file"}
    except (ImportError, ValueError) as error:  # fsspec: a known scheme whose package is missing / an unknown one
        raise BackboneLoadError(
            f"backbone {url}: no file system for its scheme ({error}); for s3:// install s3fs "
            "(pip install 'roadwork-stage1[k8s]')"
        ) from None
    except OSError as error:
        raise BackboneLoadError(f"backbone {url}: cannot list it ({error}); {_usage()}") from None
    prefix = root.rstrip("/") + "/"
    relative = {path: path[len(prefix) :] if path.startswith(prefix) else Path(path).name for path in files}
    if "config.json" not in relative.values():
        raise BackboneLoadError(f"backbone {url} has no config.json (found {sorted(relative.values())}); {_usage()}")
    listing = sorted(
        (relative[path], info.get("size"), [str(info[key]) for key in VERSION_KEYS if key in info])
        for path, info in files.items()
    )
    key = hashlib.sha256(json.dumps([url, listing]).encode()).hexdigest()[:16]
    target = (cache or backbone_cache()) / key
    if (target / "config.json").is_file():
        return target
    logger.info("backbone %s: fetching %d files into %s", url, len(files), target)
    try:
        with atomic_directory(target) as staging:
            for path, name in relative.items():
                (staging / name).parent.mkdir(parents=True, exist_ok=True)
                filesystem.get_file(path, str(staging / name))
    except OSError as error:
        raise BackboneLoadError(f"backbone {url}: cannot fetch it ({error})") from None
    return target


def resolve_backbone(name_or_path: str) -> str:
    """A local directory for a pre-trained demo name (its committed weights) or a URL (fetched into the cache).

    Anything else (a local path, a hub id, a random demo config's name) is returned unchanged.
    """
    if name_or_path in PRETRAINED_DEMOS:
        return str(PRETRAINED_DEMOS[name_or_path])
    return str(fetch_backbone(name_or_path)) if is_url(name_or_path) else name_or_path


def load_backbone(name_or_path: str, *, seed: int = 0, attn_implementation: str = "sdpa") -> PreTrainedModel:
    """Return the backbone as a transformers model (``Dinov2Model``, ``DINOv3ViTModel`` ...).

    Args:
        name_or_path: a demo name, a local directory, a directory at a URL (fetched once into
            :func:`backbone_cache`), or a hub id.
        seed: seed of the random initialisation of the random demo configs (deterministic demo runs).
        attn_implementation: ``"sdpa"`` (PyTorch's fused scaled-dot-product attention: flash / memory-efficient
            kernels on CUDA, and what the ONNX export traces) or ``"eager"`` (the reference implementation).

    Raises:
        BackboneLoadError: unknown name, unreadable directory or unsupported architecture,
            with a message listing what is supported and how to pass local weights.
    """
    if name_or_path in DEMO_CONFIGS:
        torch.manual_seed(seed)
        model = AutoModel.from_config(DEMO_CONFIGS[name_or_path](), attn_implementation=attn_implementation)
        logger.info("backbone %s: randomly initialised demo config", name_or_path)
        return model.eval()
    name_or_path = resolve_backbone(name_or_path)
    path = Path(name_or_path).expanduser()
    local = path.exists()
    if local and not (path / "config.json").is_file():
        raise BackboneLoadError(f"backbone directory {path} has no config.json; {_usage()}")
    if not local and (name_or_path.count("/") != 1 or name_or_path.startswith((".", "/", "~"))):
        raise BackboneLoadError(
            f"unknown backbone {name_or_path!r}: not a demo name, an existing directory or a hub id; {_usage()}"
        )
    try:
        config = AutoConfig.from_pretrained(str(path) if local else name_or_path, local_files_only=local)
    except (OSError, ValueError) as error:
        raise BackboneLoadError(f"cannot read backbone config from {name_or_path!r} ({error}); {_usage()}") from error
    if config.model_type not in SUPPORTED_MODEL_TYPES:
        raise BackboneLoadError(f"backbone {name_or_path!r} has model type {config.model_type!r}; {_usage()}")
    try:
        model = AutoModel.from_pretrained(
            str(path) if local else name_or_path, local_files_only=local, attn_implementation=attn_implementation
        )
    except (OSError, ValueError, SafetensorError) as error:
        raise BackboneLoadError(f"cannot load backbone weights from {name_or_path!r} ({error}); {_usage()}") from error
    logger.info("backbone %s: %s loaded", name_or_path, config.model_type)
    return model.eval()


def transformer_blocks(backbone: torch.nn.Module) -> torch.nn.ModuleList:
    """The list of transformer blocks (``encoder.layer`` in DINOv2, ``model.layer`` in DINOv3)."""
    for name, module in backbone.named_modules():
        if isinstance(module, torch.nn.ModuleList) and name.endswith("layer"):
            return module
    raise ValueError(f"cannot find the transformer blocks of {type(backbone).__name__}")


def backbone_patch_size(model: PreTrainedModel) -> int:
    """Patch size of the backbone, so views can be sized to whole patches."""
    return int(model.config.patch_size)


def lora_target_modules(backbone: nn.Module, unfrozen_blocks: int) -> list[str]:
    """Full names of the Q and V linear layers of every block except the last ``unfrozen_blocks``.

    Derived from the loaded model's modules so both transformers naming schemes (``q_proj`` /
    ``v_proj`` in v5, ``query`` / ``value`` before) work.

    Raises:
        ValueError: too many unfrozen blocks, or a block without exactly one Q and one V linear.
    """
    blocks = list(transformer_blocks(backbone))
    if unfrozen_blocks > len(blocks):
        raise ValueError(f"unfrozen_blocks={unfrozen_blocks} but {type(backbone).__name__} has {len(blocks)} blocks")
    module_names = {module: name for name, module in backbone.named_modules()}
    targets: list[str] = []
    for block in blocks[: len(blocks) - unfrozen_blocks]:
        linears = [name for name, module in block.named_modules() if isinstance(module, nn.Linear)]
        for role, candidates in (("query", QUERY_NAMES), ("value", VALUE_NAMES)):
            found = [name for name in linears if name.rsplit(".", 1)[-1] in candidates]
            if len(found) != 1:
                raise ValueError(
                    f"block {module_names[block]} of {type(backbone).__name__}: expected one {role} projection "
                    f"named one of {list(candidates)}, found {found}; its linear layers are {linears}"
                )
            targets.append(f"{module_names[block]}.{found[0]}")
    return targets
