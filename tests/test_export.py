import numpy as np
import torch

from stage1_core.backbone import load_backbone
from stage1_core.calibration import LogitMap
from stage1_core.export import ExportConfig, ExportedModel, ServingGraph, export_onnx
from stage1_core.model import ClassifierConfig, MultiViewConfig, RoadworkClassifier


def test_onnx_export_matches_pytorch_on_images_of_several_sizes(tmp_path) -> None:
    model = RoadworkClassifier(load_backbone("dinov2-demo"), ClassifierConfig(multiview=MultiViewConfig(view_size=28))).eval()
    generator = torch.Generator().manual_seed(0)
    images = [torch.randint(0, 256, (3, h, w), dtype=torch.uint8, generator=generator) for h, w in [(60, 80), (60, 80), (90, 40), (33, 200)]]
    calibration = LogitMap(a=0.8, b=0.5, c=0.3)  # a Dirichlet-like map, not only a temperature
    exported = export_onnx(model, calibration=calibration, decision_threshold=0.4, images=images, config=ExportConfig())
    parity = exported.metadata.parity[0]
    assert parity.passed and parity.max_abs_diff <= 1e-4 and parity.n_images == 4
    assert exported.metadata.calibration == calibration and exported.metadata.views_per_image == 10

    reloaded = ExportedModel.load(exported.save(tmp_path / "bundle"))
    batch = torch.randint(0, 256, (5, 3, 64, 64), dtype=torch.uint8, generator=generator)
    onnx_probs = reloaded.session().run(None, {"image": batch.numpy()})[0]
    with torch.no_grad():
        torch_probs = ServingGraph(model, calibration)(batch).numpy()
    assert onnx_probs.shape == (5,)
    assert np.abs(onnx_probs - torch_probs).max() <= 1e-4
    assert ((onnx_probs >= 0) & (onnx_probs <= 1)).all()
