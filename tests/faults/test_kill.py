"""Kill tests: a run SIGKILLed at each stage (embedding, a fold fit, fusion, report writing) and
resumed each time, a run stopped by a full disk and resumed, and two runs sharing one feature
cache at the same time, all end equal to an uninterrupted run: the same candidates, the same CV
scores and out-of-fold / test probabilities (to 1e-6), the same choice.

The second kill is at the third fold fit (``fold:3``): MiniLM's probe is finished and saved, TF-IDF
is in its first fold. The kills are real (``SIGKILL`` from ``transfuse.faults.fault_point``, the one test hook, set by
``TRANSFUSE_FAULT_KILL_AT``), and so is the full disk (``RLIMIT_FSIZE``: a write past the limit
fails with ``EFBIG``, as a full disk fails with ``ENOSPC``). To pay for the imports once, one
subprocess imports the pipeline and forks a child per command (``transfuse.cli.main`` with the
command's arguments): ~25 s of CPU for 11 commands instead of ~70 s.

The task: 40 short texts (spam/ham with shared words, so the CV is not 1.0), MiniLM-L3 (features,
cached) and TF-IDF, 2 folds, the four ensembles. Two search workers sharing one study end at exactly
N trials: ``tests/test_search.py`` (``test_two_workers_share_one_storage...``, ``test_killed_search...``).
"""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import yaml

pytestmark = pytest.mark.real

SRC = str(Path(__file__).resolve().parents[2] / "src")
STAGES = ("embed", "fold", "fusion", "report")
FILE_SIZE_LIMIT = 9000  # bytes: the TF-IDF candidate's model.json (~10 KB) is the first file over it

# Imports the pipeline once, then runs each step's commands in forked children (started together,
# waited for together); prints every child's exit status (-9: killed) and the listed folders' files.
ZYGOTE = textwrap.dedent("""
    import json, os, resource, sys, traceback
    from pathlib import Path
    import transfuse.cli, transfuse.pipeline, transfuse.pipeline.fusions, transfuse.pipeline.report
    import transfuse.pipeline.resume, transfuse.train.cache, transfuse.data.text, transfuse.fuse.cv
    import transfuse.backbones.text.minilm_onnx, transfuse.backbones.text.tfidf, transfuse.evaluate.report_html
    from transformers import BertConfig, BertModel  # what building MiniLM imports (~4 s)
    from matplotlib.figure import Figure  # and the report's plots
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    def child(argv, env, log, fsize=None):
        sys.stdout.flush(); sys.stderr.flush()
        pid = os.fork()
        if pid:
            return pid
        code = 1
        try:
            fd = os.open(log, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
            os.dup2(fd, 1); os.dup2(fd, 2)
            os.environ.update(env)
            if fsize:
                resource.setrlimit(resource.RLIMIT_FSIZE, (fsize, fsize))
            sys.argv = ["transfuse", *argv]
            try:
                transfuse.cli.main()
                code = 0
            except SystemExit as e:
                code = e.code if isinstance(e.code, int) else 1
        except BaseException:
            traceback.print_exc()
        finally:
            sys.stdout.flush(); sys.stderr.flush()
            os._exit(code)

    out = []
    for step in json.loads(sys.argv[1]):
        pids = [child(**c) for c in step["run"]]
        waited = [os.wait4(p, 0) for p in pids]
        codes = [os.waitstatus_to_exitcode(w[1]) for w in waited]
        files = {d: sorted(str(p.relative_to(d)) for p in Path(d).rglob("*") if p.is_file())
                 for d in step.get("list", [])}
        out.append({"codes": codes, "files": files, "cpu": [round(w[2].ru_utime + w[2].ru_stime, 1) for w in waited]})
    print(json.dumps(out))
""")


