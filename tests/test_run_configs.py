"""The shipped run configs: each one validates, and the GPU and cluster runs share one recipe, not the demo's."""

from __future__ import annotations

from pathlib import Path

import pytest

from stage1_core.run.settings import load_run_config

CONFIGS = Path(__file__).resolve().parents[1] / "pipelines" / "configs"


@pytest.mark.parametrize("path", sorted(CONFIGS.glob("*.yaml")), ids=lambda path: path.name)
def test_every_shipped_run_config_validates(path: Path) -> None:
    assert load_run_config(path).config is not None


def test_gpu_and_cluster_runs_share_the_published_recipe() -> None:
    gpu, cluster, demo = (
        load_run_config(CONFIGS / name).config for name in ("gpu.yaml", "cluster.yaml", "default.yaml")
    )
    assert gpu.explora == cluster.explora and gpu.train == cluster.train, "configs/gpu.yaml and cluster.yaml drifted"
    assert gpu.classifier == cluster.classifier
    assert (gpu.explora.lora_rank, gpu.explora.head_out_dim, gpu.explora.n_local_crops) == (64, 65536, 8)
    assert gpu.explora.max_steps >= 100 * demo.explora.max_steps, "no demo budget in a real run"
    assert gpu.classifier.multiview.view_size == 224 and gpu.classifier.multiview.canvas_size == 604
