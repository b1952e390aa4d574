"""Training: adapters and attention aggregator end to end, K chosen on val_select, EMA weights, hardware settings,
global-view distillation (off in the main recipe, and the ablation row with it)."""

from __future__ import annotations

import lightning as L
import numpy as np
import pandas as pd
import pytest
import torch
from lightning.pytorch.callbacks import Callback, ModelCheckpoint
from torch.utils.data import DataLoader, TensorDataset

from stage1_core.data.images import ManifestImageDataset, canvas_transform
from stage1_core.data.splits import Consumer, LeakageError, SplitConfig, assign_splits, take_split
from stage1_core.evaluation.ablation import (
    AblationTable,
    distillation_ablation,
    distillation_recipe,
    score_inference_modes,
)
from stage1_core.evaluation.calibration import CalibrationConfig, fit_calibration_policy
from stage1_core.evaluation.report import EvaluationConfig
from stage1_core.modeling.adapters import AdapterConfig, has_adapters
from stage1_core.modeling.backbone import load_backbone
from stage1_core.modeling.inference import predict_global_and_full_logits
from stage1_core.modeling.model import ClassifierConfig, MultiViewConfig, RoadworkClassifier, choose_top_k
from stage1_core.modeling.training import (
    ClassifierModule,
    DistillationConfig,
    EmaConfig,
    TrainConfig,
    distillation_weight,
    ema_callback,
    global_view_distillation,
    train_classifier,
    trainer_hardware,
)
from stage1_core.serving.adaptive import AdaptiveConfig

FRACTIONS = {"train": 0.5, "val_select": 0.3, "val_calib": 0.1, "val_test": 0.1}


@pytest.fixture(scope="module")
def splits(demo_manifest: pd.DataFrame) -> tuple[pd.DataFrame, pd.DataFrame]:
    manifest = assign_splits(demo_manifest, SplitConfig(fractions=FRACTIONS, seed=0))
    return take_split(manifest, "train", Consumer.TRAINING), take_split(
        manifest, "val_select", Consumer.MODEL_SELECTION
    )


def _model(aggregation: str = "topk_mean") -> RoadworkClassifier:
    multiview = MultiViewConfig(view_size=28, aggregation=aggregation, attention_dim=8)
    return RoadworkClassifier(load_backbone("dinov2-demo", seed=0), ClassifierConfig(multiview=multiview))


def _config(**update: object) -> TrainConfig:
    return TrainConfig(**{"max_epochs": 1, "batch_size": 16, "trainable_blocks": 0, **update})


@pytest.mark.slow
def test_doran_with_attention_trains_multi_view_and_returns_a_merged_model(splits, tmp_path) -> None:
    train, val_select = splits
    model = _model("attention")
    initial_attention = {name: p.detach().clone() for name, p in model.attention.named_parameters()}
    config = _config(
        train_views="multi",
        adapter=AdapterConfig(method="doran", rank=2, doran_hidden=4),
        ema=EmaConfig(enabled=True, decay=0.9),
    )
    trained, summary = train_classifier(model, train, val_select, config)
    assert not has_adapters(trained.backbone) and type(trained.backbone).__name__ == "Dinov2Model"
    assert summary.adapter == "doran" and summary.adapter_params > 0 and summary.ema and summary.top_k is None
    head_and_attention = sum(p.numel() for p in trained.head.parameters()) + sum(
        p.numel() for p in trained.attention.parameters()
    )
    final_norm = sum(p.numel() for name, p in trained.backbone.named_parameters() if name.startswith("layernorm."))
    assert summary.trainable_params == summary.adapter_params + head_and_attention + final_norm
    assert any(not torch.equal(p, initial_attention[name]) for name, p in trained.attention.named_parameters()), (
        "attention learned"
    )
    canvas = torch.rand(2, 3, trained.config.multiview.canvas_size, trained.config.multiview.canvas_size)
    trained.save(tmp_path / "model")
    with torch.no_grad():
        assert torch.allclose(RoadworkClassifier.load(tmp_path / "model")(canvas), trained(canvas), atol=1e-6)


