"""report.html: one self-contained page (inline CSS, base64 PNG plots, no external URLs).

Renders the ``report.json`` dict; every optional field may be missing. Every string that came
from the user (names, paths, reasons, config) is HTML-escaped.
"""

from __future__ import annotations

import base64
import json
import math
from html import escape
from pathlib import Path
from typing import Any

from transfuse.budget import over
from transfuse.evaluate import plots
from transfuse.io import atomic_write_text

COLLAPSE_ROWS = 10
CSS = """
body{font:14px/1.45 system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:0 auto;max-width:1100px;
 padding:1.5em;color:#222}
h1{margin-bottom:.1em} h2{margin-top:1.8em;border-bottom:1px solid #ddd;padding-bottom:.2em}
.sub{color:#666} .cards{display:flex;flex-wrap:wrap;gap:.8em;margin:1em 0}
.card{border:1px solid #ddd;border-radius:8px;padding:.6em 1em;min-width:8em}
.card b{display:block;font-size:1.5em} .card span{color:#666;font-size:.9em}
table{border-collapse:collapse;margin:.5em 0} td,th{padding:.3em .7em;border-bottom:1px solid #eee;
 text-align:left;vertical-align:top} th{background:#f6f6f6} td.num{text-align:right;white-space:nowrap;
 font-variant-numeric:tabular-nums} tr.chosen{background:#e8f6e8;font-weight:600}
.tag{font-size:.8em;background:#2ca02c;color:#fff;border-radius:4px;padding:0 .4em;margin-left:.4em}
.gain{font-size:1.1em;margin:.5em 0} .pos{color:#1a7f1a} .neg{color:#b00}
img{max-width:100%;height:auto;display:block;margin:.5em 0} pre{background:#f6f6f6;padding:1em;
 overflow:auto} details{margin:.5em 0} summary{cursor:pointer;color:#245}
.chips span{display:inline-block;border:1px solid #ddd;border-radius:4px;padding:0 .4em;margin:.15em}
"""


def _e(value: Any) -> str:
    return escape(str(value), quote=True)


