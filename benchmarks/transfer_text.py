"""Text transfer benchmark: MiniLM-L6 and MiniLM-L3 vs TF-IDF on WordNet nouns and SpamAssassin.

WordNet nouns, all 26 supersenses (gloss -> lexicographer file, ``--per-class`` glosses per
class) and SpamAssassin (ham vs spam, ``--spam-per-class`` e-mails per label), through the real
pipeline (:func:`transfuse.pipeline.run_experiment`, validated configs, one seed, one split):

* ``tfidf``: TF-IDF word + char n-grams + logistic regression (the no-transfer baseline);
* ``linear_probe``: frozen mean-pooled features + a linear head; the head's weight decay is
  chosen by 3-fold CV among ``--weight-decays`` (every setting is reported, the pick flagged);
* ``lp_ft`` / ``finetune``: fine-tuning with (LP-FT) or without a probe-initialised head, batch 32,
  ``--epochs`` epochs at ``--lr`` (head 10x) unless the ``--finetune`` spec overrides them; the
  default is :data:`CHOSEN_FINETUNE`.

Every candidate of a task shares the split and folds (same data, seed and split settings), so
CV and test numbers compare directly. The best MiniLM candidate is picked by CV, never by test.
Results are written after every group, so an interrupted run still leaves its table; a finished
group in ``--out`` is read back, not rerun.

    nice -n 5 .venv/bin/python benchmarks/transfer_text.py [--quick]
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).parent))
os.environ.setdefault("HF_HUB_OFFLINE", "1")

from _common import write_results  # noqa: E402

from transfuse.config import validate_config  # noqa: E402

#: The fine-tuning candidate chosen for WordNet (docs/text.md): LP-FT from the probe head with the
#: CV-picked weight decay (a weaker head already fits its fold, leaving LP-FT no gradient), 2 epochs,
#: backbone lr 1e-4 with the head at the same lr (it starts trained), checkpoint by val accuracy.
CHOSEN_FINETUNE = "minilm_l6/lp_ft@0.1:epochs=2,head_lr=1x,monitor=val_accuracy"

COLUMNS = ["task", "candidate", "setting", "cv_mean", "cv_std", "test_accuracy", "test_macro_f1",
           "seconds", "picked"]


def data_section(task: str, args: argparse.Namespace) -> dict[str, Any]:
    if task == "wordnet-nouns-26":
        return {"source": "wordnet", "modality": "text",
                "options": {"pos": "noun", "max_per_class": args.per_class, "seed": 0}}
    return {"source": "spamassassin", "modality": "text",
            "options": {"max_per_class": args.spam_per_class, "seed": 0}}


def groups(task: str, args: argparse.Namespace) -> list[tuple[str, str, list[str], dict[str, Any]]]:
    """``(group name, backbone, strategies, train section)`` in the order they run."""
    max_len = args.max_length if task.startswith("wordnet") else args.spam_max_length
    out: list[tuple[str, str, list[str], dict[str, Any]]] = [("tfidf", "tfidf", [], {})]
    for bb in ("minilm_l6", "minilm_l3"):
        for wd in args.weight_decays:
            out.append((f"{bb}/probe-wd{wd:g}", f"bundled:{bb}", ["linear_probe"],
                        {"head": {"weight_decay": wd}}))
    if task.startswith("wordnet"):
        for spec in args.finetune:
            name, wd, overrides = parse_finetune_spec(spec)
            bb, strategy = name.split("/")
            partial = {k: overrides.pop(k) for k in ("blocks", "init") if k in overrides}
            ft = {"epochs": args.epochs, "batch_size": 32, "lr": args.lr, "patience": None, **overrides}
            train: dict[str, Any] = {"finetune": ft}
            if partial:  # partial_ft's own settings (train.partial)
                train["partial"] = partial
                overrides.update(partial)
            group = name
            if wd is not None:  # the LP-FT probe's head weight decay (e.g. the probe's CV pick)
                train["head"] = {"weight_decay": wd}
                group += f"-wd{wd:g}"
            if overrides:
                group += "-" + "-".join(f"{k}{v}" for k, v in overrides.items())
            out.append((group, f"bundled:{bb}", [strategy], train))
    return [(g, b, s, {**t, "max_length": max_len}) for g, b, s, t in out]


def parse_finetune_spec(spec: str) -> tuple[str, float | None, dict[str, Any]]:
    """``BACKBONE/STRATEGY[@WD][:key=value,...]`` -> (name, probe head weight decay, finetune overrides).

    >>> parse_finetune_spec("minilm_l6/lp_ft@0.1:epochs=3,head_lr=1x")
    ('minilm_l6/lp_ft', 0.1, {'epochs': 3, 'head_lr': '1x'})
    """
    head, _, opts = spec.partition(":")
    name, _, wd = head.partition("@")
    overrides: dict[str, Any] = {}
    for item in filter(None, opts.split(",")):
        key, _, value = item.partition("=")
        v: Any = value
        for cast in (int, float):
            try:
                v = cast(value)
                break
            except ValueError:
                pass
        overrides[key] = v
    return name, float(wd) if wd else None, overrides


def make_config(task: str, group: str, backbone: str, strategies: list[str], train: dict[str, Any],
                args: argparse.Namespace) -> Any:
    train = dict(train)
    max_len = train.pop("max_length")
    # head_lr pinned to the value these results were measured with (the schema default is now
    # "auto": 10x for a new head, 1x for LP-FT's), so finished groups' configs still match
    train["finetune"] = {"head_lr": "10x", **train.get("finetune", {})}
    bcfg: Any = backbone if backbone == "tfidf" else {"name": backbone, "options": {"max_length": max_len}}
    return validate_config({
        "name": f"{task}-{group}".replace("/", "-"), "seed": 0, "data": data_section(task, args),
        "split": {"folds": args.folds, "test_size": 0.2}, "backbones": [bcfg],
        "adapt": {"strategies": strategies or ["linear_probe"]}, "train": train,
        "fuse": {"enabled": False},  # this benchmark measures transfer; fusion has its own
    })


#: Config sections that decide a group's numbers (compared when a finished group is read back).
RESULT_SECTIONS = ("seed", "data", "split", "preprocess", "augment", "backbones", "adapt", "train",
                   "evaluate", "calibration")


def finished_report(cfg: Any, run_dir: Path) -> dict[str, Any] | None:
    """The report of a finished run of this config in ``run_dir`` (else None), so a later run
    assembles the whole table without loading a backbone per finished group. Only the sections
    that decide these results are compared (:data:`RESULT_SECTIONS`; this benchmark runs no
    search, fusion or export), and settings added to the schema since that run (absent from its
    ``config.yaml``) do not count as a difference; every other recorded setting must match."""
    from transfuse.io import read_json

    report = run_dir / "report.json"
    return read_json(report) if report.is_file() and same_results_config(cfg, run_dir) else None


def same_results_config(cfg: Any, run_dir: Path) -> bool:
    """``run_dir/config.yaml`` agrees with ``cfg`` on :data:`RESULT_SECTIONS` (see
    :func:`finished_report`)."""
    import yaml

    from transfuse.config import config_to_yaml

    cfg_file = run_dir / "config.yaml"
    if not cfg_file.is_file():
        return False
    old, new = (yaml.safe_load(text) for text in (cfg_file.read_text(encoding="utf-8"), config_to_yaml(cfg)))
    return all(_within(old.get(k), new.get(k)) for k in RESULT_SECTIONS)


def adopt_run_folder(cfg: Any, run_dir: Path) -> None:
    """Let an unfinished group resume after the schema changed in sections that do not decide its
    numbers: rewrite ``config.yaml`` to the current schema when :func:`same_results_config`."""
    from transfuse.config import config_to_yaml

    if same_results_config(cfg, run_dir):
        (run_dir / "config.yaml").write_text(config_to_yaml(cfg), encoding="utf-8")


def _within(old: Any, new: Any) -> bool:
    """Every setting of ``old`` is in ``new`` with the same value (mappings compared key-wise)."""
    if isinstance(old, dict) and isinstance(new, dict):
        return all(k in new and _within(v, new[k]) for k, v in old.items())
    return old == new


def fine_tune_seconds(run_dir: Path, candidate: dict[str, Any]) -> float:
    """A fine-tuned candidate's training time: the sum of its fits' own wall times (folds and
    refit, from each ``finetune.json`` under ``work/NAME``), so a resumed run, or fits run in several
    processes, still reports what the training cost; the candidate's ``fit_seconds`` otherwise."""
    import json

    from transfuse.artifacts.store import RunFolder

    markers = sorted(RunFolder(run_dir).work_dir(candidate["name"]).glob("*/finetune.json"))
    if not markers:
        return float(candidate["fit_seconds"])
    return float(sum(json.loads(m.read_text())["seconds"] for m in markers))


