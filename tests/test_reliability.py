"""Reliability: atomic outputs, the run lock, resource checks, reproducibility and resume, under injected faults.

Faults are real: processes are SIGKILLed mid-write, mid-generation and mid-training, two ``full_run`` CLIs are
started together, and configs that cannot fit are submitted. Every fault test adds a row (fault, outcome, data
lost) to a table printed at the end of the module and recorded as junit properties.
"""

from __future__ import annotations

import json
import os
import re
import signal
import sqlite3
import subprocess
import sys
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from pathlib import Path

import pandas as pd
import pytest
import torch
import yaml
from mlflow import MlflowClient
from zenml.client import Client

from materializers.classifier import ClassifierMaterializer
from materializers.directory import save_directory
from pipelines.launch import LOCK_NAME, prepare_run, zenml_store_directory
from pipelines.settle import mlflow_runs_of, runs_since
from pipelines.train_and_gate import MODEL_NAME
from stacks.local import ensure_local_stack, mlflow_tracking_uri
from stage1_core.common.atomic_io import PARTIAL_MARKER, atomic_directory, atomic_file, remove_partials, write_atomic
from stage1_core.data.ingest import detect_layout
from stage1_core.data.sources.base import store_image
from stage1_core.modeling.training import EpochWeightedSampler
from stage1_core.run.reliability import (
    InsufficientResourcesError,
    ResourceNeed,
    RunLockTimeout,
    check_resources,
    content_hash,
    manifest_data_hash,
    reproducibility_record,
    run_lock,
)
from stage1_core.run.settings import ConfigError, load_run_config

REPO = Path(__file__).resolve().parents[1]
PIPELINE_TIMEOUT_S = 900
UPSTREAM_STEPS = ("ingest_data", "validate_data", "split_data", "adapt_backbone")
FAULTS: list[tuple[str, str, str]] = []


@pytest.fixture(scope="module", autouse=True)
def fault_table(request: pytest.FixtureRequest):
    """Print the module's fault table once its tests ran (with capture suspended: visible without -s)."""
    yield
    if not FAULTS:
        return
    lines = ["", f"{'fault':<48} | {'outcome':<110} | data lost"] + [
        f"{fault:<48} | {outcome:<110} | {lost}" for fault, outcome, lost in FAULTS
    ]
    with request.config.pluginmanager.get_plugin("capturemanager").global_and_fixture_disabled():
        print("\n".join(lines))


def report_fault(
    record_property: Callable[[str, object], None], fault: str, outcome: str, data_lost: str = "none"
) -> None:
    FAULTS.append((fault, outcome, data_lost))
    for key, value in (("fault", fault), ("outcome", outcome), ("data_lost", data_lost)):
        record_property(key, value)


def _partials(target: Path) -> list[Path]:
    return sorted(target.parent.glob(f".{target.name}{PARTIAL_MARKER}*"))


