"""CLI surface: help everywhere, info, and one-line errors for bad input."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import pytest
from conftest import cli as run_cli


def cli(*args: str) -> subprocess.CompletedProcess:
    return run_cli(*args, check=False, timeout=300)


@pytest.mark.parametrize("cmd", ["run", "fit", "resume", "predict", "demo", "info", "merge", "data", "search", "export",
                                 "embed"])
def test_help_everywhere(cmd: str):
    p = cli(cmd, "--help")
    assert p.returncode == 0 and "Usage" in p.stdout
    assert "<bool>" not in p.stdout  # a flag is shown as a flag, not as an option taking a value
    if cmd in ("run", "fit", "predict"):
        assert "--help" in p.stdout and "<path>" in p.stdout  # options with values keep their type


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


def test_summary_table_is_not_cut_when_output_is_not_a_terminal(capsys):
    """A log or a pipe gets full candidate names and numbers, not 80 columns ending in '…'."""
    from transfuse.cli import _echo_summary

    long = "efficientnet_lite0/linear_probe+efficientnet_lite1/lp_ft"
    cands = [{"name": f"fusion/stacking({long})", "kind": "fusion", "cv_mean": 0.7458123, "cv_std": 0.0312345,
              "test": {"accuracy": 0.75, "macro_f1": 0.7333}},
             {"name": "efficientnet_lite0/linear_probe", "kind": "single", "cv_mean": 0.7, "cv_std": 0.01,
              "test": None}]
    _echo_summary({"name": "r", "metric": "accuracy", "candidates": cands, "chosen": cands[0]["name"],
                   "run_dir": "/runs/r"})
    err = capsys.readouterr().err
    assert f"fusion/stacking({long}) *" in err and "0.7458 ± 0.0312" in err and "test macro-F1" in err
    assert "…" not in err


def test_quiet_silences_hugging_face_bars_and_library_warnings(monkeypatch):
    import logging
    import warnings

    from transfuse.progress import LIBRARY_LOGGERS, quiet_libraries

    for k in ("HF_HUB_DISABLE_PROGRESS_BARS", "TRANSFORMERS_VERBOSITY", "TRANSFORMERS_NO_ADVISORY_WARNINGS",
              "TQDM_DISABLE"):
        monkeypatch.delenv(k, raising=False)  # restored after the test
    levels = {n: logging.getLogger(n).level for n in LIBRARY_LOGGERS}
    with warnings.catch_warnings():
        try:
            quiet_libraries()
            import os

            assert os.environ["HF_HUB_DISABLE_PROGRESS_BARS"] == "1" and os.environ["TRANSFORMERS_VERBOSITY"] == "error"
            assert logging.getLogger("transformers").getEffectiveLevel() == logging.ERROR
            assert logging.getLogger("lightning.pytorch").getEffectiveLevel() == logging.ERROR
            with warnings.catch_warnings(record=True) as caught:
                warnings.warn_explicit("noisy", UserWarning, "x.py", 1, module="transformers.modeling_utils")
                warnings.warn_explicit("ours", UserWarning, "y.py", 1, module="transfuse.pipeline")
            assert [str(w.message) for w in caught] == ["ours"]
        finally:
            for n, lvl in levels.items():
                logging.getLogger(n).setLevel(lvl)


def test_the_command_ends_without_the_interpreters_teardown(tmp_path):
    """``transfuse`` ends with the exit handlers run and its threads joined, then skips the
    interpreter's teardown (about 1 s on a quiet machine, 9 s with a cold disk, which a time limit
    cannot plan for): an object that only the teardown would free is never finalized."""
    script = textwrap.dedent(f"""
        import atexit, sys, threading, time
        from pathlib import Path
        out = Path({str(tmp_path)!r})
        atexit.register(lambda: (out / "atexit").write_text("ran"))
        def late():
            time.sleep(0.3)
            (out / "thread").write_text("joined")
        threading.Thread(target=late).start()
        class Teardown:
            def __del__(self):
                (out / "teardown").write_text("ran")
        keep = Teardown()
        sys.argv = ["transfuse", "fit", "--data", {str(tmp_path / "missing")!r}, "--modality", "text",
                    "--out", {str(tmp_path / "run")!r}]
        from transfuse.cli import main
        main()
    """)
    p = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert p.returncode == 2 and p.stderr.startswith("error: ") and "Traceback" not in p.stderr
    assert (tmp_path / "atexit").read_text() == "ran" and (tmp_path / "thread").read_text() == "joined"
    assert not (tmp_path / "teardown").exists()
    control = script.replace("main()", "sys.exit(0)")  # the normal exit does finalize it
    assert subprocess.run([sys.executable, "-c", control], timeout=120).returncode == 0
    assert (tmp_path / "teardown").read_text() == "ran"
