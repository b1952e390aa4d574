import json
import re

import numpy as np
import pytest
import torch
from pydantic import ValidationError

from stage1_core.demo.config import ROADWORK_KINDS
from stage1_core.demo.pretrain import (
    FIRST_STREAM_SEED,
    MultiTaskHeads,
    PretrainConfig,
    main,
    multitask_loss,
    pretrain_backbone,
    view_targets,
)
from stage1_core.demo.render import DrawnFrame
from stage1_core.modeling.backbone import load_backbone
from stage1_core.modeling.model import MultiViewConfig

TINY_ARGS = [
    "--steps",
    "3",
    "--batch-size",
    "2",
    "--chunk-images",
    "4",
    "--pool-images",
    "6",
    "--pool-workers",
    "0",
    "--image-size",
    "128",
    "96",
    "--view-size",
    "28",
    "--warmup-steps",
    "1",
    "--log-every",
    "1",
    "--num-workers",
    "0",
]


def tiny_config(seed: int) -> PretrainConfig:
    return PretrainConfig(
        seed=seed,
        steps=2,
        batch_size=2,
        chunk_images=4,
        pool_images=6,
        pool_workers=0,
        image_width=128,
        image_height=96,
        warmup_steps=1,
        multiview=MultiViewConfig(view_size=28),
        probe_images=0,
        num_workers=0,
        log_every=1,
    )


def state(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {name: tensor.detach().clone() for name, tensor in model.state_dict().items()}


def same(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[name], b[name]) for name in a)


def test_command_writes_a_loadable_backbone_summary_and_card(tmp_path) -> None:
    out = tmp_path / "demo-weights"
    main([str(out), *TINY_ARGS, "--probe-images", "24"])
    loaded = load_backbone(str(out))
    assert type(loaded).__name__ == "Dinov2Model" and loaded.config.hidden_size == 192
    assert not same(state(loaded), state(load_backbone("dinov2-demo-random", seed=0))), (
        "training must change the initial weights"
    )
    assert not any("roadwork" in name or "scene" in name for name in loaded.state_dict()), (
        "heads are not part of the backbone"
    )
    summary = json.loads((out / "pretrain_summary.json").read_text())
    assert (
        summary["steps_run"] == 3
        and summary["scenes_seen"] == 6
        and summary["epochs"] == 1.0
        and len(summary["history"]) == 3
    )
    assert summary["chunk_seeds"][0] >= FIRST_STREAM_SEED
    assert all(
        -1.0 <= summary["probe"][key] <= 1.0 for key in ("linear_probe_mcc", "initial_linear_probe_mcc", "head_mcc")
    )
    assert summary["probe"]["probe_train_images"] + summary["probe"]["probe_test_images"] == 24
    card = (out / "MODEL_CARD.md").read_text()
    assert "python -m stage1_core.demo.pretrain" in card and "--steps 3" in card and "3 steps" in card
    assert (out / "pretraining_curves.png").stat().st_size > 0


def test_a_continuation_starts_from_the_earlier_stage_on_new_scenes_and_records_the_lineage(tmp_path, capsys) -> None:
    first, second = tmp_path / "stage-1", tmp_path / "stage-2"
    main([str(first), *TINY_ARGS, "--probe-images", "0"])
    first_seeds = json.loads((first / "pretrain_summary.json").read_text())["chunk_seeds"]
    assert main([str(second), *TINY_ARGS, "--base-backbone", str(first)]) == 2
    assert re.search(f"overlap those of stage 1.*--stream-seed-start {first_seeds[1] + 1}", capsys.readouterr().err)
    assert not second.exists()
    main(
        [
            str(second),
            *TINY_ARGS,
            "--base-backbone",
            str(first),
            "--stream-seed-start",
            str(first_seeds[1] + 1),
            "--seed",
            "1",
            "--probe-images",
            "0",
        ]
    )
    summary = json.loads((second / "pretrain_summary.json").read_text())
    assert [stage["base_backbone"] for stage in summary["earlier_stages"]] == ["dinov2-demo-random"]
    assert (
        summary["earlier_stages"][0]["chunk_seeds"] == first_seeds and summary["chunk_seeds"][0] == first_seeds[1] + 1
    )
    assert not same(state(load_backbone(str(second))), state(load_backbone(str(first)))), "the second stage trains on"
    card = (second / "MODEL_CARD.md").read_text()
    assert (
        "these 2 commands" in card
        and f"stage1_core.demo.pretrain {first} " in card
        and f"--base-backbone {first}" in card
    )
    assert (
        "- Stage 1: from `dinov2-demo-random`, 3 steps" in card
        and f"- Stage 2: from `{first}`, 3 steps" in card
        and "All stages: 6 steps" in card
    )


def test_pretraining_is_deterministic_for_a_seed() -> None:
    first, summary = pretrain_backbone(tiny_config(seed=5))
    again, _ = pretrain_backbone(tiny_config(seed=5))
    other, _ = pretrain_backbone(tiny_config(seed=6))
    assert same(state(first.backbone), state(again.backbone))
    assert not same(state(first.backbone), state(other.backbone))
    assert summary.steps_run == 2 and summary.history[-1]["loss_total"] > 0


