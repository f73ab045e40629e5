"""CLI surface: help everywhere, info, and one-line errors for bad input."""

from __future__ import annotations

import json
import subprocess

import pytest
from conftest import cli as run_cli


def cli(*args: str) -> subprocess.CompletedProcess:
    return run_cli(*args, check=False, timeout=300)


@pytest.mark.parametrize("cmd", ["run", "fit", "resume", "predict", "demo", "info", "merge", "data", "search", "export"])
def test_help_everywhere(cmd: str):
    p = cli(cmd, "--help")
    assert p.returncode == 0 and "Usage" in p.stdout


def test_info_lists_registered_backbones_and_sources():
    p = cli("info")
    assert p.returncode == 0, p.stderr
    for name in ("bundled:efficientnet_lite0", "bundled:minilm_l6", "bundled:whisper_tiny_en_encoder",
                 "tfidf", "scratch_cnn", "timm:...", "file:..."):
        assert name in p.stdout
    for src in ("folder", "manifest", "emoji", "fashion_mnist", "wordnet", "audio_folder"):
        assert src in p.stdout
    assert "cache:" in p.stdout and "torch 2.14.1" in p.stdout


@pytest.mark.parametrize("args, message", [
    (["fit", "--data", "/no/such/dir", "--backbone", "bundled:efficientnet_lite0", "--out", "x"],
     "--data '/no/such/dir' is neither an existing path nor a data source; valid sources:"),
    (["resume", "/no/such/run"], "is not a transfuse run folder"),
    (["predict", "/no/such/run", "a.png"], "has no chosen model"),
    (["demo", "--task", "video"], "unknown demo task 'video'; valid tasks: "),
])
def test_user_errors_are_one_line(args: list[str], message: str):
    p = cli(*args)
    assert p.returncode == 2
    assert message in p.stderr
    assert "Traceback" not in p.stderr and p.stderr.strip().count("\n") == 0


def test_unknown_candidate_is_one_line(tmp_path):
    """``--candidate`` names a candidate of the run; a wrong name lists the valid ones."""
    for name in ("efficientnet_lite0/linear_probe", "fusion/mean"):
        folder = tmp_path / "candidates" / name.replace("/", "_")
        folder.mkdir(parents=True)
        (folder / "result.json").write_text(json.dumps({"name": name}))
    for cmd in (["predict", str(tmp_path), "a.png", "--candidate", "fusion/nope"],
                ["export", str(tmp_path), "--candidate", "fusion/nope"]):
        p = cli(*cmd)
        assert p.returncode == 2, p.stderr
        assert "has no candidate 'fusion/nope'; valid: efficientnet_lite0/linear_probe, fusion/mean" in p.stderr
        assert "Traceback" not in p.stderr and p.stderr.strip().count("\n") == 0
