"""``transfuse run`` under DDP (2 CPU processes, gloo), end to end through the CLI.

Lightning's launcher re-runs the command for rank 1 at rank 0's first fine-tuning fit. Every file
operation of both processes under the test folder is recorded by an audit hook (a
``sitecustomize`` on the subprocesses' ``PYTHONPATH``): rank 1 must write nothing, rank 0 writes
the run folder, and the result must be the run one process gives with the same effective batch.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import yaml
from conftest import cli, write_digits_folder

pytestmark = pytest.mark.real

# Records, per process, every file write, rename, removal and new folder under $AUDIT_ROOT as JSON
# lines in $AUDIT_DIR/<pid>.jsonl, with the LOCAL_RANK the process started with (rank 0: none).
_SITECUSTOMIZE = r'''
import json, os, sys
_root, _dir = os.environ.get("AUDIT_ROOT"), os.environ.get("AUDIT_DIR")
if _root and _dir:
    _rank = os.environ.get("LOCAL_RANK")
    _log = os.open(os.path.join(_dir, f"{os.getpid()}.jsonl"), os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    os.write(_log, (json.dumps({"rank": _rank, "argv": sys.argv[1:]}) + "\n").encode())

    def _under(p):
        try:
            p = os.path.abspath(os.fsdecode(p))
        except TypeError:
            return None
        return p if p.startswith(_root) and not p.startswith(_dir) else None

    def _hook(event, args):
        paths = []
        if event == "open" and args[0] is not None and not isinstance(args[0], int):
            mode, flags = args[1] or "", args[2] or 0
            if any(c in mode for c in "wax+") or flags & (os.O_WRONLY | os.O_RDWR | os.O_CREAT):
                paths = [args[0]]
        elif event in ("os.rename", "os.replace"):
            paths = [args[0], args[1]]
        elif event in ("os.remove", "os.rmdir", "shutil.rmtree", "os.truncate"):
            paths = [args[0]]
        elif event == "os.mkdir" and not os.path.isdir(args[0]):
            paths = [args[0]]
        for p in paths:
            if (q := _under(p)) is not None:
                os.write(_log, (json.dumps({"rank": _rank, "event": event, "path": q}) + "\n").encode())

    sys.addaudithook(_hook)
'''


def _experiment(data: Path, out: Path, devices: int, batch_size: int) -> dict:
    ft = {"epochs": 2, "batch_size": batch_size, "lr": 1e-3, "inner_val": 0, "patience": None, "num_workers": 0,
          "accelerator": "cpu", "devices": devices}
    if devices > 1:
        ft["strategy"] = "ddp"
    return {"name": out.name, "seed": 0, "data": {"source": "folder", "path": str(data), "modality": "image"},
            "split": {"folds": 2, "test_size": 0.25}, "preprocess": {"image_size": 32},
            "backbones": ["bundled:efficientnet_lite0"],
            "adapt": {"strategies": ["linear_probe", "finetune"], "baseline": False},
            "fuse": {"ensembles": ["mean", "stacking"]},
            "train": {"finetune": ft}, "output": {"dir": str(out)}}


def _env(root: Path) -> dict[str, str]:
    """The subprocesses' environment: this checkout's code first, the audit hook, one thread each."""
    hook = root / "hook"
    hook.mkdir(exist_ok=True)
    (hook / "sitecustomize.py").write_text(_SITECUSTOMIZE)
    audit = root / "audit"
    audit.mkdir(exist_ok=True)
    src = str(Path(__file__).resolve().parents[1] / "src")
    return {**os.environ, "PYTHONPATH": os.pathsep.join([str(hook), src, os.environ.get("PYTHONPATH", "")]),
            "AUDIT_ROOT": str(root), "AUDIT_DIR": str(audit), "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}


def _audit(root: Path) -> dict[str | None, list[dict]]:
    """Rank (as started: None for rank 0) -> its processes' file events; one process per rank."""
    out: dict[str | None, list[dict]] = {}
    for f in sorted((root / "audit").glob("*.jsonl")):
        lines = [json.loads(s) for s in f.read_text().splitlines()]
        rank = lines[0]["rank"]
        assert rank not in out, f"two processes started as rank {rank}"
        out[rank] = [e for e in lines[1:]]
    return out


def _singles_cv(report: dict) -> dict[str, list[float]]:
    return {c["name"]: c["cv_scores"] for c in report["candidates"]}


