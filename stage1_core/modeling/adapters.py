"""Parameter-efficient fine-tuning of the backbone: LoRA and DoRA (via peft) and DoRAN (this project's module).

LoRA (Hu et al. 2021, arXiv 2106.09685) adds a trainable low-rank update ``W0 + (alpha / r) B A`` to a
frozen weight. It is the supervised stage ExPLoRA (arXiv 2406.10973) pairs with its pre-training: after
the merge, the backbone is fine-tuned parameter-efficiently with LoRA on Q and V (its ``finetune/``
code offers LoRA or full fine-tuning). Here: ``train.adapter.method: lora`` with ``train.trainable_blocks:
0`` puts LoRA on Q and V of every block and trains it with the head and the final norm; the default
(``none`` with ``trainable_blocks: 2``) fine-tunes the last blocks fully instead.

DoRA (Liu et al., ICML 2024, arXiv 2402.09353) re-parameterises a frozen weight as
``W' = m * (W0 + B A) / ||W0 + B A||_c``: a learned magnitude per output unit times a direction
that LoRA updates. HF peft implements it (``LoraConfig(use_dora=True)``).

DoRAN (Diep et al., arXiv 2510.04331) stabilises DoRA in two ways: a learnable positive term in the
denominator, ``W' = m * (W0 + B A) / (||W0 + B A||_c + tau)``, and low-rank matrices that are not
free parameters but the outputs of small auxiliary networks whose first layers (``W1A``, ``W1B``)
are shared by the query and value projections of a block, which couples their updates. No library
has it, so :class:`DoranLinear` and :class:`DoranGenerator` are plain modules here.

Both adapters go on the Q and V projections of the blocks that are not trained fully, with target
names taken from the loaded model (as ExPLoRA does). Both merge exactly into plain ``nn.Linear``
weights after training: at inference every DoRAN quantity (the generated ``A`` and ``B``, ``tau``)
is a fixed tensor, so the merged backbone saves, loads and exports like any other.
"""

from __future__ import annotations

import logging
import math
from typing import Literal

import torch
from peft import LoraConfig, PeftModel, get_peft_model
from pydantic import Field
from torch import nn
from torch.nn import functional as F

from stage1_core.common.config import StrictConfig
from stage1_core.modeling.backbone import lora_target_modules, transformer_blocks

logger = logging.getLogger(__name__)


class AdapterConfig(StrictConfig):
    """Which adapter fine-tunes the backbone's Q and V projections (``none``: head and trainable blocks only;
    ``lora`` with ``trainable_blocks: 0``: ExPLoRA's parameter-efficient supervised stage)."""

    method: Literal["none", "lora", "dora", "doran"] = "none"
    rank: int = Field(8, ge=1, description="rank of the low-rank update B A")
    alpha: float = Field(8.0, gt=0.0, description="the update is scaled by alpha / rank, as in LoRA")
    dropout: float = Field(0.0, ge=0.0, lt=1.0, description="LoRA dropout on the adapter input (LoRA, DoRA)")
    doran_hidden: int = Field(
        8,
        ge=1,
        description="width of DoRAN's auxiliary networks "
        "(their output layers cost about as much as a LoRA of this rank)",
    )
    doran_tau_init: float = Field(
        1e-2, gt=0.0, description="initial denominator term tau of DoRAN (kept positive by softplus)"
    )


class DoranGenerator(nn.Module):
    """DoRAN's auxiliary networks of one block: ``A_t = W2A_t gelu(W1A z^A_t)``, ``B_t^T = W2B_t gelu(W1B z^B_t)``.

    ``W1A`` and ``W1B`` are shared by the block's roles (query and value); the seeds ``z`` (one row per
    rank) and the output layers belong to one role. ``W2B`` starts at zero, so ``B A = 0`` at the start
    (the LoRA initialisation), and gradients still reach ``W2B`` because its input is not zero.
    """

    def __init__(self, shapes: dict[str, tuple[int, int]], rank: int, hidden: int) -> None:
        super().__init__()
        self.shared_a = nn.Linear(hidden, hidden)
        self.shared_b = nn.Linear(hidden, hidden)
        self.seeds_a = nn.ParameterDict({role: nn.Parameter(torch.randn(rank, hidden)) for role in shapes})
        self.seeds_b = nn.ParameterDict({role: nn.Parameter(torch.randn(rank, hidden)) for role in shapes})
        self.out_a = nn.ModuleDict(
            {role: nn.Linear(hidden, in_features, bias=False) for role, (in_features, _) in shapes.items()}
        )
        self.out_b = nn.ModuleDict(
            {role: nn.Linear(hidden, out_features, bias=False) for role, (_, out_features) in shapes.items()}
        )
        for layer in self.out_b.values():
            nn.init.zeros_(layer.weight)

    def forward(self, role: str) -> tuple[torch.Tensor, torch.Tensor]:
        """``(A [rank, in], B [out, rank])`` of ``role``."""
        a = self.out_a[role](F.gelu(self.shared_a(self.seeds_a[role])))
        b = self.out_b[role](F.gelu(self.shared_b(self.seeds_b[role]))).T
        return a, b


