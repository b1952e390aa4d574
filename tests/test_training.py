"""Training: adapters and attention aggregator end to end, K chosen on val_select, EMA weights, hardware settings."""

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
from stage1_core.modeling.adapters import AdapterConfig, has_adapters
from stage1_core.modeling.backbone import load_backbone
from stage1_core.modeling.model import ClassifierConfig, MultiViewConfig, RoadworkClassifier, choose_top_k
from stage1_core.modeling.training import (
    ClassifierModule,
    EmaConfig,
    TrainConfig,
    ema_callback,
    train_classifier,
    trainer_hardware,
)

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
    module = ClassifierModule(model, config, steps_per_epoch=6)
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


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the CPU fallback")
def test_gpu_options_do_not_apply_without_cuda() -> None:
    settings = trainer_hardware(TrainConfig(devices=4, strategy="ddp", compile=True))
    assert settings == {
        "accelerator": "auto",
        "devices": 1,
        "strategy": "auto",
        "precision": "32-true",
        "deterministic": True,
    }


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