def _python(code: str, *args: str) -> subprocess.Popen:
    """A child Python process in its own session (so SIGKILL reaches all of it), in the repository root."""
    return subprocess.Popen(
        [sys.executable, "-c", code, *args],
        cwd=REPO,
        start_new_session=True,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def _kill_when(process: subprocess.Popen, condition: Callable[[], bool], timeout_s: float = PIPELINE_TIMEOUT_S) -> bool:
    """SIGKILL ``process`` as soon as ``condition()`` holds; False if it ended (or timed out) first."""
    deadline = time.monotonic() + timeout_s
    while process.poll() is None and time.monotonic() < deadline:
        if condition():
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()
            return True
        time.sleep(0.01)
    if process.poll() is None:
        os.killpg(process.pid, signal.SIGKILL)
    process.wait()
    return False


# ---------------------------------------------------------------------------------------------------- atomic writes

CRASH_IN_FILE_WRITE = """
import os, signal, sys
from pathlib import Path
from stage1_core.common.atomic_io import atomic_file
with atomic_file(Path(sys.argv[1])) as temporary:
    with open(temporary, "wb") as handle:
        handle.write(b"the first half of the new cont")
        handle.flush()
        os.kill(os.getpid(), signal.SIGKILL)
"""

CRASH_IN_DIRECTORY_WRITE = """
import os, signal, sys
from pathlib import Path
from stage1_core.common.atomic_io import atomic_directory
with atomic_directory(Path(sys.argv[1])) as staging:
    (staging / "model.onnx").write_bytes(b"complete file")
    (staging / "metadata.json").write_text('{"half": ')
    os.kill(os.getpid(), signal.SIGKILL)
"""


@pytest.mark.fault_injection
def test_killed_file_write_keeps_the_old_file(tmp_path: Path, record_property) -> None:
    target = tmp_path / "manifest.parquet"
    target.write_bytes(b"old complete content")
    process = _python(CRASH_IN_FILE_WRITE, str(target))
    process.wait(timeout=120)
    assert process.returncode == -signal.SIGKILL, process.stderr.read()
    assert target.read_bytes() == b"old complete content"
    assert len(_partials(target)) == 1
    assert remove_partials(target) and not _partials(target)
    write_atomic(target, b"new complete content")
    assert target.read_bytes() == b"new complete content" and not _partials(target)
    report_fault(
        record_property,
        "SIGKILL mid file write (atomic_file)",
        "old file intact; hidden partial removed by remove_partials",
    )


@pytest.mark.fault_injection
def test_killed_directory_write_publishes_nothing(tmp_path: Path, record_property) -> None:
    target = tmp_path / "exported_model"
    process = _python(CRASH_IN_DIRECTORY_WRITE, str(target))
    process.wait(timeout=120)
    assert process.returncode == -signal.SIGKILL, process.stderr.read()
    assert not target.exists()
    assert len(_partials(target)) == 1 and (_partials(target)[0] / "model.onnx").is_file()
    remove_partials(target)
    for version in ("v1", "v2"):  # publishing over an existing complete folder replaces it whole
        with atomic_directory(target) as staging:
            (staging / "model.onnx").write_text(version)
    assert (target / "model.onnx").read_text() == "v2" and not _partials(target)
    report_fault(
        record_property,
        "SIGKILL mid folder write (atomic_directory)",
        "target folder never published; leftover removed; rewrite complete",
    )


@pytest.mark.fault_injection
def test_exception_mid_write_leaves_no_trace(tmp_path: Path, record_property) -> None:
    target = tmp_path / "report.json"
    target.write_text("old")
    with pytest.raises(RuntimeError), atomic_file(target) as temporary:
        temporary.write_text("half")
        raise RuntimeError("disk full")
    assert target.read_text() == "old" and not _partials(target)
    report_fault(record_property, "exception mid file write", "old file intact, temporary removed")


@pytest.mark.fault_injection
def test_materializer_crash_mid_save_publishes_no_artifact(tmp_path: Path, record_property) -> None:
    uri = tmp_path / "artifact"
    uri.mkdir()  # ZenML creates the artifact folder before calling save
    materializer = ClassifierMaterializer(uri=str(uri))

    def crash_halfway(folder: Path) -> None:
        (folder / "head.safetensors").write_bytes(b"weights")
        raise OSError("no space left on device")

    with pytest.raises(OSError):
        save_directory(materializer, crash_halfway)
    assert list(uri.iterdir()) == [] and not _partials(uri)
    save_directory(materializer, lambda folder: (folder / "head.safetensors").write_bytes(b"weights"))
    assert (uri / "head.safetensors").read_bytes() == b"weights"
    report_fault(
        record_property,
        "crash mid artifact save (materializer)",
        "artifact folder stays empty (ZenML never registers it)",
    )


def test_image_store_concurrent_writes_of_one_image(tmp_path: Path) -> None:
    image = os.urandom(50_000)
    with ThreadPoolExecutor(max_workers=8) as pool:
        results = set(pool.map(lambda _: store_image(image, str(tmp_path / "store")), range(16)))
    assert len(results) == 1
    sha, uri = results.pop()
    assert Path(uri).read_bytes() == image
    assert [path.name for path in (tmp_path / "store").rglob("*") if path.is_file()] == [sha]


# --------------------------------------------------------------------------------------------------- hashes and records


def test_content_hash_follows_content_only() -> None:
    frame = pd.DataFrame({"id": ["a", "b"], "label": [0, 1]})
    module = torch.nn.Linear(2, 1)
    first = content_hash(frame, module, "config")
    assert first == content_hash(frame.copy(), module, "config")
    assert first != content_hash(frame.assign(label=[1, 1]), module, "config")
    with torch.no_grad():
        module.weight[0, 0] += 1e-6
    assert first != content_hash(frame, module, "config")
    with pytest.raises(TypeError, match="cannot hash a float"):
        content_hash(1.5)


def test_manifest_data_hash_is_order_free_and_label_sensitive() -> None:
    manifest = pd.DataFrame(
        {"sha256": ["x", "y", "z"], "label": [0, 1, 1], "split": ["train", "val_test", "train"], "uri": ["1", "2", "3"]}
    )
    assert manifest_data_hash(manifest) == manifest_data_hash(manifest.iloc[::-1].assign(uri=["a", "b", "c"]))
    assert manifest_data_hash(manifest) != manifest_data_hash(manifest.assign(label=[1, 1, 1]))


def test_reproducibility_record_names_seed_data_and_software() -> None:
    record = reproducibility_record(7, "datahash", "confighash")
    assert (record.seed, record.data_hash, record.config_hash) == (7, "datahash", "confighash")
    assert torch.__version__.startswith(record.packages["torch"])
    assert {"transformers", "peft", "lightning", "zenml", "mlflow", "numpy"} <= record.packages.keys()


def test_epoch_sampler_order_is_a_function_of_seed_and_epoch() -> None:
    weights = torch.rand(50, dtype=torch.double)
    straight = EpochWeightedSampler(weights, 50, seed=3)
    orders = []
    for epoch in range(3):
        straight.set_epoch(epoch)
        orders.append(list(straight))
    resumed = EpochWeightedSampler(weights, 50, seed=3)
    resumed.set_epoch(2)
    assert list(resumed) == orders[2]
    assert orders[0] != orders[1]


# ---------------------------------------------------------------------------------------------------- the run lock

HOLD_LOCK = """
import sys, time
from pathlib import Path
from stage1_core.run.reliability import run_lock
with run_lock(Path(sys.argv[1]), timeout_s=0):
    print("held", flush=True)
    time.sleep(300)
"""


@pytest.mark.fault_injection
def test_run_lock_names_the_holder_times_out_and_is_freed_by_a_kill(tmp_path: Path, caplog, record_property) -> None:
    lock_file = tmp_path / "run.lock"
    holder = _python(HOLD_LOCK, str(lock_file))
    try:
        assert holder.stdout.readline().strip() == "held", holder.stderr.read()
        with pytest.raises(
            RunLockTimeout,
            match=rf"run started by pid {holder.pid} at .* still holds .* raise reliability.lock_timeout_s",
        ):
            with run_lock(lock_file, timeout_s=0.5, poll_s=0.05):
                pass
        assert f"waiting for run started by pid {holder.pid}" in caplog.text
    finally:
        os.killpg(holder.pid, signal.SIGKILL)
        holder.wait()
    started = time.monotonic()
    with run_lock(lock_file, timeout_s=5):
        assert json.loads(lock_file.with_name(lock_file.name + ".owner.json").read_text())["pid"] == os.getpid()
    assert time.monotonic() - started < 2
    report_fault(
        record_property,
        "run lock held by another run / holder SIGKILLed",
        "timeout names pid + start; kernel frees a killed holder's lock at once",
    )


# ---------------------------------------------------------------------------------------------------- resource checks


def _tiny_document(root: Path, name: str) -> dict:
    document = yaml.safe_load((REPO / "pipelines" / "configs" / "tiny.yaml").read_text())
    document["parameters"]["data"] = {"path": str(root / name), "image_store": str(root / f"{name}_images")}
    document["parameters"]["evaluation"]["slices"]["truth_path"] = str(root / name / "demo_truth.parquet")
    document["parameters"]["train"]["checkpoint_root"] = str(root / f"{name}_checkpoints")
    return document


def _write_config(document: dict, path: Path) -> Path:
    path.write_text(yaml.safe_dump(document))
    return path


@pytest.mark.fault_injection
@pytest.mark.parametrize(
    ("change", "expected"),
    [
        (
            {"demo": {"n_images": 50_000_000, "image_width": 4096, "image_height": 4096}},
            ["not enough disk space", "demo.n_images", "demo images"],
        ),
        ({"train": {"batch_size": 2_000_000}}, ["not enough memory", "train.batch_size", "activations"]),
    ],
)
def test_run_that_cannot_fit_is_refused_before_any_work(
    tmp_path: Path, change: dict, expected: list[str], record_property
) -> None:
    document = _tiny_document(tmp_path, "data")
    for section, values in change.items():
        document["parameters"][section] = {**document["parameters"][section], **values}
    settings = load_run_config(_write_config(document, tmp_path / "run.yaml"))
    with pytest.raises(ConfigError) as refused:
        prepare_run(settings)
    for phrase in expected:
        assert phrase in str(refused.value)
    assert not (tmp_path / "data").exists()
    report_fault(
        record_property,
        f"config too big: {next(iter(change))}",
        f"refused at start: {expected[0]}, names {expected[1]}",
    )


def test_injected_tiny_memory_limit_fails_with_the_knob() -> None:
    needs = [ResourceNeed(what="activations", bytes=10 * 2**20, lower_it="a smaller train.batch_size")]
    with pytest.raises(InsufficientResourcesError, match=r"not enough memory.*a smaller train.batch_size"):
        check_resources(needs, available_memory=2**20)
    check_resources(needs, available_memory=2**30)


def test_reliability_section_is_validated(tmp_path: Path) -> None:
    document = _tiny_document(tmp_path, "data") | {"reliability": {"lock_timeout_s": -1}}
    with pytest.raises(ConfigError, match=r"reliability\.lock_timeout_s"):
        load_run_config(_write_config(document, tmp_path / "run.yaml"))


# ---------------------------------------------------------------------------------------------------- demo generation


@pytest.mark.fault_injection
@pytest.mark.slow
def test_killed_demo_generation_leaves_no_data_folder(tmp_path: Path, record_property) -> None:
    document = _tiny_document(tmp_path, "demo")
    document["parameters"]["demo"] |= {"n_images": 240, "rows_per_shard": 8}
    config = _write_config(document, tmp_path / "run.yaml")
    data = tmp_path / "demo"
    process = subprocess.Popen(
        [sys.executable, "-m", "pipelines.full_run", "--config", str(config)],
        cwd=REPO,
        start_new_session=True,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    killed = _kill_when(
        process, lambda: any(staging.glob("data/*.parquet") for staging in _partials(data)), timeout_s=300
    )
    assert killed, f"the generation ended before the kill: {process.stderr.read()[-2000:]}"
    assert not data.exists(), "a killed generation must not publish the data folder"
    assert _partials(data)
    prepare_run(load_run_config(config))
    assert not _partials(data) and detect_layout(data) == "natix"
    assert sum(len(pd.read_parquet(shard, columns=["label"])) for shard in (data / "data").glob("*.parquet")) == 240
    report_fault(
        record_property,
        "SIGKILL mid demo generation",
        "no data folder published; next run removed the staging folder and drew all 240 images",
    )


# ---------------------------------------------------------------------------------------------------- pipeline runs


def _run_name(stdout: str) -> str:
    match = re.search(r"^Run (\S+): completed", stdout, flags=re.MULTILINE)
    assert match, f"no completed run in the output:\n{stdout[-3000:]}"
    return match.group(1)


def _full_run(config: Path, *extra: str) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "pipelines.full_run", "--config", str(config), *extra],
        cwd=REPO,
        start_new_session=True,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def _finish(process: subprocess.Popen) -> tuple[str, str]:
    stdout, stderr = process.communicate(timeout=PIPELINE_TIMEOUT_S)
    assert process.returncode == 0, stderr[-4000:]
    return stdout, stderr


@pytest.fixture(scope="module")
def run_configs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Run A/R (same config) and run B (A's config with another checkpoint folder: a training cache miss only)."""
    root = tmp_path_factory.mktemp("reliability_runs")
    document = _tiny_document(root, "tiny")
    document["parameters"]["train"] |= {"max_epochs": 4, "early_stopping_patience": 10}
    document["reliability"] = {"lock_timeout_s": PIPELINE_TIMEOUT_S}
    configs = {"A": _write_config(document, root / "a.yaml")}
    document["parameters"]["train"]["checkpoint_root"] = str(root / "checkpoints_b")
    configs["B"] = _write_config(document, root / "b.yaml")
    return configs


def _lock_owner(owner_file: Path) -> int | None:
    try:
        return json.loads(owner_file.read_text())["pid"]
    except FileNotFoundError:
        return None


@pytest.fixture(scope="module")
def concurrent_runs(run_configs: dict[str, Path]) -> dict[str, object]:
    """Start run A, and while it holds the run lock start run R (same config, --no-cache); both must complete."""
    owner_file = zenml_store_directory() / (LOCK_NAME + ".owner.json")
    first = _full_run(run_configs["A"])
    deadline = time.monotonic() + 300
    while _lock_owner(owner_file) != first.pid:
        assert first.poll() is None and time.monotonic() < deadline, (
            "run A never took the run lock: pipelines/full_run.py main() must run prepare_run and the pipeline "
            "inside pipelines.launch.exclusive_run"
        )
        time.sleep(0.05)
    second = _full_run(run_configs["A"], "--no-cache")
    started = time.monotonic()
    first_out, _ = _finish(first)
    second_out, second_err = _finish(second)
    return {
        "A": _run_name(first_out),
        "R": _run_name(second_out),
        "R_output": second_out + second_err,
        "A_pid": first.pid,
        "seconds": time.monotonic() - started,
    }


@pytest.fixture(scope="module")
def resumed_run(run_configs: dict[str, Path], concurrent_runs: dict[str, object]) -> dict[str, object]:
    """Run B killed (SIGKILL) right after its first training checkpoint, then B again to completion."""
    checkpoints = Path(yaml.safe_load(run_configs["B"].read_text())["parameters"]["train"]["checkpoint_root"])
    killed = _full_run(run_configs["B"])
    assert _kill_when(killed, lambda: any(checkpoints.glob("*/last.ckpt"))), (
        f"run B ended before its first checkpoint: {killed.stderr.read()[-3000:]}"
    )
    checkpoint_files = sorted(path.name for path in checkpoints.glob("*/*"))
    stdout, _ = _finish(_full_run(run_configs["B"]))
    return {"name": _run_name(stdout), "checkpoints_at_kill": checkpoint_files, "checkpoint_root": checkpoints}


def _run(name: str):
    return Client().get_pipeline_run(name)


def _output(run, step: str, name: str):
    return run.steps[step].outputs[name][0].load()


def _max_weight_difference(first, second) -> float:
    a, b = first.state_dict(), second.state_dict()
    assert a.keys() == b.keys()
    return max(float((a[key].float() - b[key].float()).abs().max()) for key in a) if a else 0.0


@pytest.mark.fault_injection
@pytest.mark.slow
def test_concurrent_runs_both_complete_and_stores_stay_consistent(
    concurrent_runs: dict[str, object], record_property
) -> None:
    assert (
        f"waiting for run started by pid {concurrent_runs['A_pid']}" in concurrent_runs["R_output"]
    )  # ZenML's log handler: stdout
    for name in ("A", "R"):
        assert _run(concurrent_runs[name]).status.value == "completed"
    zenml_url, mlflow_uri = Client().zen_store.config.url, mlflow_tracking_uri()
    for url in (zenml_url, mlflow_uri):
        assert url.startswith("sqlite:///"), url
        with sqlite3.connect(url.removeprefix("sqlite:///")) as database:
            assert database.execute("PRAGMA integrity_check").fetchone()[0] == "ok", url
    client = MlflowClient(tracking_uri=mlflow_uri)
    aliases = client.get_registered_model(MODEL_NAME).aliases
    assert aliases
    for alias, version in aliases.items():
        assert client.get_model_version(MODEL_NAME, version).status == "READY", alias
    decisions = [_output(_run(concurrent_runs[name]), "promote_model", "promotion_decision") for name in ("A", "R")]
    assert decisions[0].version != decisions[1].version
    report_fault(
        record_property,
        "two full_run started together (A, then R)",
        f"R waited for A, both completed in {concurrent_runs['seconds']:.0f} s; sqlite integrity ok; "
        f"aliases {sorted(aliases)} on READY versions",
    )


@pytest.mark.slow
def test_same_seed_and_config_reproduce_split_and_val_test_metrics(concurrent_runs: dict[str, object]) -> None:
    """Run R recomputed every step (--no-cache): same split, same weights and val_test results as run A on the CPU."""
    first, second = _run(concurrent_runs["A"]), _run(concurrent_runs["R"])
    assert {step.status.value for step in second.steps.values()} == {"completed"}
    splits = [
        _output(run, "split_data", "split_manifest")[["id", "split"]].sort_values("id").reset_index(drop=True)
        for run in (first, second)
    ]
    pd.testing.assert_frame_equal(*splits)
    assert (
        _max_weight_difference(
            _output(first, "train_model", "classifier"), _output(second, "train_model", "classifier")
        )
        <= 1e-6
    )
    reports = [_output(run, "evaluate_model", "evaluation_report") for run in (first, second)]
    assert reports[0].labels == reports[1].labels
    assert max(abs(a - b) for a, b in zip(reports[0].logits, reports[1].logits, strict=True)) <= 1e-5
    for name, value in reports[0].gate_metrics().items():
        other = reports[1].gate_metrics()[name]
        assert (value is None and other is None) or abs(value - other) <= 1e-6, name
    record = first.steps["train_model"].run_metadata["reproducibility"]
    assert record["seed"] == 0 and record["packages"]["torch"] and len(record["data_hash"]) == 64
    assert record == second.steps["train_model"].run_metadata["reproducibility"]


@pytest.mark.fault_injection
@pytest.mark.slow
def test_killed_training_resumes_from_its_checkpoint_with_cached_upstream(
    concurrent_runs: dict[str, object], resumed_run: dict[str, object], record_property
) -> None:
    run = _run(resumed_run["name"])
    for step in UPSTREAM_STEPS:
        assert run.steps[step].status.value == "cached", step
    assert run.steps["train_model"].status.value == "completed"
    summary = _output(run, "train_model", "train_summary")
    reference = _output(_run(concurrent_runs["A"]), "train_model", "train_summary")
    assert 1 <= summary.resumed_after_epochs < reference.epochs_run
    assert "last.ckpt" in resumed_run["checkpoints_at_kill"]
    assert not any(Path(resumed_run["checkpoint_root"]).glob("*/*.ckpt")), (
        "checkpoints are removed after a successful training"
    )
    assert len(summary.history) == len(reference.history)
    for resumed_epoch, straight_epoch in zip(summary.history, reference.history, strict=True):
        assert abs(resumed_epoch["val_select_loss"] - straight_epoch["val_select_loss"]) <= 1e-6, resumed_epoch["epoch"]
    difference = _max_weight_difference(
        _output(run, "train_model", "classifier"), _output(_run(concurrent_runs["A"]), "train_model", "classifier")
    )
    assert difference <= 1e-6
    metrics = [
        _output(candidate, "evaluate_model", "evaluation_report").gate_metrics()
        for candidate in (run, _run(concurrent_runs["A"]))
    ]
    assert all(
        (metrics[0][name] is None and metrics[1][name] is None) or abs(metrics[0][name] - metrics[1][name]) <= 1e-6
        for name in metrics[0]
    )
    report_fault(
        record_property,
        "SIGKILL during training",
        f"rerun: upstream cached, resumed after {summary.resumed_after_epochs}/{reference.epochs_run} epochs, "
        f"max |weight diff| {difference:.1e} vs uninterrupted",
        "none (only the unfinished epoch is redone)",
    )


# ---------------------------------------------------------------------------------------------------- stopping a run


@pytest.fixture(scope="module")
def ablation_config(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny run with an ablation: two trainings that do not depend on each other, four epochs each."""
    root = tmp_path_factory.mktemp("stop_runs")
    document = _tiny_document(root, "tiny")
    document["parameters"]["train"] |= {"max_epochs": 4, "early_stopping_patience": 10}
    document["parameters"]["ablation"] = {"without_explora": True, "doran_head": False}
    document["reliability"] = {"lock_timeout_s": PIPELINE_TIMEOUT_S}
    return _write_config(document, root / "ablation.yaml")


def _started_during_training(config: Path) -> tuple[subprocess.Popen, float]:
    """A full_run killed by the caller once a training wrote its first checkpoint: (process, start time)."""
    checkpoints = Path(yaml.safe_load(config.read_text())["parameters"]["train"]["checkpoint_root"])
    for leftover in checkpoints.glob("*/*.ckpt"):
        leftover.unlink()
    started = time.time()
    process = _full_run(config)
    deadline = time.monotonic() + PIPELINE_TIMEOUT_S
    while not any(checkpoints.glob("*/last.ckpt")):
        assert process.poll() is None and time.monotonic() < deadline, (
            f"the run ended before training: {process.stderr.read()[-3000:]}"
        )
        time.sleep(0.05)
    return process, started


def _runs_since(started: float) -> list:
    return runs_since(datetime.fromtimestamp(started, UTC))


def _mlflow_statuses(run) -> list[str]:
    ensure_local_stack()  # the commands activate it in their own process; this one may still hold the default stack
    parents, children = mlflow_runs_of(MlflowClient(tracking_uri=mlflow_tracking_uri()), run)
    return [mlflow_run.info.status for mlflow_run in parents + children]


def _model_versions() -> set[str]:
    return {str(version.id) for version in Client().list_model_versions(MODEL_NAME, size=1000).items}


@pytest.mark.fault_injection
@pytest.mark.slow
@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "Ctrl-C"])
def test_one_signal_during_training_stops_the_whole_run_and_registers_nothing(
    ablation_config: Path, signum: int, record_property
) -> None:
    """Before: the signal failed the training step and the next (ablation) training started; a second signal was
    needed, and the run's model version stayed behind."""
    versions_before = _model_versions()
    process, started = _started_during_training(ablation_config)
    os.killpg(process.pid, signum)  # Ctrl-C reaches the terminal's whole process group; SIGTERM as Kubernetes
    _, stderr = process.communicate(timeout=PIPELINE_TIMEOUT_S)
    name = signal.Signals(signum).name
    assert process.returncode == 128 + signum, stderr[-3000:]
    assert f"stopped: {name} received" in stderr and "Traceback" not in stderr.split("stopped:")[-1]
    (run,) = _runs_since(started)
    trainings = {step.name: step.status.value for step in run.steps.values() if step.name.startswith("train_model")}
    assert len(trainings) == 1 and "completed" not in trainings.values(), (
        f"a training ran after the signal: {trainings}"
    )
    assert not [step.name for step in run.steps.values() if not step.status.is_finished]
    assert run.status.value in ("stopped", "failed") and f"{name} received" in (run.body.status_reason or "")
    statuses = _mlflow_statuses(run)
    assert statuses and "RUNNING" not in statuses and "KILLED" in statuses, statuses
    assert _model_versions() == versions_before, "the stopped run left a model version"
    assert not (zenml_store_directory() / (LOCK_NAME + ".owner.json")).exists()
    with run_lock(zenml_store_directory() / LOCK_NAME, timeout_s=0):
        pass
    report_fault(
        record_property,
        f"{name} during training (an ablation to follow)",
        f"exit {process.returncode} after one signal; no later step started; ZenML {run.status.value} "
        f"({run.body.status_reason}), MLflow {sorted(set(statuses))}; lock released; no model version",
    )


@pytest.mark.fault_injection
@pytest.mark.slow
def test_a_killed_run_is_settled_by_the_next_run(ablation_config: Path, tmp_path: Path, record_property) -> None:
    """SIGKILL leaves the run 'running' in ZenML, its MLflow run RUNNING and an empty model version: the next run
    finds the dead lock owner and settles all three, before doing anything else."""
    versions_before = _model_versions()
    process, started = _started_during_training(ablation_config)
    os.killpg(process.pid, signal.SIGKILL)
    process.wait()
    (killed,) = _runs_since(started)
    assert not killed.status.is_finished and "RUNNING" in _mlflow_statuses(killed)
    assert len(_model_versions() - versions_before) == 1
    owner = json.loads((zenml_store_directory() / (LOCK_NAME + ".owner.json")).read_text())
    assert owner["pid"] == process.pid

    next_run = _full_run(ablation_config, "--data", str(tmp_path / "nowhere"))  # settles, then stops at the data
    stdout, stderr = next_run.communicate(timeout=PIPELINE_TIMEOUT_S)
    assert next_run.returncode == 2 and "does not exist" in stderr
    logged = stdout + stderr  # ZenML's log handler: stdout
    assert f"the run started by pid {process.pid}" in logged and "was killed: settling what it left" in logged
    settled = _run(killed.name)
    assert settled.status.value == "failed" and f"pid {process.pid}" in settled.body.status_reason
    assert all(step.status.is_finished for step in settled.steps.values())
    statuses = _mlflow_statuses(settled)
    assert "RUNNING" not in statuses and "FAILED" in statuses, statuses
    assert _model_versions() == versions_before, "the killed run's empty model version is still there"
    report_fault(
        record_property,
        "SIGKILL during training, then the next run",
        "next run settled it first: ZenML running -> failed (reason names the pid), MLflow RUNNING -> FAILED, "
        "empty model version deleted",
    )