def rows_of(task: str, group: str, report: dict[str, Any], run_dir: Path) -> list[dict[str, Any]]:
    rows = []
    for c in report["candidates"]:
        embed = report["timings"].get(f"embed:{c['name'].split('/')[0]}", 0.0)
        setting = group.split("/", 1)[1] if "/probe-" in group else group.partition("-")[2]
        rows.append({"task": task, "candidate": c["name"], "setting": setting,
                     "cv_mean": c["cv_mean"], "cv_std": c["cv_std"],
                     "test_accuracy": c["test"]["accuracy"], "test_macro_f1": c["test"]["macro_f1"],
                     "seconds": c["fit_seconds"] + embed if c["strategy"] == "linear_probe"
                     else fine_tune_seconds(run_dir, c)})
    return rows


def pick(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """Flag the CV-best head setting per probe, and report the CV-best MiniLM candidate's margin."""
    summary: dict[str, Any] = {}
    for task in dict.fromkeys(r["task"] for r in rows):
        mine = [r for r in rows if r["task"] == task]
        for r in mine:
            r["picked"] = ""
        for probe in ("minilm_l6/linear_probe", "minilm_l3/linear_probe"):
            cands = [r for r in mine if r["candidate"] == probe]
            if cands:
                max(cands, key=lambda r: r["cv_mean"])["picked"] = "head (CV)"
        minilm = [r for r in mine if r["candidate"].startswith("minilm")
                  and (r["candidate"].endswith(("lp_ft", "finetune")) or r["picked"])]
        tfidf = next((r for r in mine if r["candidate"] == "tfidf"), None)
        if minilm and tfidf:
            best = max(minilm, key=lambda r: r["cv_mean"])
            best["picked"] = (best["picked"] + ", " if best["picked"] else "") + "best MiniLM (CV)"
            summary[f"{task}: best MiniLM by CV"] = best["candidate"] + (f" {best['setting']}" if best["setting"] else "")
            summary[f"{task}: test accuracy, best MiniLM - TF-IDF"] = round(
                best["test_accuracy"] - tfidf["test_accuracy"], 4)
    return summary


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="tiny settings, to check the script runs")
    ap.add_argument("--tasks", nargs="*", default=["wordnet-nouns-26", "spamassassin"])
    ap.add_argument("--per-class", type=int, default=60, help="WordNet glosses per supersense")
    ap.add_argument("--spam-per-class", type=int, default=300, help="SpamAssassin e-mails per label")
    ap.add_argument("--max-length", type=int, default=64, help="tokens per gloss")
    ap.add_argument("--spam-max-length", type=int, default=128, help="tokens per e-mail")
    ap.add_argument("--folds", type=int, default=3)
    ap.add_argument("--weight-decays", type=float, nargs="*", default=[3e-4, 1e-3, 3e-3, 1e-2, 3e-2, 1e-1, 3e-1, 1.0])
    ap.add_argument("--finetune", nargs="*", default=[CHOSEN_FINETUNE],
                    help="fine-tuning candidates on WordNet, run last: BACKBONE/lp_ft|finetune, optionally "
                         "@WD: the weight decay of the probe head LP-FT starts from (default 1e-3), and "
                         ":key=value,... train.finetune settings over --epochs/--lr (e.g. :epochs=2,head_lr=1x)")
    ap.add_argument("--epochs", type=int, default=1)
    ap.add_argument("--lr", type=float, default=1e-4)
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    ap.add_argument("--skip-probes", action="store_true",
                    help="run only the fine-tuning groups (e.g. in a second process; a later full run "
                         "resumes every finished group from --out and writes the whole table)")
    ap.add_argument("--name", default="transfer_text", help="results file name")
    ap.add_argument("--out", default="benchmarks/out/transfer_text_r2")
    args = ap.parse_args()
    if args.quick:
        args.per_class, args.spam_per_class, args.epochs, args.folds = 8, 20, 1, 2
        args.weight_decays, args.finetune = [1e-3], ["minilm_l3/lp_ft"]
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    from transfuse.pipeline import run_experiment

    name = args.name + ("_quick" if args.quick else "")
    rows: list[dict[str, Any]] = []
    extra: dict[str, Any] = {}
    plan = [(t, g) for t in args.tasks for g in groups(t, args) if not g[2] or g[2] == ["linear_probe"]]
    plan += [(t, g) for t in args.tasks for g in groups(t, args) if g[2] and g[2] != ["linear_probe"]]
    if args.skip_probes:
        plan = [(t, g) for t, g in plan if g[2] and g[2] != ["linear_probe"]]
    for task, (group, backbone, strategies, train) in plan:
        cfg = make_config(task, group, backbone, strategies, train, args)
        t = time.perf_counter()
        run_dir = Path(args.out) / task / group.replace("/", "-")
        report = finished_report(cfg, run_dir)
        if report is None:
            adopt_run_folder(cfg, run_dir)
            report = run_experiment(cfg, run_dir, progress=False)
        print(f"{task} {group}: {time.perf_counter() - t:.0f} s", flush=True)
        rows += rows_of(task, group, report, run_dir)
        extra[f"{task} train/test"] = f"{report['task']['n_train']}/{report['task']['n_test']}"
        extra.update(pick(rows))
        extra["load average (1, 5, 15 min) at the end"] = [round(x, 2) for x in os.getloadavg()]
        md = write_results(name, rows, COLUMNS, {**extra, "settings": {
            k: v for k, v in vars(args).items() if k not in ("out", "quick", "skip_probes", "name")}})
    print(md)


if __name__ == "__main__":
    main()
