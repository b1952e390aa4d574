import json

import pytest
import torch
from pydantic import ValidationError

from stage1_core.backbone import load_backbone
from stage1_core.model import MultiViewConfig
from stage1_core.pretrain_demo import FIRST_STREAM_SEED, MultiTaskHeads, PretrainConfig, main, multitask_loss, pretrain_backbone

TINY_ARGS = ["--steps", "3", "--batch-size", "2", "--chunk-images", "4", "--image-size", "128", "96", "--view-size", "28",
             "--warmup-steps", "1", "--log-every", "1", "--num-workers", "0", "--chunk-repeats", "2", "--global-only-fraction", "0.5"]


def tiny_config(seed: int) -> PretrainConfig:
    return PretrainConfig(seed=seed, steps=2, batch_size=2, chunk_images=4, image_width=128, image_height=96, warmup_steps=1,
                          multiview=MultiViewConfig(view_size=28), probe_images=0, num_workers=0, log_every=1)


def state(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {name: tensor.detach().clone() for name, tensor in model.state_dict().items()}


def same(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[name], b[name]) for name in a)


def test_command_writes_a_loadable_backbone_summary_and_card(tmp_path) -> None:
    out = tmp_path / "demo-weights"
    main([str(out), *TINY_ARGS, "--probe-images", "24"])
    loaded = load_backbone(str(out))
    assert type(loaded).__name__ == "Dinov2Model" and loaded.config.hidden_size == 192
    assert not same(state(loaded), state(load_backbone("dinov2-demo", seed=0))), "training must change the initial weights"
    assert not any("roadwork" in name or "scene" in name for name in loaded.state_dict()), "heads are not part of the backbone"
    summary = json.loads((out / "pretrain_summary.json").read_text())
    assert summary["steps_run"] == 3 and summary["scenes_seen"] == 3 and len(summary["history"]) == 3  # each scene twice
    assert summary["chunk_seeds"][0] >= FIRST_STREAM_SEED
    assert all(-1.0 <= summary["probe"][key] <= 1.0 for key in ("linear_probe_mcc", "random_init_linear_probe_mcc", "head_mcc"))
    assert summary["probe"]["probe_train_images"] + summary["probe"]["probe_test_images"] == 24
    card = (out / "MODEL_CARD.md").read_text()
    assert "python -m stage1_core.pretrain_demo" in card and "--steps 3" in card and "3 steps" in card
    assert (out / "pretraining_curves.png").stat().st_size > 0


def test_pretraining_is_deterministic_for_a_seed() -> None:
    first, summary = pretrain_backbone(tiny_config(seed=5))
    again, _ = pretrain_backbone(tiny_config(seed=5))
    other, _ = pretrain_backbone(tiny_config(seed=6))
    assert same(state(first.backbone), state(again.backbone))
    assert not same(state(first.backbone), state(other.backbone))
    assert summary.steps_run == 2 and summary.history[-1]["loss_total"] > 0


def test_multitask_heads_pool_views_and_losses_cover_every_task() -> None:
    config = tiny_config(seed=0)
    model = MultiTaskHeads(load_backbone("dinov2-demo"), config.multiview)
    side = config.multiview.canvas_size
    outputs = model(torch.rand(3, 3, side, side))
    assert outputs["roadwork"].shape == (3,) and outputs["kinds"].shape == (3, 5) and outputs["weather"].shape == (3, 4)
    per_view = model.roadwork(model.features(torch.rand(1, 3, side, side)))
    assert per_view.shape == (1, config.multiview.views_per_image, 6)
    targets = {"roadwork": torch.tensor([1.0, 0.0, 1.0]), "kinds": torch.zeros(3, 5), "daytime": torch.tensor([0, 1, 2]),
               "weather": torch.tensor([0, 1, 3]), "environment": torch.tensor([0, 2, 3]), "hard_negative": torch.tensor([0, 4, 1])}
    losses = multitask_loss(outputs, targets, config)
    expected = (losses["roadwork"] + losses["roadwork_global"] + config.kinds_weight * losses["kinds"]
                + config.scene_weight * sum(losses[task] for task in ("daytime", "weather", "environment", "hard_negative")))
    assert torch.isclose(losses["total"], expected)


def test_scene_stream_never_uses_evaluation_seeds() -> None:
    with pytest.raises(ValidationError):
        PretrainConfig(stream_seed_start=0)
    config = PretrainConfig(stream_seed_start=FIRST_STREAM_SEED, probe_seed=FIRST_STREAM_SEED + 10)
    assert config.chunk_seed(9) == FIRST_STREAM_SEED + 9
    with pytest.raises(ValueError, match="probe seed"):
        config.chunk_seed(10)