@pytest.fixture(scope="module")
def ddp_and_single(tmp_path_factory) -> tuple[Path, Path, Path, subprocess.CompletedProcess]:
    root = tmp_path_factory.mktemp("ddpcli")
    data = write_digits_folder(root / "digits", per_class=12)
    env = _env(root)
    env["TRANSFUSE_FEATURE_CACHE"] = str(root / "features")
    # one process with the effective batch of the DDP run (4 per device x 2 processes)
    single = root / "single"
    (root / "single.yaml").write_text(yaml.safe_dump(_experiment(data, single, 1, 8)))
    cli("run", str(root / "single.yaml"), "--quiet", env=env, timeout=400)
    for f in (root / "audit").glob("*.jsonl"):
        f.unlink()
    env["TRANSFUSE_FEATURE_CACHE"] = str(root / "features-ddp")  # rank 0 embeds again, alone
    ddp = root / "ddp"
    (root / "ddp.yaml").write_text(yaml.safe_dump(_experiment(data, ddp, 2, 4)))
    p = cli("run", str(root / "ddp.yaml"), "--quiet", env=env, timeout=400)
    return root, single, ddp, p


def test_ddp_run_gives_the_single_process_result(ddp_and_single):
    root, single, ddp, p = ddp_and_single
    one, two = (json.loads((d / "report.json").read_text()) for d in (single, ddp))
    assert [(c["name"], c["kind"]) for c in two["candidates"]] == [(c["name"], c["kind"]) for c in one["candidates"]]
    assert two["chosen"] == one["chosen"] == "efficientnet_lite0/linear_probe"
    cv1, cv2 = _singles_cv(one), _singles_cv(two)
    # rank 0 alone embedded and fitted the probe: the same numbers as one process
    assert cv2["efficientnet_lite0/linear_probe"] == cv1["efficientnet_lite0/linear_probe"]
    # the fine-tune is another SGD trajectory (each rank draws its own 4 of each batch of 8): its
    # CV may move by what two trajectories differ by on 27 CV items (see docs/distributed.md)
    assert abs(np.mean(cv2["efficientnet_lite0/finetune"]) - np.mean(cv1["efficientnet_lite0/finetune"])) <= 0.25
    # every fold's fit and the refit ran on 2 processes (on 1 without DDP)
    fits = sorted((ddp / "work" / "efficientnet_lite0_finetune").glob("*/finetune.json"))
    assert [f.parent.name for f in fits] == ["final", "fold0", "fold1"]
    assert {json.loads(f.read_text())["world_size"] for f in fits} == {2}
    assert {json.loads(f.read_text())["world_size"]
            for f in (single / "work" / "efficientnet_lite0_finetune").glob("*/finetune.json")} == {1}
    # rank 1 took part in those 3 fits and exited 0; rank 0 waited for it
    assert f"rank 1: took part in 3 fine-tuning fit(s) of {ddp}; rank 0 wrote the run folder" in p.stdout + p.stderr
    assert [f["exit_code"] for f in two["followers"]] == [0]


def test_only_rank_0_writes(ddp_and_single):
    root, _, ddp, _ = ddp_and_single
    events = _audit(root)
    assert set(events) == {None, "1"}, "expected rank 0 and one process started by Lightning as rank 1"
    assert events["1"] == []  # not a file, folder, rename or removal under the test folder
    # rank 0 wrote the run folder (atomic writes end in a rename onto the file; model/ is renamed
    # into place as a whole) and the feature cache
    written = {e["path"] for e in events[None]}
    for f in ("config.yaml", "splits.json", "report.json", "model",
              "work/efficientnet_lite0_finetune/fold1/finetune.json",
              "work/efficientnet_lite0_finetune/fold1/logs/csv/metrics.csv"):
        assert str(ddp / f) in written, f"rank 0 did not write {f}"
    assert any(w.startswith(str(root / "features-ddp")) for w in written)


