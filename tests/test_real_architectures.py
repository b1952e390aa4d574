"""The released DINOv2 / DINOv3 architectures at their real size, at 224 px per view, offline (random init).

ViT-S of each family runs here: loading through the weights loader, the multi-view forward, a training
step with adapters, an ExPLoRA step and the ONNX export. ViT-B and ViT-L are measured by
``python -m benchmarks.architectures``.
"""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import load_file
from torch.nn import functional as F
from transformers import AutoModel

from pipelines import random_backbones
from stage1_core.common.cli import EXIT_OK, EXIT_USAGE
from stage1_core.common.logit_map import LogitMap
from stage1_core.export.exporter import ExportConfig, TensorRTConfig, export_onnx
from stage1_core.modeling.adapters import AdapterConfig, adapter_parameters, add_adapters
from stage1_core.modeling.backbone import (
    PUBLISHED_ARCHITECTURES,
    RANDOM_SUFFIX,
    load_backbone,
    published_config,
    save_random_backbone,
)
from stage1_core.modeling.explora import ExploraConfig, run_explora
from stage1_core.modeling.model import ClassifierConfig, MultiViewConfig, RoadworkClassifier
from stage1_core.modeling.training import set_trainable_blocks

VIEW = 224
SMALL = ["dinov2-vits14", "dinov3-vits16"]  # ViT-S of each family
# Parameter counts the model cards state (DINOv2: arXiv 2304.07193 Table 16; DINOv3: the model card), in millions.
MODEL_CARD_PARAMS = {"vits": 21.0, "vitb": 86.0, "vitl": 300.0}


@pytest.fixture(scope="module", params=SMALL)
def small_backbone(request: pytest.FixtureRequest) -> tuple[str, torch.nn.Module]:
    return request.param, load_backbone(f"{request.param}{RANDOM_SUFFIX}", seed=0)


def _fingerprint(tensor: torch.Tensor) -> tuple:
    return tuple(tensor.shape), round(float(tensor.double().sum()), 6), round(float(tensor.double().abs().sum()), 6)


def _classifier(backbone: torch.nn.Module, **multiview: object) -> RoadworkClassifier:
    return RoadworkClassifier(backbone, ClassifierConfig(multiview=MultiViewConfig(view_size=VIEW, **multiview)))


@pytest.mark.parametrize("name", list(PUBLISHED_ARCHITECTURES))
def test_written_out_configs_are_the_released_architectures(name: str) -> None:
    config = published_config(name)
    with torch.device("meta"):  # sizes without allocating ViT-L's 1.2 GB
        params = AutoModel.from_config(config).num_parameters() / 1e6
    dinov3 = name.startswith("dinov3")
    assert config.patch_size == (16 if dinov3 else 14)
    assert config.hidden_size == 64 * config.num_attention_heads, "every released ViT has 64-dim heads"
    assert getattr(config, "num_register_tokens", 0) == (4 if dinov3 or name.endswith("-reg") else 0)
    assert (getattr(config, "rope_theta", None) == 100.0) == dinov3, "DINOv3 uses RoPE, DINOv2 position embeddings"
    size = name.split("-")[1][:4]
    assert abs(params / MODEL_CARD_PARAMS[size] - 1) < 0.06, f"{name}: {params:.1f}M parameters"


@pytest.mark.parametrize("name", ["dinov2-vits14", "dinov2-vits14-reg", "dinov3-vits16"])
def test_random_weights_directory_loads_like_released_weights(name: str, tmp_path) -> None:
    directory = save_random_backbone(name, tmp_path / name, seed=1)
    loaded = load_backbone(str(directory))  # the path a copy of the released weights takes
    published = PUBLISHED_ARCHITECTURES[name][1]
    assert loaded.config.model_type == published["model_type"]
    assert {key: getattr(loaded.config, key) for key in published} == published, (
        "config.json holds the published values"
    )
    # transformers 5 renames some weights on load (query -> q_proj): compare the tensors, not their names
    assert sorted(map(_fingerprint, load_file(str(directory / "model.safetensors")).values())) == sorted(
        map(_fingerprint, loaded.state_dict().values())
    ), "the loaded weights are the written ones"
    with torch.no_grad():
        features = loaded(pixel_values=torch.rand(1, 3, VIEW, VIEW)).pooler_output
    assert features.shape == (1, published["hidden_size"]) and torch.isfinite(features).all()


def test_random_backbones_command_writes_directories_and_refuses_unknown_names(tmp_path, capsys) -> None:
    assert random_backbones.main([str(tmp_path), "--names", "dinov3-vits16"]) == EXIT_OK
    assert (tmp_path / "dinov3-vits16" / "config.json").is_file()
    assert "facebook/dinov3-vits16-pretrain-lvd1689m" in capsys.readouterr().out
    assert random_backbones.main([str(tmp_path), "--names", "dinov2-vitx14"]) == EXIT_USAGE


