"""The prepared GPU check: without CUDA it says so and exits 0; on a CUDA machine it is the check itself."""

from __future__ import annotations

import json

import pytest
import torch

from benchmarks import gpu_check


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the machine without CUDA")
def test_without_cuda_the_check_says_so_and_exits_0(capsys, tmp_path) -> None:
    assert gpu_check.main(["--json", "--out", str(tmp_path / "report.json")]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report == {"cuda": False, "reason": gpu_check.NO_CUDA} and "no CUDA device" in report["reason"]
    assert not (tmp_path / "report.json").exists(), "nothing measured, nothing written"
    assert gpu_check.main([]) == 0 and capsys.readouterr().out.strip() == gpu_check.NO_CUDA
