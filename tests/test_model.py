import numpy as np
import pytest
import torch

from stage1_core.common.logit_map import LogitMap
from stage1_core.export.exporter import ExportConfig, export_onnx, image_to_canvas
from stage1_core.modeling.backbone import BackboneLoadError, load_backbone
from stage1_core.modeling.model import (
    ClassifierConfig,
    MultiViewConfig,
    RoadworkClassifier,
    aggregate_view_logits,
    choose_top_k,
    make_tiles,
    make_views,
    prepare_canvas,
)


def test_views_are_the_global_resize_and_the_overlapping_tiles() -> None:
    config = MultiViewConfig(view_size=28, overlap=0.15)
    canvas = torch.rand(2, 3, config.canvas_size, config.canvas_size)
    views = make_views(canvas, config)
    assert views.shape == (2, 10, 3, 28, 28)
    stride = config.tile_stride
    for row in range(3):
        for col in range(3):
            expected = canvas[:, :, row * stride : row * stride + 28, col * stride : col * stride + 28]
            assert torch.equal(views[:, 1 + row * 3 + col], expected)
    assert stride < 28, "tiles must overlap"
    assert torch.equal(make_tiles(canvas, config), views[:, 1:]), "the adaptive tiles graph cuts the same tiles"


def test_topk_mean_pools_the_highest_view_logits() -> None:
    logits = torch.tensor([[0.0, 5.0, -1.0, 3.0, 1.0]])
    assert aggregate_view_logits(logits, MultiViewConfig(top_k=2)).item() == pytest.approx(4.0)
    assert aggregate_view_logits(logits, MultiViewConfig(aggregation="mean")).item() == pytest.approx(1.6)
    assert aggregate_view_logits(logits, MultiViewConfig(aggregation="global_only")).item() == pytest.approx(0.0)


@pytest.mark.parametrize("backbone_name", ["dinov2-demo", "dinov3-demo"])
def test_classifier_forward_chunking_and_round_trip(backbone_name: str, tmp_path) -> None:
    multiview = MultiViewConfig(view_size=32 if backbone_name == "dinov3-demo" else 28, chunk_size=7)
    model = RoadworkClassifier(load_backbone(backbone_name), ClassifierConfig(multiview=multiview)).eval()
    canvas = torch.rand(3, 3, multiview.canvas_size, multiview.canvas_size)
    with torch.no_grad():
        logits = model(canvas)
        unchunked = RoadworkClassifier(
            model.backbone, ClassifierConfig(multiview=multiview.model_copy(update={"chunk_size": 1000}))
        )
        unchunked.head = model.head
        assert torch.allclose(unchunked.eval()(canvas), logits, atol=1e-5)
    assert logits.shape == (3,) and torch.isfinite(logits).all()
    model.save(tmp_path / "model")
    with torch.no_grad():
        assert torch.allclose(RoadworkClassifier.load(tmp_path / "model")(canvas), logits, atol=1e-6)


def test_unknown_backbone_names_what_is_supported(tmp_path) -> None:
    with pytest.raises(BackboneLoadError, match="dinov2-demo"):
        load_backbone("dinov2-huge-typo")
    with pytest.raises(BackboneLoadError, match="no config.json"):
        load_backbone(str(tmp_path))


def test_local_weights_directory_loads_the_same_model(tmp_path) -> None:
    backbone = load_backbone("dinov2-demo", seed=1)
    backbone.save_pretrained(tmp_path / "weights")
    loaded = load_backbone(str(tmp_path / "weights"))
    pixels = torch.rand(1, 3, 28, 28)
    with torch.no_grad():
        assert torch.allclose(
            backbone(pixel_values=pixels).pooler_output, loaded(pixel_values=pixels).pooler_output, atol=1e-6
        )


def test_attention_pools_features_with_weights_that_sum_to_one(tmp_path) -> None:
    multiview = MultiViewConfig(view_size=28, aggregation="attention", attention_dim=8)
    model = RoadworkClassifier(load_backbone("dinov2-demo"), ClassifierConfig(multiview=multiview)).eval()
    canvas = torch.rand(2, 3, multiview.canvas_size, multiview.canvas_size)
    with torch.no_grad():
        features = model.view_features(canvas)
        weights = model.attention(features)
        logits = model(canvas)
        # a linear head makes feature pooling equal to the attention-weighted mean of the view logits
        assert torch.allclose(logits, (weights * model.view_logits(canvas)).sum(dim=1), atol=1e-5)
        assert weights.shape == (2, 10) and torch.allclose(weights.sum(dim=1), torch.ones(2), atol=1e-6)
        assert not torch.allclose(logits, model.view_logits(canvas).mean(dim=1), atol=1e-4), (
            "attention weights are not uniform"
        )
        model.save(tmp_path / "model")
        assert torch.allclose(RoadworkClassifier.load(tmp_path / "model")(canvas), logits, atol=1e-6)
    with pytest.raises(ValueError, match="pools view features"):
        aggregate_view_logits(torch.zeros(1, 10), multiview)