def test_heads_score_every_view_and_the_loss_skips_masked_views() -> None:
    config = tiny_config(seed=0)
    model = MultiTaskHeads(load_backbone("dinov2-demo-random"), config.multiview)
    side, n_views = config.multiview.canvas_size, config.multiview.views_per_image
    outputs = model(torch.rand(3, 3, side, side))
    n_patches = model.patch_grid**2
    assert (
        outputs["views"].shape == (3, n_views, 6)
        and outputs["patches"].shape == (3, n_views, n_patches)
        and outputs["weather"].shape == (3, 4)
    )
    targets = {
        "views": torch.randint(0, 2, (3, n_views, 6)).float(),
        "mask": torch.ones(3, n_views),
        "patches": torch.randint(0, 2, (3, n_views, n_patches)).float(),
        "daytime": torch.tensor([0, 1, 2]),
        "weather": torch.tensor([0, 1, 3]),
        "environment": torch.tensor([0, 2, 3]),
        "hard_negative": torch.tensor([0, 4, 1]),
    }
    losses = multitask_loss(outputs, targets, config)
    expected = (
        losses["roadwork"]
        + config.kinds_weight * losses["kinds"]
        + config.patch_weight * losses["patches"]
        + config.scene_weight * sum(losses[task] for task in ("daytime", "weather", "environment", "hard_negative"))
    )
    assert torch.isclose(losses["total"], expected)
    flipped = {**targets, "views": targets["views"].clone()}
    flipped["views"][:, 4] = 1 - flipped["views"][:, 4]
    assert not torch.isclose(multitask_loss(outputs, flipped, config)["roadwork"], losses["roadwork"])
    masked_targets, masked_flipped = ({**t, "mask": t["mask"].clone()} for t in (targets, flipped))
    for t in (masked_targets, masked_flipped):
        t["mask"][:, 4] = 0
    assert torch.isclose(
        multitask_loss(outputs, masked_targets, config)["roadwork"],
        multitask_loss(outputs, masked_flipped, config)["roadwork"],
    )


def test_view_targets_follow_the_boxes_and_mirror_with_the_canvas() -> None:
    config = PretrainConfig(image_width=640, image_height=480, multiview=MultiViewConfig(view_size=112))
    views = config.multiview  # canvas 302, tiles at 0 / 95 / 190 px
    to_image = np.array([640 / views.canvas_size, 480 / views.canvas_size] * 2)
    inside_first_tile = tuple(
        (np.array([10.0, 10.0, 40.0, 40.0]) * to_image).tolist()
    )  # canvas px, only in tile (0, 0)
    across_tiles = tuple(
        (np.array([20.0, 250.0, 290.0, 290.0]) * to_image).tolist()
    )  # spans the 3 tiles of row 2, under half in each
    frame = DrawnFrame(
        b"", 1, (("cone", inside_first_tile), ("barrier", across_tiles)), "day", "clear", "urban", "none"
    )
    targets, mask, patches = view_targets(frame, config, patch_grid=8)
    kinds = {kind: 1 + ROADWORK_KINDS.index(kind) for kind in ("cone", "barrier")}
    assert targets[0, 0] == 1 and targets[0, kinds["cone"]] == 1 and targets[0, kinds["barrier"]] == 1
    assert targets[1, 0] == 1 and targets[1, kinds["cone"]] == 1 and targets[1, kinds["barrier"]] == 0
    assert targets[2:, 0].sum() == 0, "no other tile holds half of a box"
    assert not mask[7:].any(), "the tiles that cut the barrier are left out"
    assert mask[:7].all()
    first_tile = patches[1].reshape(8, 8)  # 14 px patches: the cone covers rows/columns 0-2 of tile (0, 0)
    assert first_tile[1, 1] == 1 and first_tile[0, 0] == 0, "a patch is positive when roadwork covers a quarter of it"
    assert first_tile[3:, 3:].sum() == 0 and patches[2].sum() == 0
    assert patches[0].reshape(8, 8)[0, 0] == 1, "the global view's 38 px patch holds the whole cone"
    mirrored, mirrored_mask, mirrored_patches = view_targets(frame, config, patch_grid=8, flip=True)
    assert mirrored[3, 0] == 1 and mirrored[1, 0] == 0 and mirrored[0, 0] == 1, "tile (0, 0) becomes tile (0, 2)"
    assert (mirrored_mask == mask).all(), "the masked row stays masked"
    assert (mirrored_patches[3].reshape(8, 8) == first_tile[:, ::-1]).all()
    negative = DrawnFrame(b"", 0, (), "day", "clear", "urban", "orange_car")
    negative_targets, negative_mask, negative_patches = view_targets(negative, config, patch_grid=8)
    assert negative_targets.sum() == 0 and negative_mask.all() and negative_patches.sum() == 0


def test_scene_stream_never_uses_evaluation_seeds() -> None:
    with pytest.raises(ValidationError):
        PretrainConfig(stream_seed_start=0)
    config = PretrainConfig(stream_seed_start=FIRST_STREAM_SEED, probe_seed=FIRST_STREAM_SEED + 10)
    assert config.chunk_seed(9) == FIRST_STREAM_SEED + 9
    with pytest.raises(ValueError, match="probe seed"):
        config.chunk_seed(10)