def write_texts(path: Path) -> None:
    r = random.Random(0)
    shared = "the a report today please see attached call".split()
    words = {"spam": "win money prize free offer cash click now".split(),
             "ham": "meeting lunch report project team schedule notes agenda".split()}
    rows = ["text,label"]
    for i in range(40):
        lab, other = ("spam", "ham") if i % 2 else ("ham", "spam")
        toks = r.sample(words[lab], 2) + r.sample(words[other], 1) + r.sample(shared, 3)
        r.shuffle(toks)
        rows.append(" ".join(toks) + "," + lab)
    path.write_text("\n".join(rows) + "\n")


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> tuple[Path, list[dict]]:
    root = tmp_path_factory.mktemp("kill")
    write_texts(root / "texts.csv")
    (root / "exp.yaml").write_text(yaml.safe_dump({
        "name": "kill", "seed": 0, "split": {"folds": 2},
        "data": {"source": "text_table", "path": str(root / "texts.csv"), "modality": "text"},
        "backbones": ["bundled:minilm_l3", "tfidf"]}))

    def cmd(argv: list[str], log: str, cache: str, kill: str | None = None, fsize: int | None = None) -> dict:
        env = {"TRANSFUSE_FEATURE_CACHE": str(root / cache), "TRANSFUSE_FAULT_KILL_AT": kill or ""}
        return {"argv": argv + ["--quiet"], "env": env, "log": str(root / f"{log}.log"), "fsize": fsize}

    run = ["run", str(root / "exp.yaml"), "--out"]
    killed, full = str(root / "killed"), str(root / "full")
    plan = [  # two or three commands at a time: independent folders and caches, but the shared one
        {"run": [cmd(run + [str(root / "ref")], "ref", "ref_cache"),
                 cmd(run + [killed], "kill_embed", "kill_cache", "embed")], "list": [killed]},
        {"run": [cmd(["resume", killed], "kill_fold", "kill_cache", "fold:3"),  # TF-IDF's first fold
                 cmd(run + [full], "full", "full_cache", fsize=FILE_SIZE_LIMIT)], "list": [killed, full]},
        {"run": [cmd(["resume", killed], "kill_fusion", "kill_cache", "fusion"),
                 cmd(["resume", full], "full_resume", "full_cache")], "list": [killed]},
        {"run": [cmd(["resume", killed], "kill_report", "kill_cache", "report"),
                 cmd(run + [str(root / "shared_a")], "shared_a", "shared_cache"),
                 cmd(run + [str(root / "shared_b")], "shared_b", "shared_cache")], "list": [killed]},
        {"run": [cmd(["resume", killed], "resume", "kill_cache")]},
    ]
    p = subprocess.run([sys.executable, "-c", ZYGOTE, json.dumps(plan)], capture_output=True, text=True,
                       timeout=600, env={**os.environ, "PYTHONPATH": SRC, "HF_HUB_OFFLINE": "1",
                                         "COLUMNS": "200"})
    assert p.returncode == 0, p.stderr[-3000:]
    print("kill tests: CPU s per command:", [s["cpu"] for s in json.loads(p.stdout.strip().splitlines()[-1])])
    return root, json.loads(p.stdout.strip().splitlines()[-1])


def log(root: Path, name: str) -> str:
    return (root / f"{name}.log").read_text()


def assert_same_run(a: Path, b: Path) -> None:
    """Same candidates in the same order, CV scores and OOF/test probabilities to 1e-6, same choice
    and the same shipped test probabilities."""
    ra, rb = (json.loads((r / "report.json").read_text()) for r in (a, b))
    assert [c["name"] for c in ra["candidates"]] == [c["name"] for c in rb["candidates"]]
    for ca, cb in zip(ra["candidates"], rb["candidates"]):
        np.testing.assert_allclose(ca["cv_scores"], cb["cv_scores"], atol=1e-6, err_msg=ca["name"])
    assert ra["chosen"] == rb["chosen"]
    for folder in sorted((a / "candidates").iterdir()):
        with np.load(folder / "proba.npz") as pa, np.load(b / "candidates" / folder.name / "proba.npz") as pb:
            for k in ("oof", "test"):
                np.testing.assert_allclose(pa[k], pb[k], atol=1e-6, err_msg=f"{folder.name} {k}")
    np.testing.assert_allclose(np.load(a / "model" / "test_proba.npy"), np.load(b / "model" / "test_proba.npy"),
                               atol=1e-6)