def _ok(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def _num(v: Any, digits: int = 3) -> str:
    return f"{v:.{digits}f}" if _ok(v) else "—"


def _pct(v: Any) -> str:
    return f"{v * 100:.1f}%" if _ok(v) else "—"


def _count(v: Any) -> str:
    if not _ok(v):
        return "—"
    for unit, size in (("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if abs(v) >= size:
            return f"{v / size:.1f}{unit}"
    return str(int(v))


def _secs(v: Any) -> str:
    if not _ok(v):
        return "—"
    return f"{v:.1f} s" if v < 120 else f"{int(v // 60)} min {int(v % 60):02d} s"


#: Timing steps measured inside another step (an embedding inside its probe candidate's time).
NESTED_TIMINGS = ("embed:",)


def _nested(step: str) -> bool:
    return step.startswith(NESTED_TIMINGS)


def _img(png: bytes, alt: str) -> str:
    return f'<img alt="{_e(alt)}" src="data:image/png;base64,{base64.b64encode(png).decode()}">'


def _table(head: list[str], rows: list[list[str]], row_class: list[str] | None = None) -> str:
    """Cells are already-escaped HTML; numeric-looking columns are right-aligned by the caller."""
    th = "".join(f"<th>{h}</th>" for h in head)
    body = "".join(
        f'<tr class="{(row_class or [""] * len(rows))[i]}">' + "".join(rows[i]) + "</tr>" for i in range(len(rows))
    )
    return f"<table><thead><tr>{th}</tr></thead><tbody>{body}</tbody></table>"


def _collapsible(summary: str, inner: str, open_: bool) -> str:
    return f"<details{' open' if open_ else ''}><summary>{summary}</summary>{inner}</details>"


def _headline(r: dict, chosen: dict | None, test: dict) -> str:
    out = [f"<h1>{_e(r.get('name') or 'transfuse run')}</h1><p class='sub'>"
           + " · ".join(_e(x) for x in (r.get("modality"), r.get("created"),
                                         r.get("transfuse_version") and f"transfuse {r['transfuse_version']}") if x)
           + "</p>"]
    if chosen is None:
        return out[0] + "<p>No candidate was chosen.</p>"
    out.append(f"<p>Chosen candidate: <b>{_e(chosen.get('name'))}</b> ({_e(chosen.get('kind') or '?')})</p>")
    ci = test.get("accuracy_ci95") or []
    acc_label = ("test accuracy, 95% CI " + f"{_pct(ci[0])}–{_pct(ci[1])}"
                 if len(ci) == 2 and _ok(ci[0]) and _ok(ci[1]) else "test accuracy")
    cards = [(acc_label, _pct(test.get("accuracy"))), ("test macro-F1", _pct(test.get("macro_f1"))),
             ("test log-loss", _num(test.get("log_loss"))), ("test ECE", _num(test.get("ece"))),
             ("CV accuracy", f"{_pct(chosen.get('cv_mean'))} ± {_num((chosen.get('cv_std') or 0) * 100, 1)}")]
    cal = r.get("calibration") or {}
    if cal.get("ece_after") is not None:
        cards.append((f"ECE after T={_num(cal.get('temperature'), 2)}", _num(cal["ece_after"])))
    out.append("<div class='cards'>" + "".join(f"<div class='card'><b>{v}</b><span>{_e(k)}</span></div>"
                                               for k, v in cards) + "</div>")
    cands = r.get("candidates") or []
    singles = [c for c in cands if c.get("kind") == "single" and c.get("cv_mean") is not None]
    if any(c.get("kind") == "fusion" for c in cands) and singles:
        best = max(singles, key=lambda c: c["cv_mean"])
        parts = []
        mine, theirs, cv_label = chosen.get("cv_mean"), best.get("cv_mean"), "CV accuracy"
        part = (chosen.get("selected") or {}).get("folds_run")
        if part and chosen.get("cv_scores") and best.get("cv_scores"):  # on the same folds' rows only
            m = min(len(chosen["cv_scores"]), len(best["cv_scores"]))
            mine, theirs = sum(chosen["cv_scores"][:m]) / m, sum(best["cv_scores"][:m]) / m
            cv_label = f"CV accuracy on the {m} fold(s) the chosen candidate ran"
        for label, a, b in (("test accuracy", test.get("accuracy"), (best.get("test") or {}).get("accuracy")),
                            (cv_label, mine, theirs)):
            if a is not None and b is not None:
                d = (a - b) * 100
                parts.append(f"<span class='{'pos' if d > 0 else 'neg' if d < 0 else ''}'>{d:+.1f} pts</span> {label}")
        out.append(f"<p class='gain'>Versus the best single model by CV, <b>{_e(best.get('name'))}</b>: "
                   + (", ".join(parts) or "no comparable numbers") + ".</p>")
    verdict = r.get("baseline") or {}
    if verdict.get("message"):
        cls = "neg" if verdict.get("transfer_loses") else "pos"
        out.append(f"<p class='gain {cls}'>{_e(verdict['message'][0].upper() + verdict['message'][1:])}.</p>")
    return "".join(out)


class _Pictures:
    """Draws the page's pictures (plots, thumbnails) while the run is within its time limit
    (``fit --time-limit``): once the limit has passed, each later picture is left out and named in
    :meth:`note`, and the numbers and tables are written all the same. Without a limit: all."""

    def __init__(self) -> None:
        self.left_out: list[str] = []

    def __call__(self, what: str, draw: Any) -> str:
        if over():
            self.left_out.append(what)
            return ""
        return draw()

    def note(self) -> str:
        if not self.left_out:
            return ""
        names = ", ".join(dict.fromkeys(self.left_out))  # each once, in page order
        return (f"<p class='sub'>Pictures left out, the time limit having passed: {_e(names)}. "
                "Every number and table is complete.</p>")


def _thumbnail(path: str, size: int = 64) -> str:
    """A small inline PNG of an image file, or '' when it cannot be read."""
    import io

    try:
        from PIL import Image

        with Image.open(path) as src:  # PIL's decompression-bomb limit applies
            img = src.convert("RGB")
        img.thumbnail((size, size))
        buf = io.BytesIO()
        img.save(buf, format="PNG")
        return _img(buf.getvalue(), "misclassified example")
    except Exception:  # noqa: BLE001  (a moved or unreadable file: the path alone is shown)
        return ""


def _misclassified(r: dict, pictures: _Pictures) -> str:
    wrong = r.get("misclassified")
    if wrong is None:
        return ""
    if not wrong:
        return "<h2>Misclassified test examples</h2><p>None: every test example was classified right.</p>"
    images = r.get("modality") == "image"
    rows = [[f"<td>{pictures('thumbnails', lambda w=w: _thumbnail(str(w.get('input')))) if images else ''}"
             f"<code>{_e(w.get('input'))}</code></td>",
             f"<td>{_e(w.get('true'))}</td>", f"<td>{_e(w.get('predicted'))}</td>",
             f"<td class='num'>{_pct(w.get('confidence'))}</td>"] for w in wrong]
    return ("<h2>Misclassified test examples</h2><p class='sub'>the chosen model's most confident mistakes "
            f"(up to {len(wrong)})</p>" + _table(["input", "true", "predicted", "confidence"], rows))


def _curves(cands: list[dict]) -> str:
    png, left_out = plots.learning_curves(cands)
    return _img(png, "learning curves") + (f"<p class='sub'>{left_out} more candidates with history not drawn.</p>"
                                           if left_out else "")


def _candidates(cands: list[dict], chosen_name: Any) -> str:
    cands = sorted(cands, key=lambda c: -(c.get("cv_mean") or 0.0))
    rows, classes = [], []
    for c in cands:
        t = c.get("test") or {}
        tag = "<span class='tag'>chosen</span>" if c.get("name") == chosen_name else ""
        part = (c.get("selected") or {}).get("folds_run")
        on = f"<br><span class='sub'>{part[0]} of {part[1]} folds</span>" if part else ""
        rows.append([f"<td>{_e(c.get('name'))}{tag}</td>", f"<td>{_e(c.get('kind') or '—')}</td>",
                     f"<td class='num'>{_pct(c.get('cv_mean'))} ± {_num((c.get('cv_std') or 0) * 100, 1)}{on}</td>"]
                    + [f"<td class='num'>{v}</td>" for v in (
                        _pct(t.get("accuracy")), _pct(t.get("macro_f1")), _num(t.get("log_loss")),
                        _secs(c.get("fit_seconds")), _count(c.get("params")),
                        _num(c.get("inference_ms_per_example"), 2))])
        classes.append("chosen" if c.get("name") == chosen_name else "")
    head = ["candidate", "kind", "CV accuracy (mean ± std)", "test accuracy", "test macro-F1",
            "test log-loss", "fit time", "params", "inference ms/example"]
    return _table(head, rows, classes)


def _per_class(per_class: dict) -> str:
    rows = [[f"<td>{_e(name)}</td>"] + [f"<td class='num'>{_num(m.get(k))}</td>" for k in ("precision", "recall", "f1")]
            + [f"<td class='num'>{_e(m.get('support', '—'))}</td>"] for name, m in per_class.items()]
    return _collapsible("per-class precision / recall / F1",
                        _table(["class", "precision", "recall", "F1", "support"], rows), False)


def _plan(r: dict) -> str:
    """The time limit's plan (what ran, with how many epochs, what was skipped or stopped, why)
    and every skipped candidate; empty when neither applies."""
    plan, skipped = r.get("plan") or {}, r.get("skipped") or []
    if not plan and not skipped and not r.get("choice"):
        return ""
    out = []
    if plan:
        out.append(f"<h2>Time limit</h2><p>Time limit {_secs(plan.get('time_limit'))} for the whole command "
                   f"(preset {_e(plan.get('preset') or '—')}); the work stopped after {_secs(plan.get('work_seconds'))}, "
                   f"{_secs(plan.get('reserve_s'))} kept for the report. Fine-tuning was planned from one measured "
                   "training step and one inference batch.</p>")
        rows = [[f"<td>{_e(d.get('name'))}</td>", f"<td>{_e(d.get('action'))}</td>", f"<td>{_e(d.get('reason'))}</td>"]
                for d in plan.get("decisions") or []]
        if rows:
            out.append(_table(["candidate", "decision", "why"], rows))
    for c in r.get("choice") or []:  # a bag of only some folds against the leader, on the same rows
        out.append(f"<p>{_e(c.get('challenger'))} (scored on {_e(c.get('folds'))} fold(s) only) against "
                   f"{_e(c.get('leader'))} on the same rows: {_pct(c.get('challenger_score'))} vs "
                   f"{_pct(c.get('leader_score'))}; chosen: {_e(c.get('chosen'))}.</p>")
    if skipped:
        rows = [[f"<td>{_e(x.get('name'))}</td>", f"<td>{_e(x.get('reason'))}</td>"] for x in skipped]
        out.append(f"<h2>Skipped candidates ({len(skipped)})</h2>" + _table(["candidate", "reason"], rows))
    return "".join(out)


def render_report_html(report: dict) -> str:
    """The whole page as a string (``report`` is not modified)."""
    r = report
    cands: list[dict] = list(r.get("candidates") or [])
    chosen = next((c for c in cands if c.get("name") == r.get("chosen")), None)
    test = r.get("test") or (chosen or {}).get("test") or {}
    task = r.get("task") or {}
    classes = [str(c) for c in task.get("classes") or []]
    s = [_headline(r, chosen, test)]
    pictures = _Pictures()
    if cands:
        s.append("<h2>Candidates</h2>" + _candidates(cands, r.get("chosen")))
        if any(c.get("cv_mean") is not None for c in cands):
            s.append(pictures("candidates chart", lambda: _img(plots.candidates_chart(cands, r.get("chosen")),
                                                               "candidates: CV accuracy and test accuracy")))
        cv = r.get("cv") or {}
        if cv:
            s.append(f"<p class='sub'>{_e(cv.get('folds', '?'))}-fold cross-validation, "
                     f"seed {_e(cv.get('seed', '?'))}; the candidate is chosen by CV, the test split is used once.</p>")
    s.append(_plan(r))
    if test.get("confusion_matrix"):
        s.append("<h2>Confusion matrix (test, chosen candidate)</h2>"
                 + pictures("confusion matrix", lambda: _img(plots.confusion_matrix_plot(
                     test["confusion_matrix"], classes), "confusion matrix")))
    if test.get("per_class"):
        s.append(_per_class(test["per_class"]))
    s.append(_misclassified(r, pictures))
    if any(c.get("history") for c in cands):
        s.append("<h2>Learning curves</h2><p class='sub'>thin lines: folds; thick: mean over folds</p>"
                 + pictures("learning curves", lambda: _curves(cands)))
    cal = r.get("calibration") or {}
    labels = {"before": "test, uncalibrated", "after": "test, temperature-scaled"}
    curves = {labels[k]: cal[f"reliability_{k}"] for k in labels if cal.get(f"reliability_{k}")}
    if not curves and test.get("reliability"):
        curves = {"test": test["reliability"]}
    if curves:
        note = (f"Temperature scaling, T = {_num(cal.get('temperature'), 3)}; test log-loss "
                f"{_num(cal.get('log_loss_before'))} → {_num(cal.get('log_loss_after'))}."
                if cal.get("temperature") is not None else "")
        s.append("<h2>Calibration</h2>" + (f"<p>{note}</p>" if note else "")
                 + pictures("reliability diagram", lambda: _img(plots.reliability_diagram(curves),
                                                                "reliability diagram")))
    if r.get("search"):
        srch = r["search"]
        best = srch.get("best_head") or srch.get("best_params")
        s.append("<h2>Search</h2><p>Hyperparameter search: <a href='search/search.html'>trials, optimisation "
                 "history and parameter importances</a>"
                 + (f"; best head <code>{_e(json.dumps(best, default=str))}</code>" if best else "") + "."
                 + (f" Candidates' CV: {_e(srch['cv'])}." if srch.get("cv") else "") + "</p>")
    quarantined = r.get("quarantined") or []
    s.append(f"<h2>Quarantined inputs ({len(quarantined)})</h2>")
    if quarantined:
        rows = [[f"<td><code>{_e(q.get('path'))}</code></td>", f"<td>{_e(q.get('reason'))}</td>"] for q in quarantined]
        s.append(_collapsible(f"{len(quarantined)} inputs skipped", _table(["path", "reason"], rows),
                              len(quarantined) <= COLLAPSE_ROWS))
    else:
        s.append("<p>None: every input was usable.</p>")
    outside = r.get("outside_data_root") or []
    if outside:  # links out of the data folder, manifest rows with ../ or absolute paths
        s.append(f"<h2>Inputs outside the data folder ({len(outside)})</h2><p>Read, but the file lies outside "
                 "its data folder (a link, a <code>../</code> or an absolute manifest path): check that these "
                 "files are meant to be in the data.</p>")
        rows = [[f"<td><code>{_e(o.get('path'))}</code></td>", f"<td><code>{_e(o.get('resolved'))}</code></td>",
                 f"<td><code>{_e(o.get('root'))}</code></td>"] for o in outside]
        s.append(_collapsible(f"{len(outside)} inputs", _table(["path", "file read", "data folder"], rows),
                              len(outside) <= COLLAPSE_ROWS))
    s.append("<h2>Task</h2><p>" + " · ".join(
        f"{_e(k)}: {_e(task[k])}" for k in ("n_train", "n_test") if task.get(k) is not None)
        + f" · {len(classes)} classes</p>")
    counts = task.get("class_counts") or {}
    if classes or counts:
        s.append("<div class='chips'>" + "".join(f"<span>{_e(c)}: {_e(counts.get(c, '—'))}</span>"
                                                 for c in (classes or list(counts))) + "</div>")
    timings = r.get("timings") or {}
    if timings:
        rows = [[f"<td>{_e(k)}{' <span class=sub>(within its candidate)</span>' if _nested(k) else ''}</td>",
                 f"<td class='num'>{_secs(v)}</td>"] for k, v in timings.items()]
        total = sum(v for k, v in timings.items() if _ok(v) and not _nested(k))
        rows.append(["<td><b>total</b> <span class=sub>(steps not within another)</span></td>",
                     f"<td class='num'><b>{_secs(total)}</b></td>"])
        if _ok(r.get("wall_seconds")):
            rows.append(["<td>wall clock, start to report</td>", f"<td class='num'>{_secs(r['wall_seconds'])}</td>"])
        s.append("<h2>Timings</h2>" + _table(["step", "time"], rows))
    if r.get("config") is not None:
        s.append("<h2>Configuration</h2>" + _collapsible(
            "resolved config", f"<pre>{_e(json.dumps(r['config'], indent=2, default=str))}</pre>", False))
    s.insert(1, pictures.note())
    title = _e(f"transfuse report: {r.get('name') or 'run'}")
    return (f"<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'><title>{title}</title>"
            f"<meta name='viewport' content='width=device-width,initial-scale=1'><style>{CSS}</style></head>"
            f"<body>{''.join(s)}</body></html>\n")


def write_report_html(report: dict, run_dir: Path) -> Path:
    """Write ``run_dir/report.html`` atomically and return its path."""
    path = Path(run_dir) / "report.html"
    atomic_write_text(path, render_report_html(report))
    return path