class DoranLinear(nn.Module):
    """A frozen ``nn.Linear`` with the DoRAN weight ``m * (W0 + s B A) / (||W0 + s B A||_c + tau)``.

    The norm is taken per output unit (a row of the PyTorch weight), as peft does for DoRA. ``m`` starts at
    ``||W0||_c + tau_0`` so the layer equals the pre-trained one before the first step.
    """

    def __init__(self, base: nn.Linear, generator: DoranGenerator, role: str, scaling: float, tau_init: float) -> None:
        super().__init__()
        self.base = base.requires_grad_(False)
        self.generator = generator
        self.role = role
        self.scaling = scaling
        with torch.no_grad():
            self.magnitude = nn.Parameter(base.weight.norm(dim=1) + tau_init)
        self.tau_raw = nn.Parameter(torch.tensor(math.log(math.expm1(tau_init)), dtype=base.weight.dtype))

    @property
    def tau(self) -> torch.Tensor:
        return F.softplus(self.tau_raw)

    def merged_weight(self) -> torch.Tensor:
        a, b = self.generator(self.role)
        direction = self.base.weight + self.scaling * (b @ a)
        return (self.magnitude / (direction.norm(dim=1) + self.tau)).unsqueeze(1) * direction

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x, self.merged_weight(), self.base.bias)

    def merge(self) -> nn.Linear:
        """The equivalent plain linear layer."""
        with torch.no_grad():
            merged = nn.Linear(
                self.base.in_features,
                self.base.out_features,
                bias=self.base.bias is not None,
                device=self.base.weight.device,
                dtype=self.base.weight.dtype,
            )
            merged.weight.copy_(self.merged_weight())
            if self.base.bias is not None:
                merged.bias.copy_(self.base.bias)
        return merged


def add_adapters(backbone: nn.Module, config: AdapterConfig, fully_trained_blocks: int) -> nn.Module:
    """Put the configured adapter on Q and V of every block but the last ``fully_trained_blocks``.

    Adapters add trainable parameters and change no other parameter's ``requires_grad`` (peft's freezing
    is undone for the parameters that were trainable before). Returns the backbone to train with (a
    ``PeftModel`` for LoRA and DoRA, the same module modified in place for DoRAN, unchanged for ``none``).

    Raises:
        ValueError: every block is trained fully, so no block is left for an adapter.
    """
    if config.method == "none":
        return backbone
    n_blocks = len(transformer_blocks(backbone))
    if not 0 <= fully_trained_blocks < n_blocks:
        raise ValueError(
            f"adapter {config.method!r} goes on the blocks that are not trained fully, but trainable_blocks="
            f"{fully_trained_blocks} leaves none of the {n_blocks} blocks: "
            f"set train.trainable_blocks between 0 and {n_blocks - 1}"
        )
    targets = lora_target_modules(backbone, fully_trained_blocks)
    trainable = [parameter for parameter in backbone.parameters() if parameter.requires_grad]
    if config.method in ("lora", "dora"):
        lora = LoraConfig(
            r=config.rank,
            lora_alpha=config.alpha,
            lora_dropout=config.dropout,
            target_modules=targets,
            use_dora=config.method == "dora",
            bias="none",
        )
        adapted: nn.Module = get_peft_model(backbone, lora)
    else:
        adapted = _add_doran(backbone, targets, config)
    for parameter in trainable:
        parameter.requires_grad_(True)
    logger.info("%s adapters (rank %d) on %d projections: %s", config.method, config.rank, len(targets), targets)
    return adapted


def _add_doran(backbone: nn.Module, targets: list[str], config: AdapterConfig) -> nn.Module:
    """Replace the target linears by :class:`DoranLinear`, one generator per block shared by its targets."""
    blocks = {id(block) for block in transformer_blocks(backbone)}
    block_names = [name for name, module in backbone.named_modules() if id(module) in blocks]
    by_block: dict[str, list[str]] = {}
    for target in targets:
        block = max((name for name in block_names if target.startswith(f"{name}.")), key=len)
        by_block.setdefault(block, []).append(target)
    scaling = config.alpha / config.rank
    for block_targets in by_block.values():
        linears = {target: backbone.get_submodule(target) for target in block_targets}
        shapes = {_role(target): (linear.in_features, linear.out_features) for target, linear in linears.items()}
        generator = DoranGenerator(shapes, config.rank, config.doran_hidden).to(
            next(iter(linears.values())).weight.device
        )
        for target, linear in linears.items():
            parent, _, leaf = target.rpartition(".")
            setattr(
                backbone.get_submodule(parent),
                leaf,
                DoranLinear(linear, generator, _role(target), scaling, config.doran_tau_init),
            )
    return backbone


def _role(target: str) -> str:
    """The projection's leaf name (``q_proj`` / ``v_proj`` ...): a valid ModuleDict key within its block."""
    return target.rsplit(".", 1)[-1]


def has_adapters(backbone: nn.Module) -> bool:
    """True while LoRA / DoRA (peft) or DoRAN modules are attached: such a backbone must be merged before saving."""
    return isinstance(backbone, PeftModel) or any(isinstance(module, DoranLinear) for module in backbone.modules())


def merge_adapters(backbone: nn.Module) -> nn.Module:
    """Fold the adapters into plain linear weights (LoRA, DoRA: peft ``merge_and_unload``); a plain backbone again."""
    if isinstance(backbone, PeftModel):
        return backbone.merge_and_unload()
    for name, module in list(backbone.named_modules()):
        if isinstance(module, DoranLinear):
            parent, _, leaf = name.rpartition(".")
            setattr(backbone.get_submodule(parent), leaf, module.merge())
    return backbone


def adapter_parameters(backbone: nn.Module) -> list[nn.Parameter]:
    """The parameters the adapters added, each once.

    They are peft's ``lora_*`` tensors, or DoRAN's generators, magnitudes and tau.
    """
    if isinstance(backbone, PeftModel):
        return [parameter for name, parameter in backbone.named_parameters() if "lora_" in name]
    found: dict[int, nn.Parameter] = {}
    for module in backbone.modules():
        if isinstance(module, DoranLinear):
            base = {id(parameter) for parameter in module.base.parameters()}
            found.update({id(parameter): parameter for parameter in module.parameters() if id(parameter) not in base})
    return list(found.values())