@pytest.mark.slow
def test_dora_training_chooses_k_on_val_select(splits) -> None:
    train, val_select = splits
    trained, summary = train_classifier(
        _model(), train, val_select, _config(adapter=AdapterConfig(method="dora", rank=2), top_k_candidates=[1, 3, 10])
    )
    assert not has_adapters(trained.backbone) and summary.adapter_params > 0
    assert summary.top_k is not None and trained.config.multiview.top_k == summary.top_k.top_k
    assert summary.sampling.rows == len(train) and summary.sampling.label_share == pytest.approx(
        {"0": 0.5, "1": 0.5}
    ), "the class-balanced draw"
    assert summary.train_steps == -(-len(train) // 16) and summary.seconds_per_train_step > 0, "each step timed"
    dataset = ManifestImageDataset(val_select, canvas_transform(trained.config.multiview.canvas_size, None))
    canvases, labels = (torch.stack(values) for values in zip(*(dataset[i] for i in range(len(dataset)))))
    with torch.no_grad():
        view_logits = trained.view_logits(canvases).numpy()
    assert choose_top_k(view_logits, labels.numpy(), [1, 3, 10]) == summary.top_k


def test_bad_training_setups_fail_before_training(splits) -> None:
    train, val_select = splits
    with pytest.raises(ValueError, match="train_views to 'multi'"):
        train_classifier(_model("attention"), train, val_select, _config(train_views="global"))
    with pytest.raises(LeakageError, match=r"val_select holds rows of splits \['train'\]"):
        train_classifier(_model(), train, train, _config())


def test_the_aggregate_teaches_the_global_view_and_never_the_reverse() -> None:
    global_logits = torch.tensor([0.5, -1.0, 2.0], requires_grad=True)
    aggregate_logits = torch.tensor([2.0, -3.0, 2.0], requires_grad=True)
    global_view_distillation(global_logits, aggregate_logits, torch.tensor([1.0, 0.0, 1.0])).backward()
    assert aggregate_logits.grad is None, "the teacher is detached: the aggregate is not pulled towards the global view"
    expected = (torch.sigmoid(global_logits) - torch.sigmoid(aggregate_logits)).detach() / 3
    assert torch.allclose(global_logits.grad, expected), "each global logit moves towards its aggregate, 0 when equal"
    multiview = _model().config.multiview
    off, on = DistillationConfig(), DistillationConfig(weight=1.0)
    assert distillation_weight(multiview, TrainConfig(train_views="multi")) == off.weight == 0.0, "off by default"
    assert distillation_weight(multiview, TrainConfig(train_views="multi", distillation=on)) == 1.0
    assert distillation_weight(multiview, TrainConfig(train_views="global", distillation=on)) == 0.0, (
        "no other views to learn from"
    )
    assert distillation_ablation(TrainConfig(train_views="global"), multiview, on) is None, "would train the same model"
    assert distillation_ablation(TrainConfig(train_views="multi"), multiview, off) is None
    assert distillation_ablation(TrainConfig(train_views="multi"), multiview, on).distillation == on
    assert distillation_ablation(TrainConfig(train_views="multi", distillation=on), multiview, off).distillation == off
    assert distillation_recipe("ExPLoRA + linear head", on) == "ExPLoRA + linear head, with distillation (weight 1)"
    assert distillation_recipe("main", off) == "main, no distillation"
    by_label = DistillationConfig(weight=1.0, teacher="label")
    assert distillation_recipe("main", by_label) == "main, global view taught by the label (weight 1)"


@pytest.mark.slow
def test_distilled_global_view_follows_the_aggregate_and_the_ablation_table_shows_both_recipes(splits) -> None:
    train, val_select = splits
    gaps, rows = {}, []
    for weight in (0.0, 5.0):
        L.seed_everything(0)
        config = _config(
            max_epochs=2,
            batch_size=8,
            head_lr=0.01,
            train_views="multi",
            top_k_candidates=[],
            distillation=DistillationConfig(weight=weight),
        )
        trained, summary = train_classifier(_model(), train, val_select, config)
        assert summary.distillation_weight == weight
        global_logits, full_logits = predict_global_and_full_logits(trained, val_select)
        gaps[weight] = float(np.abs(global_logits - full_logits).mean())
        policy = fit_calibration_policy(full_logits, val_select["label"].to_numpy(), CalibrationConfig())
        name = distillation_recipe("main", config.distillation) if weight else "main"
        rows += score_inference_modes(
            name, trained, policy, val_select, val_select, EvaluationConfig(n_bootstrap=20), AdaptiveConfig()
        )
    assert gaps[5.0] < 0.7 * gaps[0.0], gaps  # measured: 0.31 against 0.59
    table = AblationTable(n_images=len(val_select)).with_rows(rows)
    assert "main, with distillation (weight 5)" in table.html() and table.html().count("<tr>") == 7
    assert {
        "ablation_main_adaptive_views_per_image",
        "ablation_main_with_distillation_weight_5_adaptive_views_per_image",
    } <= set(table.flat_metrics())


class _RecordHead(Callback):
    """The raw (not averaged) head weights after every optimizer step."""

    def __init__(self) -> None:
        self.steps: list[torch.Tensor] = []

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:  # noqa: ANN001 - Lightning's hook
        self.steps.append(pl_module.model.head[1].weight.detach().clone())


def test_ema_weights_are_validated_checkpointed_and_kept(tmp_path) -> None:
    torch.manual_seed(0)
    model = _model()
    canvas = model.config.multiview.canvas_size
    data = TensorDataset(torch.rand(24, 3, canvas, canvas), torch.randint(0, 2, (24,)).float())
    config = _config(head_lr=0.05, batch_size=4, ema=EmaConfig(enabled=True, decay=0.8))
    module = ClassifierModule(model, config)
    recorder = _RecordHead()
    checkpoint = ModelCheckpoint(dirpath=tmp_path, monitor="val_select/mcc", mode="max")
    trainer = L.Trainer(
        max_epochs=1,
        callbacks=[checkpoint, recorder, ema_callback(config.ema)],
        logger=False,
        enable_progress_bar=False,
        num_sanity_val_steps=0,
        **trainer_hardware(config),
    )
    trainer.fit(module, DataLoader(data, batch_size=4), DataLoader(data, batch_size=8))
    expected = recorder.steps[0]
    for n, raw in enumerate(recorder.steps[1:], start=1):
        decay = min(0.8, (1 + n) / (10 + n))
        expected = decay * expected + (1 - decay) * raw
    assert len(recorder.steps) == 6 and not torch.allclose(expected, recorder.steps[-1], atol=1e-4), (
        "EMA differs from the last weights"
    )
    assert torch.allclose(model.head[1].weight, expected, atol=1e-6)
    saved = torch.load(checkpoint.best_model_path, map_location="cpu", weights_only=False)["state_dict"]
    assert torch.allclose(saved["model.head.1.weight"], expected, atol=1e-6)


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the CPU settings")
def test_devices_apply_on_the_cpu_spawned_and_one_process_by_default() -> None:
    settings = trainer_hardware(TrainConfig(devices=4, strategy="ddp", compile=True))
    assert settings == {
        "accelerator": "auto",
        "devices": 4,
        "strategy": "ddp_spawn",  # never Lightning's launcher that re-runs sys.argv (the whole pipeline command)
        "precision": "32-true",
        "deterministic": True,
    }
    assert trainer_hardware(TrainConfig()) | {"strategy": "auto", "devices": 1} == trainer_hardware(TrainConfig())


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device (bf16-mixed, SDPA, torch.compile)")
def test_gpu_training_uses_bf16_sdpa_and_compile(splits) -> None:
    train, val_select = splits
    config = _config(train_views="multi", compile=True, adapter=AdapterConfig(method="dora", rank=2))
    assert trainer_hardware(config)["precision"] == ("bf16-mixed" if torch.cuda.is_bf16_supported() else "32-true")
    model = _model().cuda()
    assert model.backbone.config._attn_implementation == "sdpa"
    trained, summary = train_classifier(model, train, val_select, config)
    assert np.isfinite(summary.best_val_select_mcc) and not has_adapters(trained.backbone)
    assert next(trained.parameters()).device.type == "cuda"