def test_multiview_forward_at_224(small_backbone) -> None:
    name, backbone = small_backbone
    model = _classifier(backbone).eval()
    canvas = torch.rand(1, 3, model.config.multiview.canvas_size, model.config.multiview.canvas_size)
    with torch.no_grad():
        features = model.view_features(canvas)
        logits = model.pool(features)
    assert features.shape == (1, 10, backbone.config.hidden_size) and torch.isfinite(features).all(), name
    assert logits.shape == (1,) and torch.isfinite(logits).all()
    assert not torch.allclose(features[0, 0], features[0, 1]), "views differ, so their features do"


@pytest.mark.slow
def test_training_step_with_adapters_at_224(small_backbone) -> None:
    """One optimisation step of DoRA on Q and V of every block (head trained too) on 224 px global views."""
    name, backbone = small_backbone
    model = _classifier(
        load_backbone(f"{name}{RANDOM_SUFFIX}", seed=0), aggregation="global_only"
    )  # a fresh copy: adapters change the module
    set_trainable_blocks(model, 0)
    model.backbone = add_adapters(model.backbone, AdapterConfig(method="dora", rank=4), 0)
    adapters = adapter_parameters(model.backbone)
    frozen = {name: p.detach().clone() for name, p in model.backbone.named_parameters() if not p.requires_grad}
    before = [p.detach().clone() for p in adapters]
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-3)
    model.train()
    canvas = torch.rand(2, 3, model.config.multiview.canvas_size, model.config.multiview.canvas_size)
    loss = F.binary_cross_entropy_with_logits(model(canvas), torch.tensor([0.0, 1.0]))
    loss.backward()
    optimizer.step()
    assert torch.isfinite(loss) and adapters
    assert any(not torch.equal(p, b) for p, b in zip(adapters, before, strict=True)), "the adapters learned"
    assert all(torch.equal(p, frozen[n]) for n, p in model.backbone.named_parameters() if n in frozen)


@pytest.mark.slow
def test_explora_step_at_224(small_backbone) -> None:
    """ExPLoRA at the published crop sizes (224 / 96 px), one step, a small head (the budget is the caller's)."""
    name, backbone = small_backbone
    config = ExploraConfig(
        max_steps=1,
        warmup_fraction=0.0,  # a learning rate above 0 in the one step
        batch_size=2,
        n_local_crops=2,
        head_hidden_dim=256,
        head_bottleneck_dim=64,
        head_out_dim=512,
    )
    images = [torch.rand(3, 300, 400) for _ in range(2)]
    adapted, summary = run_explora(backbone, images, config)
    patch = backbone.config.patch_size
    assert summary.global_crop_size == 224 and summary.local_crop_size == -(-96 // patch) * patch
    assert len(summary.loss_curve) == 1 and all(torch.isfinite(torch.tensor(s.total)) for s in summary.loss_curve)
    assert type(adapted) is type(backbone) and summary.lora_target_modules, name
    changed = [
        n for (n, p), q in zip(adapted.named_parameters(), backbone.parameters(), strict=True) if not torch.equal(p, q)
    ]
    assert changed, "the merged backbone differs from the one it started from"


@pytest.mark.slow
def test_onnx_export_at_224_keeps_parity(small_backbone) -> None:
    name, backbone = small_backbone
    model = _classifier(backbone).eval()
    generator = torch.Generator().manual_seed(0)
    images = [torch.randint(0, 256, (3, h, w), dtype=torch.uint8, generator=generator) for h, w in [(720, 1280)]]
    exported = export_onnx(
        model, LogitMap.from_temperature(1.0), 0.5, images, ExportConfig(tensorrt=TensorRTConfig(enabled=False))
    )
    parity = exported.metadata.parity[0]
    assert parity.passed and parity.max_abs_diff <= 1e-4, (name, parity)
    assert exported.metadata.canvas_size == model.config.multiview.canvas_size == 604


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device (bf16, SDPA)")
def test_bf16_training_step_on_cuda_at_224(small_backbone) -> None:
    """ViT-S of each family on the GPU: a bf16 multi-view step with LoRA on every block, as configs/gpu.yaml trains."""
    name, _ = small_backbone
    model = _classifier(load_backbone(f"{name}{RANDOM_SUFFIX}", seed=0)).cuda()
    set_trainable_blocks(model, 0)
    model.backbone = add_adapters(model.backbone, AdapterConfig(method="lora", rank=8), 0).cuda()
    side = model.config.multiview.canvas_size
    canvas = torch.rand(4, 3, side, side, device="cuda")
    with torch.autocast("cuda", dtype=torch.bfloat16):
        logits = model(canvas)
        loss = F.binary_cross_entropy_with_logits(logits.float(), torch.tensor([0.0, 1.0, 0.0, 1.0], device="cuda"))
    loss.backward()
    assert torch.isfinite(loss) and all(
        p.grad is not None and torch.isfinite(p.grad).all() for p in adapter_parameters(model.backbone)
    )
