"""LoRA and DoRA (peft) and DoRAN (this project's module): what trains, the DoRAN formula, exact merging, save/load
and ONNX."""

from __future__ import annotations

import pytest
import torch
from torch.nn import functional as F

from stage1_core.common.logit_map import LogitMap
from stage1_core.export.exporter import ExportConfig, export_onnx
from stage1_core.modeling.adapters import (
    AdapterConfig,
    DoranLinear,
    adapter_parameters,
    add_adapters,
    has_adapters,
    merge_adapters,
)
from stage1_core.modeling.backbone import load_backbone
from stage1_core.modeling.model import ClassifierConfig, MultiViewConfig, RoadworkClassifier
from stage1_core.modeling.training import set_trainable_blocks

RANK, HIDDEN, WIDTH, BLOCKS = 4, 6, 192, 4  # the dinov2-demo config: 4 blocks of width 192


def _classifier(method: str, trainable_blocks: int, seed: int = 0) -> RoadworkClassifier:
    torch.manual_seed(seed)
    model = RoadworkClassifier(
        load_backbone("dinov2-demo", seed=seed), ClassifierConfig(multiview=MultiViewConfig(view_size=28))
    )
    set_trainable_blocks(model, trainable_blocks)
    model.backbone = add_adapters(
        model.backbone, AdapterConfig(method=method, rank=RANK, doran_hidden=HIDDEN), trainable_blocks
    )
    return model


def _perturb(model: RoadworkClassifier) -> None:
    """Move every adapter parameter away from its identity initialisation, as training would."""
    generator = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for parameter in adapter_parameters(model.backbone):
            parameter.add_(0.05 * torch.randn(parameter.shape, generator=generator))


@pytest.mark.parametrize("method", ["lora", "dora", "doran"])
def test_only_adapters_head_and_final_norm_train_and_counts_match_the_definition(method: str) -> None:
    model = _classifier(method, trainable_blocks=0)
    trainable = {id(p) for p in model.parameters() if p.requires_grad}
    adapters = adapter_parameters(model.backbone)
    head = list(model.head.parameters())
    final_norm = [p for name, p in model.backbone.named_parameters() if name.split(".")[-2] == "layernorm"]
    assert final_norm and trainable == {id(p) for p in adapters + head + final_norm}
    per_projection = {
        "lora": 2 * RANK * WIDTH,  # A and B
        "dora": 2 * RANK * WIDTH + WIDTH,  # and the magnitude vector
        "doran": 2 * RANK * HIDDEN + 2 * HIDDEN * WIDTH + WIDTH + 1,
    }[method]
    shared_per_block = 2 * (HIDDEN * HIDDEN + HIDDEN) if method == "doran" else 0
    assert sum(p.numel() for p in adapters) == BLOCKS * (2 * per_projection + shared_per_block)


def test_adapters_skip_the_fully_trained_blocks_and_keep_their_trainability() -> None:
    model = _classifier("doran", trainable_blocks=1)
    doran = [name for name, module in model.backbone.named_modules() if isinstance(module, DoranLinear)]
    assert doran == [
        f"encoder.layer.{block}.attention.{leaf}" for block in range(BLOCKS - 1) for leaf in ("q_proj", "v_proj")
    ]
    last_block = model.backbone.encoder.layer[-1]
    assert all(p.requires_grad for p in last_block.parameters())
    assert not any(p.requires_grad for p in model.backbone.encoder.layer[0].mlp.parameters())
    with pytest.raises(ValueError, match="trainable_blocks between 0 and 3"):
        add_adapters(load_backbone("dinov2-demo"), AdapterConfig(method="dora"), BLOCKS)


def test_doran_weight_follows_the_definition_and_shares_the_first_layers_of_q_and_v() -> None:
    model = _classifier("doran", trainable_blocks=0)
    attention = model.backbone.encoder.layer[0].attention
    query, value = attention.q_proj, attention.v_proj
    assert torch.equal(query.merged_weight(), query.base.weight), "before training the layer is the pre-trained one"
    assert query.generator is value.generator and query.generator.shared_a is value.generator.shared_a
    _perturb(model)
    a, b = query.generator("q_proj")
    direction = query.base.weight + query.scaling * b @ a
    tau = F.softplus(query.tau_raw)
    expected = query.magnitude.unsqueeze(1) * direction / (direction.norm(dim=1, keepdim=True) + tau)
    assert tau.item() > 0 and torch.allclose(query.merged_weight(), expected, atol=1e-6)
    x = torch.randn(5, WIDTH)
    query(x).sum().backward()
    assert query.tau_raw.grad is not None and query.tau_raw.grad.abs().item() > 0
    assert query.generator.shared_a.weight.grad.abs().sum().item() > 0 and query.base.weight.grad is None


@pytest.mark.slow
@pytest.mark.parametrize("method", ["lora", "dora", "doran"])
def test_merge_is_exact_and_the_merged_model_saves_loads_and_exports(method: str, tmp_path) -> None:
    model = _classifier(method, trainable_blocks=1).eval()
    _perturb(model)
    canvas = torch.rand(3, 3, model.config.multiview.canvas_size, model.config.multiview.canvas_size)
    with torch.no_grad():
        adapted = model(canvas)
        with pytest.raises(ValueError, match="merge"):
            model.save(tmp_path / "unmerged")
        model.backbone = merge_adapters(model.backbone)
        assert not has_adapters(model.backbone) and type(model.backbone).__name__ == "Dinov2Model"
        merged = model(canvas)
        assert torch.allclose(adapted, merged, atol=1e-5)
        assert (
            adapted - RoadworkClassifier(load_backbone("dinov2-demo"), model.config).eval()(canvas)
        ).abs().max() > 1e-3, "the adapters changed the model"
        model.save(tmp_path / "model")
        assert torch.allclose(RoadworkClassifier.load(tmp_path / "model")(canvas), merged, atol=1e-6)
    generator = torch.Generator().manual_seed(0)
    images = [torch.randint(0, 256, (3, h, w), dtype=torch.uint8, generator=generator) for h, w in [(60, 80), (90, 40)]]
    exported = export_onnx(
        model,
        calibration=LogitMap(a=1.0, b=1.0, c=0.0),
        decision_threshold=0.5,
        images=images,
        config=ExportConfig(parity_images=2),
    )
    assert exported.metadata.parity[0].passed and exported.metadata.parity[0].max_abs_diff <= 1e-4
