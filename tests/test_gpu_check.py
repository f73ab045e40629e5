"""scripts/gpu_check.sh without a GPU: every check skipped with the reason, exit 0."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "gpu_check.sh"


def _run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([str(SCRIPT), *args], capture_output=True, text=True, timeout=120,
                          env={**os.environ, "PYTHON": sys.executable})


@pytest.mark.skipif(torch.cuda.is_available(), reason="a GPU is here: run scripts/gpu_check.sh itself")
def test_without_cuda_every_check_is_skipped():
    p = _run()
    why = f"no CUDA device (torch {torch.__version__}, torch.cuda.is_available() is False)"
    assert p.returncode == 0, p.stderr
    assert p.stdout.splitlines() == [f"SKIP {n}: {why}" for n in ("merge_cuda", "finetune_bf16", "ddp_1gpu", "onnx_cuda")] \
        + [f"gpu_check: 0 passed, 0 failed, 4 skipped: {why}"]


def test_an_unknown_check_is_named():
    p = _run("merge_cuda", "bf16")
    assert p.returncode == 2 and p.stdout == ""
    assert p.stderr == "error: unknown check(s) bf16; valid: merge_cuda, finetune_bf16, ddp_1gpu, onnx_cuda\n"