def test_top_k_is_chosen_by_val_select_auroc() -> None:
    generator = np.random.default_rng(0)
    labels = np.repeat([0, 1], 200)
    view_logits = generator.normal(size=(400, 10))
    view_logits[labels == 1, 1:3] += 2.0  # the evidence sits in two tiles of each positive image
    selection = choose_top_k(view_logits, labels, [1, 2, 5, 10, 40])
    assert selection.top_k == 2 and set(selection.auroc_by_k) == {1, 2, 5, 10}
    assert selection.auroc_by_k[2] > selection.auroc_by_k[10] > 0.5
    with pytest.raises(ValueError, match="both classes"):
        choose_top_k(view_logits, np.zeros(400), [1, 2])
    with pytest.raises(ValueError, match="none lies within"):
        choose_top_k(view_logits, labels, [0, 11])


def test_bad_images_become_valid_canvases() -> None:
    config = MultiViewConfig(view_size=28)
    side = config.canvas_size
    images = [
        torch.randint(0, 256, (3, 10, 12), dtype=torch.uint8),  # smaller than a tile
        torch.randint(0, 256, (3, 300, 4000), dtype=torch.uint8),  # extreme aspect ratio
        torch.randint(0, 256, (1, 50, 70), dtype=torch.uint8),  # grayscale with a channel axis
        torch.rand(40, 30),  # grayscale float, no channel axis
    ]
    canvas = prepare_canvas(images, side)
    assert canvas.shape == (4, 3, side, side) and canvas.min() >= 0 and canvas.max() <= 1
    assert torch.equal(canvas[2, 0], canvas[2, 1]) and torch.equal(canvas[3, 1], canvas[3, 2]), "grey repeated to RGB"
    uint8_batch = torch.randint(0, 256, (2, 3, 90, 40), dtype=torch.uint8)
    assert torch.allclose(prepare_canvas(uint8_batch, side), image_to_canvas(uint8_batch, side), atol=1e-6), (
        "same pixels as the exported graph"
    )
    model = RoadworkClassifier(load_backbone("dinov2-demo"), ClassifierConfig(multiview=config)).eval()
    with torch.no_grad():
        logits = model.score_images(images)
        assert logits.shape == (4,) and torch.isfinite(logits).all()
        assert torch.allclose(logits[:1], model.score_images(images[:1]), atol=1e-5), (
            "a mixed batch scores each image as alone"
        )
    with pytest.raises(ValueError, match="image 1: shape"):
        prepare_canvas([images[0], torch.zeros(4, 20, 20, dtype=torch.uint8)], side)
    with pytest.raises(ValueError, match="image 0: dtype"):
        prepare_canvas([torch.full((3, 8, 8), 3.0)], side)
    with pytest.raises(ValueError, match="prepare_canvas"):
        make_views(torch.rand(1, 3, side + 1, side), config)


@pytest.mark.slow
def test_attention_classifier_exports_to_onnx_with_parity() -> None:
    multiview = MultiViewConfig(view_size=28, aggregation="attention", attention_dim=8)
    model = RoadworkClassifier(load_backbone("dinov2-demo", seed=1), ClassifierConfig(multiview=multiview)).eval()
    generator = torch.Generator().manual_seed(0)
    images = [
        torch.randint(0, 256, (3, h, w), dtype=torch.uint8, generator=generator) for h, w in [(60, 80), (300, 40)]
    ]
    exported = export_onnx(
        model,
        calibration=LogitMap(a=1.0, b=1.0, c=0.0),
        decision_threshold=0.5,
        images=images,
        config=ExportConfig(parity_images=2),
    )
    assert exported.metadata.parity[0].passed and exported.metadata.parity[0].max_abs_diff <= 1e-4


def test_unreadable_weights_directory_says_how_to_pass_local_weights(tmp_path) -> None:
    directory = tmp_path / "weights"
    load_backbone("dinov2-demo").save_pretrained(directory)
    (directory / "model.safetensors").write_bytes(b"not a safetensors file")
    with pytest.raises(
        BackboneLoadError, match="cannot load backbone weights.*local directory written by save_pretrained"
    ):
        load_backbone(str(directory))
