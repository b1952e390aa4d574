"""ExPLoRA: the trainable set, the LoRA merge, the losses and short real runs on the demo backbones."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from pydantic import ValidationError
from torch import nn

from stage1_core.modeling.backbone import load_backbone, lora_target_modules
from stage1_core.modeling.explora import (
    ExploraConfig,
    block_patch_masks,
    cosine_schedule,
    dino_loss,
    explora_trainable_report,
    ibot_loss,
    koleo_loss,
    layerwise_lr_multipliers,
    merge_explora_backbone,
    prepare_explora_backbone,
    random_patch_masks,
    run_explora,
    sinkhorn_knopp,
)

ARCHITECTURES = {"dinov2-demo": "encoder.layer", "dinov3-demo": "model.layer"}


def tiny_config(**overrides: object) -> ExploraConfig:
    settings = dict(
        lora_rank=4,
        lora_alpha=8,
        max_steps=3,
        batch_size=2,
        warmup_fraction=0.0,
        lr=1e-3,
        global_crop_size=56,  # a 4 x 4 patch grid: room for mask blocks of 4 patches
        local_crop_size=14,
        n_local_crops=2,
        head_hidden_dim=32,
        head_bottleneck_dim=16,
        head_out_dim=64,
        mask_probability=1.0,
    )
    settings.update(overrides)
    return ExploraConfig(**settings)


def tiny_images(count: int = 4) -> list[torch.Tensor]:
    generator = torch.Generator().manual_seed(7)
    return [torch.rand(3, 30 + 5 * index, 40, generator=generator) for index in range(count)]


def has_peft_modules(model: nn.Module) -> bool:
    return any(type(module).__module__.startswith("peft") for module in model.modules())


@pytest.mark.parametrize("name", sorted(ARCHITECTURES))
@pytest.mark.parametrize("unfrozen", [1, 2])
def test_trainable_set_is_the_explora_definition(name: str, unfrozen: int) -> None:
    backbone = load_backbone(name)
    prefix = ARCHITECTURES[name]
    n_blocks = backbone.config.num_hidden_layers
    report = explora_trainable_report(backbone, tiny_config(unfrozen_blocks=unfrozen))

    lora_blocks = range(n_blocks - unfrozen)
    assert report.lora_target_modules == sorted(
        f"{prefix}.{index}.attention.{projection}" for index in lora_blocks for projection in ("q_proj", "v_proj")
    )
    assert report.unfrozen_blocks == [f"{prefix}.{index}" for index in range(n_blocks - unfrozen, n_blocks)]

    prepared = prepare_explora_backbone(backbone, tiny_config(unfrozen_blocks=unfrozen)).get_base_model()
    norms = {
        f"{module_name}.{param}"
        for module_name, module in prepared.named_modules()
        if isinstance(module, nn.LayerNorm)
        for param in ("weight", "bias")
    }
    tokens = {"embeddings.cls_token", "embeddings.mask_token"}
    if name == "dinov3-demo":
        tokens.add("embeddings.register_tokens")
    unfrozen_prefixes = tuple(f"{block}." for block in report.unfrozen_blocks)
    expected = set()
    for param_name, _ in prepared.named_parameters():
        is_lora = ".lora_A." in param_name or ".lora_B." in param_name
        if param_name.startswith(unfrozen_prefixes) or param_name in norms or param_name in tokens or is_lora:
            expected.add(param_name)
    assert set(report.trainable_parameter_names) == expected
    lora_params = [n for n in expected if ".lora_" in n]
    assert len(lora_params) == 2 * 2 * len(lora_blocks)  # A and B on Q and V of every LoRA block
    assert not any(n.startswith(unfrozen_prefixes) for n in lora_params), "no LoRA inside the fully trained blocks"
    frozen_examples = [n for n, _ in prepared.named_parameters() if "_embeddings" in n]
    mlp_in = "fc1" if name == "dinov2-demo" else "up_proj"
    frozen_examples += [f"{prefix}.0.attention.{p}.weight" for p in ("q_proj.base_layer", "k_proj", "o_proj")]
    frozen_examples += [f"{prefix}.0.mlp.{mlp_in}.weight", f"{prefix}.0.layer_scale1.lambda1"]
    assert frozen_examples and not set(frozen_examples) & set(report.trainable_parameter_names)

    sizes = {n: p.numel() for n, p in prepared.named_parameters()}
    assert report.trainable_params == sum(sizes[n] for n in expected)
    assert report.total_params == sum(sizes.values())
    assert report.trainable_share == pytest.approx(report.trainable_params / report.total_params)
    assert not has_peft_modules(backbone), "the caller's backbone is left untouched"
    assert all(p.requires_grad for p in backbone.parameters())


def test_targets_follow_the_loaded_models_naming() -> None:
    backbone = load_backbone("dinov2-demo")
    for block in backbone.encoder.layer:  # the naming of transformers releases before v5
        attention = block.attention
        attention.query, attention.value = attention.q_proj, attention.v_proj
        del attention.q_proj, attention.v_proj
    assert lora_target_modules(backbone, 1) == [
        f"encoder.layer.{index}.attention.{projection}" for index in range(3) for projection in ("query", "value")
    ]
    backbone.encoder.layer[0].attention.projection_q = backbone.encoder.layer[0].attention.query
    del backbone.encoder.layer[0].attention.query
    with pytest.raises(ValueError, match=r"block encoder\.layer\.0 .*query projection"):
        lora_target_modules(backbone, 1)
    with pytest.raises(ValueError, match="unfrozen_blocks=5"):
        lora_target_modules(backbone, 5)


@pytest.mark.parametrize("name", sorted(ARCHITECTURES))
def test_merged_backbone_equals_the_lora_model_and_round_trips(name: str, tmp_path) -> None:
    backbone = load_backbone(name)
    peft_model = prepare_explora_backbone(backbone, tiny_config())
    generator = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for param_name, param in peft_model.named_parameters():
            if ".lora_B." in param_name:  # peft starts B at zero; make the adapters matter
                param.copy_(0.05 * torch.randn(param.shape, generator=generator))
    size = 2 * backbone.config.patch_size
    pixels = torch.randn(2, 3, size, size, generator=generator)
    with torch.no_grad():
        original = backbone(pixel_values=pixels).last_hidden_state
        adapted = peft_model.eval()(pixel_values=pixels).last_hidden_state
    assert (adapted - original).abs().max() > 1e-3, "the LoRA adapters change the output"

    merged = merge_explora_backbone(peft_model)
    assert type(merged) is type(backbone)
    assert not has_peft_modules(merged)
    with torch.no_grad():
        merged_out = merged(pixel_values=pixels).last_hidden_state
    torch.testing.assert_close(merged_out, adapted, atol=1e-4, rtol=0)

    merged.save_pretrained(tmp_path)
    reloaded = type(backbone).from_pretrained(tmp_path).eval()
    with torch.no_grad():
        torch.testing.assert_close(reloaded(pixel_values=pixels).last_hidden_state, merged_out, atol=1e-6, rtol=0)


@pytest.mark.parametrize("name", sorted(ARCHITECTURES))
def test_short_run_trains_the_explora_set_and_returns_a_plain_backbone(name: str, tmp_path) -> None:
    backbone = load_backbone(name)
    before = {n: p.detach().clone() for n, p in backbone.named_parameters()}
    config = tiny_config(export="student")
    trained, summary = run_explora(backbone, tiny_images(), config)

    assert type(trained) is type(backbone) and not has_peft_modules(trained)
    patch = backbone.config.patch_size
    assert summary.global_crop_size % patch == 0 and summary.local_crop_size % patch == 0
    assert summary.global_crop_size >= config.global_crop_size
    assert summary.steps == len(summary.loss_curve) == config.max_steps
    assert summary.images_seen == config.max_steps * config.batch_size
    for record in summary.loss_curve:
        parts = [record.total, record.dino, record.ibot, record.koleo]
        assert all(math.isfinite(value) for value in parts)
        assert record.total == pytest.approx(record.dino + record.ibot + 0.1 * record.koleo, rel=1e-5)
    assert summary.loss_curve[0].ibot > 0, "every global crop is masked with mask_probability=1"

    after = dict(trained.named_parameters())
    prefix = ARCHITECTURES[name]
    last = backbone.config.num_hidden_layers - 1
    changed = {n for n in before if not torch.equal(before[n], after[n].detach())}
    assert f"{prefix}.{last}.attention.k_proj.weight" in changed, "the last block is trained fully"
    assert f"{prefix}.0.attention.q_proj.weight" in changed, "the merged LoRA update reaches Q"
    assert f"{prefix}.0.attention.v_proj.weight" in changed, "the merged LoRA update reaches V"
    assert "embeddings.cls_token" in changed
    frozen = [n for n in before if "_embeddings" in n or n.startswith(f"{prefix}.0.attention.k_proj")]
    assert frozen and not changed & set(frozen)
    assert all(torch.equal(before[n], p) for n, p in backbone.named_parameters()), "the input backbone is unchanged"

    trained.save_pretrained(tmp_path)
    reloaded = type(backbone).from_pretrained(tmp_path)
    assert all(torch.equal(p, after[n]) for n, p in reloaded.named_parameters())


def test_runs_are_deterministic_for_a_seed() -> None:
    backbone = load_backbone("dinov2-demo")
    torch.manual_seed(100)  # the caller's random state must not matter, only config.seed
    first, first_summary = run_explora(backbone, tiny_images(), tiny_config())
    torch.manual_seed(200)
    second, second_summary = run_explora(backbone, tiny_images(), tiny_config())
    _, other_summary = run_explora(backbone, tiny_images(), tiny_config(seed=1))

    assert [r.total for r in first_summary.loss_curve] == [r.total for r in second_summary.loss_curve]
    second_params = dict(second.named_parameters())
    assert all(torch.equal(p, second_params[n]) for n, p in first.named_parameters())
    assert [r.total for r in first_summary.loss_curve] != [r.total for r in other_summary.loss_curve]
    original = dict(backbone.named_parameters())
    assert not torch.equal(first.encoder.layer[3].mlp.fc1.weight, original["encoder.layer.3.mlp.fc1.weight"]), (
        "the EMA teacher moves towards the student"
    )


def test_bad_inputs_are_named() -> None:
    backbone = load_backbone("dinov2-demo")
    images = tiny_images()
    with pytest.raises(ValueError, match="image 1: expected a float tensor 3xHxW"):
        run_explora(backbone, [images[0], torch.rand(1, 30, 30), *images[2:]], tiny_config())
    with pytest.raises(ValueError, match=r"image 2: values span .*expected \[0, 1\]"):
        run_explora(backbone, [images[0], images[1], 255 * images[2], images[3]], tiny_config())
    with pytest.raises(ValueError, match="at least batch_size=8 images, got 4"):
        run_explora(backbone, images, tiny_config(batch_size=8))
    with pytest.raises(ValidationError, match="teacher_temp"):
        ExploraConfig(teacher_temp=0.2, student_temp=0.1)
    with pytest.raises(ValidationError, match="warmup_steps"):  # renamed to warmup_fraction: stale keys fail
        ExploraConfig(warmup_steps=3)


def test_losses_match_their_definitions() -> None:
    generator = torch.Generator().manual_seed(3)
    student = [torch.randn(5, 16, generator=generator) for _ in range(4)]
    teacher = [F.softmax(torch.randn(5, 16, generator=generator) / 0.04, dim=-1) for _ in range(2)]
    pairs = [(s, t) for s in range(4) for t in range(2) if s != t]
    expected = sum(F.cross_entropy(student[s] / 0.1, teacher[t]) for s, t in pairs) / len(pairs)
    torch.testing.assert_close(dino_loss(student, teacher, 0.1), expected)

    masks = torch.tensor([[True, True, False], [False, False, False], [False, True, False]])
    patch_student = torch.randn(3, 16, generator=generator)
    patch_teacher = F.softmax(torch.randn(3, 16, generator=generator), dim=-1)
    per_patch = F.cross_entropy(patch_student / 0.1, patch_teacher, reduction="none")
    expected_ibot = ((per_patch[0] + per_patch[1]) / 2 + per_patch[2]) / 3  # per-image mean, over all 3 images
    torch.testing.assert_close(ibot_loss(patch_student, patch_teacher, masks, 0.1), expected_ibot)

    features = torch.randn(6, 8, generator=generator)
    unit = F.normalize(features, dim=-1)
    distances = torch.cdist(unit, unit) + torch.diag(torch.full((6,), float("inf")))
    torch.testing.assert_close(koleo_loss(features), -torch.log(distances.min(dim=1).values).mean(), atol=1e-5, rtol=0)
    clustered = torch.ones(6, 8) + 0.01 * torch.randn(6, 8, generator=generator)
    assert koleo_loss(clustered) > koleo_loss(features), "KoLeo penalises features that bunch up"


def test_patch_masks_cover_the_requested_share() -> None:
    torch.manual_seed(0)
    masks = random_patch_masks(8, 50, 0.5, (0.1, 0.5))
    counts = masks.sum(dim=1)
    assert int((counts > 0).sum()) == 4
    assert all(5 <= int(c) <= 25 for c in counts[counts > 0])


def _neighbours(masks: torch.Tensor, grid: int) -> torch.Tensor:
    """Per masked patch, whether a 4-neighbour is masked too."""
    square = masks.view(-1, grid, grid)
    padded = F.pad(square.float(), (1, 1, 1, 1))
    around = padded[:, :-2, 1:-1] + padded[:, 2:, 1:-1] + padded[:, 1:-1, :-2] + padded[:, 1:-1, 2:]
    return (around > 0)[square]


def test_block_masks_are_dinov2s_rectangles_on_half_the_crops() -> None:
    """DINOv2's masking: half the crops masked, their shares spread over [0.1, 0.5], each mask made of
    rectangles of at least 4 patches, so a masked patch almost always has a masked neighbour (drawn one by
    one at these shares, a third of them do not)."""
    torch.manual_seed(0)
    grid = 16
    masks = block_patch_masks(64, (grid, grid), 0.5, (0.1, 0.5))
    counts = masks.sum(dim=1)
    assert masks.shape == (64, grid * grid) and int((counts > 0).sum()) == 32
    shares = counts[counts > 0].float() / grid**2
    assert shares.max() <= 0.5 and shares.min() >= 0.05 and shares.mean() == pytest.approx(0.3, abs=0.05)
    assert _neighbours(masks, grid).float().mean() > 0.97
    scattered = random_patch_masks(64, grid * grid, 0.5, (0.1, 0.5))
    assert _neighbours(scattered, grid).float().mean() < 0.85


def test_schedules_follow_dinov2s_cosine_scheduler() -> None:
    """Teacher temperature 0.04 -> 0.07 over the first 30%, weight decay 0.04 -> 0.4 and teacher momentum
    0.992 -> 1 by cosine, learning rate warmed up then cosine to min_lr (DINOv2 train.py / CosineScheduler)."""
    temperature = cosine_schedule(0.07, 0.07, 100, 30, warmup_start=0.04)
    np.testing.assert_allclose(temperature[:30], np.linspace(0.04, 0.07, 30))
    np.testing.assert_allclose(temperature[30:], 0.07)
    decay = cosine_schedule(0.04, 0.4, 100)
    assert (
        decay[0] == pytest.approx(0.04) and decay[50] == pytest.approx(0.22) and decay[-1] == pytest.approx(0.4, 1e-3)
    )
    lr = cosine_schedule(1e-3, 1e-6, 100, 10)
    assert lr[0] == 0.0 and lr[9] == pytest.approx(1e-3) and lr[10] == pytest.approx(1e-3) and lr[-1] < 2e-6


def test_layerwise_lr_decay_is_dinov2s() -> None:
    backbone = load_backbone("dinov2-demo")  # 4 blocks: embeddings 0.9^5, block i 0.9^(4 - i), final norm 1
    multipliers = layerwise_lr_multipliers(backbone, 0.9)
    assert multipliers["embeddings.cls_token"] == pytest.approx(0.9**5)
    assert multipliers["embeddings.patch_embeddings.projection.weight"] == pytest.approx(0.9**5)
    for block in range(4):
        assert multipliers[f"encoder.layer.{block}.attention.q_proj.weight"] == pytest.approx(0.9 ** (4 - block))
    assert multipliers["layernorm.weight"] == 1.0
    assert set(layerwise_lr_multipliers(backbone, 1.0).values()) == {1.0}


def test_sinkhorn_knopp_balances_the_prototypes_over_the_batch() -> None:
    logits = 2 * torch.rand(12, 6, generator=torch.Generator().manual_seed(4)) - 1  # cosines, as the heads give
    targets = sinkhorn_knopp(logits, 0.07, iterations=50)
    torch.testing.assert_close(targets.sum(dim=1), torch.ones(12))
    torch.testing.assert_close(targets.sum(dim=0), torch.full((6,), 2.0), atol=1e-3, rtol=0)  # 12 samples / 6


def test_run_applies_the_recipe_schedules_shared_head_and_options() -> None:
    backbone = load_backbone("dinov2-demo")
    config = tiny_config(max_steps=10, teacher_temp_warmup_fraction=0.3)
    _, summary = run_explora(backbone, tiny_images(), config)
    temps = [record.teacher_temp for record in summary.loss_curve]
    np.testing.assert_allclose(temps, [0.04, 0.055, 0.07] + [0.07] * 7)  # 3 of 10 steps warm up
    decays = [record.weight_decay for record in summary.loss_curve]
    assert decays[0] == pytest.approx(0.04) and all(np.diff(decays) > 0) and decays[-1] > 0.39
    one_head = 32 * 192 + 32 + 32 * 32 + 32 + 32 * 16 + 16 + 64 * 16 + 64  # MLP + weight-normed prototypes
    assert summary.head_params == one_head, "DINO and iBOT share one head (ssl_default_config: separate_head false)"
    _, separate = run_explora(backbone, tiny_images(), tiny_config(ibot_separate_head=True, centering="sinkhorn_knopp"))
    assert separate.head_params == 2 * one_head
    assert all(math.isfinite(record.total) for record in separate.loss_curve)
