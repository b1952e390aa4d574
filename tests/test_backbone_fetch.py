"""Backbone weights at a URL (an object store in a cluster): fetched once through fsspec into a local cache.

fsspec's in-memory and local file systems stand in for S3 (same fsspec calls: find, info, get_file); nothing
leaves the machine.
"""

from __future__ import annotations

from pathlib import Path

import fsspec
import pytest
import torch

from stage1_core.modeling.backbone import PRETRAINED_DEMOS, BackboneLoadError, fetch_backbone, load_backbone


@pytest.fixture()
def remote_weights() -> str:
    """The shipped demo weights uploaded to an in-memory bucket."""
    url = f"memory://weights-{torch.randint(1 << 30, ()).item()}/dinov2-demo"
    filesystem = fsspec.filesystem("memory")
    for file in PRETRAINED_DEMOS["dinov2-demo"].iterdir():
        filesystem.pipe_file(f"{url}/{file.name}", file.read_bytes())
    return url


def _same_weights(first: torch.nn.Module, second: torch.nn.Module) -> bool:
    return all(torch.equal(a, b) for a, b in zip(first.state_dict().values(), second.state_dict().values()))


def test_weights_at_a_url_load_like_the_local_directory(
    remote_weights: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("ROADWORK_BACKBONE_CACHE", str(tmp_path / "cache"))
    fetched = load_backbone(remote_weights)
    assert _same_weights(fetched, load_backbone("dinov2-demo"))
    [cached] = list((tmp_path / "cache").iterdir())
    assert (cached / "config.json").is_file() and (cached / "model.safetensors").is_file()


def test_unchanged_weights_are_fetched_once_and_new_ones_again(remote_weights: str, tmp_path: Path) -> None:
    first = fetch_backbone(remote_weights, tmp_path)
    marker = first / "kept"
    marker.write_text("the cached copy is reused, not fetched again")
    assert fetch_backbone(remote_weights, tmp_path) == first and marker.is_file()
    fsspec.filesystem("memory").pipe_file(f"{remote_weights}/README.md", b"new weights card")
    second = fetch_backbone(remote_weights, tmp_path)
    assert second != first and (second / "README.md").read_bytes() == b"new weights card"


def test_file_url_works_too(tmp_path: Path) -> None:
    cached = fetch_backbone(PRETRAINED_DEMOS["dinov2-demo"].as_uri(), tmp_path / "cache")
    assert {path.name for path in cached.iterdir()} == {path.name for path in PRETRAINED_DEMOS["dinov2-demo"].iterdir()}


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("memory://no-such-bucket/weights", "has no config.json"),
        ("nosuchscheme://bucket/weights", "no file system for its scheme"),
    ],
)
def test_unusable_url_names_the_problem(url: str, message: str, tmp_path: Path) -> None:
    with pytest.raises(BackboneLoadError, match=message):
        fetch_backbone(url, tmp_path)


def test_a_run_with_an_unusable_backbone_url_stops_before_any_step(
    demo_dataset: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from pipelines.full_run import main

    assert main(["--data", str(demo_dataset), "--backbone", "memory://no-such-bucket/weights"]) == 2
    assert "error: backbone memory://no-such-bucket/weights has no config.json" in capsys.readouterr().err