def test_killed_at_each_stage_and_resumed_ends_like_an_uninterrupted_run(runs):
    root, steps = runs
    assert steps[0]["codes"][0] == 0, log(root, "ref")
    ref = json.loads((root / "ref" / "report.json").read_text())
    assert len(ref["candidates"]) == 6 and 0.6 < min(c["cv_mean"] for c in ref["candidates"]) < 1.0
    # each kill was a SIGKILL at its stage, and left what that stage had not yet written unwritten
    kills = [steps[0]["codes"][1], steps[1]["codes"][0], steps[2]["codes"][0], steps[3]["codes"][0]]
    assert kills == [-9, -9, -9, -9], [log(root, f"kill_{s}") for s in STAGES]
    after = [steps[i]["files"][str(root / "killed")] for i in range(4)]
    cands = [sorted({f.split("/")[1] for f in files if f.startswith("candidates/")}) for files in after]
    assert cands[0] == []  # killed while embedding
    assert cands[1] == ["minilm_l3_linear_probe"]  # in TF-IDF's first fold, MiniLM's probe finished
    assert cands[2] == ["minilm_l3_linear_probe", "tfidf"]  # at the start of the fusions
    assert len(cands[3]) == 6 and "model/model.json" in after[3]  # promoted, not reported
    assert not any(f.startswith("report") for files in after for f in files)
    assert not any(f.endswith(".tmp") for files in after for f in files)  # no half-written file
    assert "resume: minilm_l3/linear_probe already done" in log(root, "kill_fusion")
    assert "resume: tfidf already done" in log(root, "kill_report")
    assert steps[4]["codes"] == [0], log(root, "resume")
    assert_same_run(root / "killed", root / "ref")
    for name in ["kill_" + s for s in STAGES] + ["resume"]:
        assert "Traceback" not in log(root, name), log(root, name)


def test_a_full_disk_stops_the_run_with_one_line_and_resume_finishes_it(runs):
    root, steps = runs
    assert steps[1]["codes"][1] == 2, log(root, "full")
    err = log(root, "full").strip().splitlines()
    assert "Traceback" not in log(root, "full")
    assert err[-1] == (f"error: out of disk space writing '{root}/full/candidates/tfidf/model.json' (File too "
                       "large); free some space (or raise the file-size limit), then continue with 'transfuse "
                       "resume RUN_DIR': finished steps are kept")
    # the feature cache could not take its shard either: a warning, the features kept in memory
    assert sum(ln.startswith("warning: feature cache") for ln in err) == 1
    files = steps[1]["files"][str(root / "full")]
    assert "candidates/minilm_l3_linear_probe/result.json" in files and "report.json" not in files
    assert "candidates/tfidf/result.json" not in files and not any(f.endswith(".tmp") for f in files)
    assert steps[2]["codes"][1] == 0, log(root, "full_resume")
    assert "resume: minilm_l3/linear_probe already done" in log(root, "full_resume")
    assert_same_run(root / "full", root / "ref")


def test_two_runs_sharing_a_feature_cache_at_once_end_alike(runs):
    root, steps = runs
    assert steps[3]["codes"][1:] == [0, 0], log(root, "shared_a") + log(root, "shared_b")
    for name in ("shared_a", "shared_b"):
        assert "warning" not in log(root, name) and "Traceback" not in log(root, name)
        assert_same_run(root / name, root / "ref")

    def features(cache: Path) -> dict[str, np.ndarray]:
        (key,) = [m.parent for m in cache.glob("*/meta.json")]  # one backbone with features: MiniLM
        table = {}
        for shard in key.glob("shard-*.npz"):
            with np.load(shard) as z:
                table.update(zip(z["hashes"].tolist(), z["features"]))
        return table

    shared, ref = features(root / "shared_cache"), features(root / "ref_cache")
    assert len(shared) == len(ref) == 40 and shared.keys() == ref.keys()
    np.testing.assert_allclose(np.stack([shared[h] for h in ref]), np.stack(list(ref.values())), atol=1e-6)
