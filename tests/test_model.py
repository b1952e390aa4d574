import pytest
import torch

from stage1_core.backbone import BackboneLoadError, load_backbone
from stage1_core.model import ClassifierConfig, MultiViewConfig, RoadworkClassifier, aggregate_view_logits, make_views


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
        unchunked = RoadworkClassifier(model.backbone, ClassifierConfig(multiview=multiview.model_copy(update={"chunk_size": 1000})))
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
        assert torch.allclose(backbone(pixel_values=pixels).pooler_output, loaded(pixel_values=pixels).pooler_output, atol=1e-6)