def test_ddp_run_killed_on_rank_1_resumes(tmp_path: Path):
    data = write_digits_folder(tmp_path / "digits", per_class=12)
    env = _env(tmp_path)
    env["TRANSFUSE_FEATURE_CACHE"] = str(tmp_path / "features")
    out = tmp_path / "run"
    cfg = _experiment(data, out, 2, 4)
    cfg["train"]["finetune"]["epochs"] = 3
    (tmp_path / "exp.yaml").write_text(yaml.safe_dump(cfg))
    proc = subprocess.Popen([sys.executable, "-m", "transfuse.cli", "run", str(tmp_path / "exp.yaml"), "--quiet"],
                            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)
    work = out / "work" / "efficientnet_lite0_finetune"
    fold0, ckpt = work / "fold0" / "finetune.json", work / "fold1" / "checkpoints" / "last.ckpt"
    deadline = time.time() + 300
    while not ckpt.exists() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.1)
    assert ckpt.exists(), "fold 1's fine-tune never wrote a checkpoint"
    rank1 = [int(f.stem) for f in (tmp_path / "audit").glob("*.jsonl")
             if json.loads(f.read_text().splitlines()[0])["rank"] == "1"]
    assert len(rank1) == 1
    os.kill(rank1[0], signal.SIGKILL)  # rank 1 dies in fold 1's fit, after its first epoch of 3
    try:
        proc.wait(timeout=120)  # Lightning's launcher ends rank 0 when a rank it started fails
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    assert proc.returncode != 0
    assert not (out / "report.json").exists()
    first = json.loads(fold0.read_text())

    p = cli("resume", str(out), "--quiet", env=env, timeout=400)
    assert "resume: efficientnet_lite0/linear_probe already done" in p.stdout + p.stderr
    assert "rank 1: took part in 2 fine-tuning fit(s)" in p.stdout + p.stderr  # fold 1 and the refit
    rep = json.loads((out / "report.json").read_text())
    assert [c["name"] for c in rep["candidates"]][:2] == ["efficientnet_lite0/linear_probe", "efficientnet_lite0/finetune"]
    assert json.loads(fold0.read_text()) == first  # fold 0 was finished: read back, not refitted
    fold1 = json.loads((work / "fold1" / "finetune.json").read_text())
    # both ranks continued fold 1 from rank 0's last checkpoint, with its epochs' history
    assert fold1["resumed_from_epoch"] >= 1 and fold1["world_size"] == 2
    assert [h["epoch"] for h in fold1["history"]] == [1, 2, 3]
    assert [f["exit_code"] for f in rep["followers"]] == [0]


# The Python API under Lightning's launcher: the script itself is re-run for rank 1.
_API_SCRIPT = """
import sys
import numpy as np
from sklearn.datasets import load_digits
import transfuse

d = load_digits()
keep = np.isin(d.target, [0, 1, 7])
images = (d.images[keep][:36] * 255 / 16).astype(np.uint8)
labels = d.target[keep][:36]
ft = {"epochs": 1, "batch_size": 4, "inner_val": 0, "patience": None, "num_workers": 0, "accelerator": "cpu",
      "devices": 2, "strategy": "ddp"}
run = transfuse.fit(images, labels, backbones=["bundled:efficientnet_lite0"], image_size=32, folds=2,
                    strategies=["linear_probe", "finetune"], out=sys.argv[1],
                    config={"adapt": {"baseline": False}, "fuse": {"enabled": False}, "train": {"finetune": ft}})
# rank 1's script goes on too, once rank 0 has written the report; only rank 0 lists the followers
followers = [f["exit_code"] for f in run.report().get("followers", [])]
print("chosen", run.report()["chosen"], "followers", followers, flush=True)
"""


def test_python_api_under_ddp_writes_from_rank_0_only(tmp_path: Path):
    env = _env(tmp_path)
    env["TRANSFUSE_FEATURE_CACHE"] = str(tmp_path / "features")
    (tmp_path / "fit_ddp.py").write_text(_API_SCRIPT)
    out = tmp_path / "run"
    p = subprocess.run([sys.executable, str(tmp_path / "fit_ddp.py"), str(out)], env=env, capture_output=True,
                       text=True, timeout=400)
    assert p.returncode == 0, p.stderr[-3000:]
    # both processes ran the script to its end, rank 0 after rank 1 had exited 0
    assert sorted(p.stdout.splitlines()) == ["chosen efficientnet_lite0/linear_probe followers [0]",
                                             "chosen efficientnet_lite0/linear_probe followers []"]
    events = _audit(tmp_path)
    assert set(events) == {None, "1"} and events["1"] == []
    written = {e["path"] for e in events[None]}
    inputs = next((out / "inputs").iterdir())
    assert {str(inputs / "manifest.csv"), str(inputs / "000000.png"), str(out / "report.json")} <= written
    fits = sorted((out / "work" / "efficientnet_lite0_finetune").glob("*/finetune.json"))
    assert len(fits) == 3 and {json.loads(f.read_text())["world_size"] for f in fits} == {2}
