"""The local ZenML server (``zenml login --local``) shows a run and its report visualizations.

The server runs as a daemon with a private ZENML_CONFIG_PATH on a free port; a small pipeline (the real
ingest and validate steps on the session's demo data, and a drift report of its roadwork images against
the others) runs against it in a subprocess, and everything is then read back through the server's REST API
(the local daemon uses no authentication). The dashboard shows HTML visualizations in a frame where no script
runs, so the drift report's first visualization must say everything in plain HTML. The server is
stopped at the end, also when the test fails. A server that cannot start fails the test: no skip.

``python -m tests.test_dashboard DATA IMAGE_STORE`` is the subprocess: it runs the pipeline and prints the run id.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Annotated, Any

import pandas as pd
import pytest
from zenml import pipeline, step

from stage1_core.data.sources.config import IngestConfig
from stage1_core.data.validation import ValidationConfig
from stage1_core.monitoring.drift import DriftConfig, DriftReport, drift_report, image_features
from steps.ingest_data import ingest_data
from steps.validate_data import validate_data
from tests.html_text import image_sources, visible_text

REPO = Path(__file__).resolve().parents[1]
ZENML_CLI = Path(sys.executable).parent / "zenml"
SERVER_START_TIMEOUT_S = 300
RUN_TIMEOUT_S = 600


@step
def compare_labels(manifest: pd.DataFrame) -> Annotated[DriftReport, "drift_report"]:
    """The library's drift report of the roadwork images' features against the others' (a shift by construction)."""
    features = image_features(manifest)
    roadwork = (manifest["label"] == 1).to_numpy()
    return drift_report(features[~roadwork], features[roadwork], DriftConfig(retrain_min_rows=1))


@pipeline
def dashboard_pipeline(data: IngestConfig, validation: ValidationConfig) -> None:
    """Real steps: the manifest (DataFrame), the validation report and a drift report (HTML visualizations)."""
    manifest = ingest_data(data, "dashboard-test")
    validate_data(manifest, validation)
    compare_labels(manifest)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _get(url: str) -> Any:
    with urllib.request.urlopen(url, timeout=60) as response:
        return json.loads(response.read())


def _stop_server(env: dict[str, str], config_dir: Path) -> None:
    """`zenml logout --local`; if the daemon is still there afterwards, end it by its pid file."""
    subprocess.run([str(ZENML_CLI), "logout", "--local"], env=env, cwd=REPO, capture_output=True, timeout=120)
    pid_file = config_dir / "zen_server" / "daemon" / "service.pid"
    if pid_file.is_file():
        try:
            os.kill(int(pid_file.read_text().strip()), signal.SIGTERM)
        except (ProcessLookupError, ValueError):
            pass


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, dict[str, str]]]:
    """A running local server: its URL and the environment of a client connected to it."""
    config_dir = tmp_path_factory.mktemp("zenml-server")
    env = os.environ | {
        "ZENML_CONFIG_PATH": str(config_dir),
        "ZENML_ANALYTICS_OPT_IN": "false",
        "ZENML_AUTO_OPEN_DASHBOARD": "false",
    }
    port = _free_port()
    try:
        login = subprocess.run(
            [str(ZENML_CLI), "login", "--local", "--port", str(port)],
            env=env,
            cwd=REPO,
            capture_output=True,
            text=True,
            timeout=SERVER_START_TIMEOUT_S,
        )
        url = f"http://127.0.0.1:{port}"
        assert login.returncode == 0, (
            f"`zenml login --local` failed (exit {login.returncode}):\n{login.stdout[-3000:]}\n{login.stderr[-3000:]}"
        )
        with urllib.request.urlopen(f"{url}/health", timeout=30) as response:
            assert response.status == 200, f"the local ZenML server at {url} is not healthy"
        yield url, env
    finally:
        _stop_server(env, config_dir)


@pytest.mark.dashboard
@pytest.mark.slow
def test_run_and_visualizations_are_served(
    server: tuple[str, dict[str, str]], demo_dataset: Path, tmp_path: Path
) -> None:
    url, env = server
    with urllib.request.urlopen(url, timeout=30) as response:
        assert "ZenML Dashboard" in response.read().decode(), "the dashboard page is not served"

    runner = subprocess.run(
        [sys.executable, "-m", "tests.test_dashboard", str(demo_dataset), str(tmp_path / "image_store")],
        env=env,
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=RUN_TIMEOUT_S,
    )
    assert runner.returncode == 0, (
        f"the pipeline run against the server failed:\n{runner.stdout[-3000:]}\n{runner.stderr[-3000:]}"
    )
    run_id = runner.stdout.strip().splitlines()[-1]

    api = f"{url}/api/v1"
    run = _get(f"{api}/runs/{run_id}")
    assert run["name"].startswith("dashboard_pipeline") and run["body"]["status"] == "completed"
    steps = {step["name"]: step for step in _get(f"{api}/steps?pipeline_run_id={run_id}&hydrate=true")["items"]}
    assert set(steps) == {"ingest_data", "validate_data", "compare_labels"} and all(
        step["body"]["status"] == "completed" for step in steps.values()
    )

    report_version = _get(
        f"{api}/artifact_versions/{steps['validate_data']['resources']['outputs']['validation_report'][0]['id']}?hydrate=true"
    )
    assert [visualization["body"]["type"] for visualization in report_version["metadata"]["visualizations"]] == ["html"]
    metadata = report_version["metadata"]["run_metadata"]
    rows = steps["ingest_data"]["metadata"]["run_metadata"]["rows"]
    assert metadata["n_ingested"] == rows > 0 and metadata["n_valid"] + metadata["n_quarantined"] == rows

    visualization = _get(f"{api}/artifact_versions/{report_version['id']}/visualize?index=0")
    assert visualization["type"] == "html"
    assert "<title>Manifest validation</title>" in visualization["value"]
    assert (
        f"<td>{metadata['n_ingested']}</td><td>{metadata['n_valid']}</td><td>{metadata['n_quarantined']}</td>"
        in visualization["value"]
    )

    manifest_version = _get(
        f"{api}/artifact_versions/{steps['ingest_data']['resources']['outputs']['raw_manifest'][0]['id']}?hydrate=true"
    )
    assert manifest_version["metadata"]["visualizations"], "the manifest DataFrame has no visualization"
    assert _get(f"{api}/artifact_versions/{manifest_version['id']}/visualize?index=0")["value"]

    drift_id = steps["compare_labels"]["resources"]["outputs"]["drift_report"][0]["id"]
    drift_version = _get(f"{api}/artifact_versions/{drift_id}?hydrate=true")
    assert [visualization["body"]["type"] for visualization in drift_version["metadata"]["visualizations"]] == [
        "html",
        "html",
    ]
    summary = _get(f"{api}/artifact_versions/{drift_id}/visualize?index=0")["value"]
    shown = visible_text(summary)
    drift = drift_version["metadata"]["run_metadata"]
    assert "<script" not in summary and "Data drift" in shown and "brightness" in shown and "orange_fraction" in shown
    assert f"Drifted: {drift['drifted_columns'] or 'none'}" in shown
    assert [source[:22] for source in image_sources(summary)] == ["data:image/png;base64,"]
    evidently = _get(f"{api}/artifact_versions/{drift_id}/visualize?index=1")["value"]
    assert "<script" in evidently and len(visible_text(evidently)) < 200, "Evidently's report needs scripts"


if __name__ == "__main__":
    data_path, image_store = sys.argv[1:3]
    finished = dashboard_pipeline.with_options(enable_cache=False)(
        IngestConfig(path=data_path, image_store=image_store), ValidationConfig()
    )
    print(finished.id)
