"""``search.html``: per stage, the optimisation history, parameter importances, best parameters
and the trials table."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np


def write_search_html(summaries: list[dict[str, Any]], folder: Path) -> Path:
    """``search.html``: per stage, the optimisation history, importances, best params, trials."""
    import base64
    import html

    from transfuse.io import atomic_write_text

    parts = [("<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'><title>transfuse search</title>"
              "<style>body{font-family:system-ui,sans-serif;max-width:1100px;margin:2em auto;padding:0 1em}"
              "table{border-collapse:collapse;font-size:13px}td,th{border-bottom:1px solid #ddd;padding:3px 8px;"
              "text-align:left}img{max-width:100%}</style></head><body><h1>Hyperparameter search</h1>")]
    for s in summaries:
        parts.append(f"<h2>{html.escape(s['stage'])}: study {html.escape(s['study'])}</h2>"
                     f"<p>{s['n_trials']} trials ({s['n_complete']} complete, {s['n_pruned']} pruned); best CV "
                     f"score {_fmt(s['best_value'], 4)}; best "
                     f"parameters <code>{html.escape(str(s['best_params']))}</code></p>")
        for png in (history_png(s), importance_png(s)):
            if png:
                parts.append(f"<img alt='plot' src='data:image/png;base64,{base64.b64encode(png).decode()}'>")
        rows = sorted(s["trials"], key=lambda r: -(r["value"] if r["value"] is not None else -1e9))
        parts.append("<table><tr><th>#</th><th>state</th><th>CV score</th><th>seconds</th><th>params</th></tr>"
                     + "".join(f"<tr><td>{r['number']}</td><td>{r['state']}</td><td>"
                               f"{_fmt(r['value'], 4)}</td><td>{_fmt(r['seconds'], 2)}</td><td><code>"
                               f"{html.escape(str(r['params']))}</code></td></tr>" for r in rows) + "</table>")
    path = folder / "search.html"
    atomic_write_text(path, "".join(parts) + "</body></html>\n")
    return path


def _fmt(v: float | None, digits: int) -> str:
    return "" if v is None else f"{v:.{digits}f}"


def history_png(s: dict[str, Any]) -> bytes | None:
    """Optimisation history: each complete trial's CV score and the best so far."""
    from transfuse.evaluate.plots import _figure, _png

    pts = [(r["number"], r["value"]) for r in s["trials"] if r["state"] == "COMPLETE"]
    if not pts:
        return None
    x, v = np.array(pts, dtype=float).T
    fig = _figure(7, 3.2)
    ax = fig.add_subplot()
    ax.scatter(x, v, s=10, alpha=0.6, label="trial")
    ax.step(x, np.maximum.accumulate(v), where="post", color="#d62728", label="best so far")
    ax.set_xlabel("trial")
    ax.set_ylabel("CV score")
    ax.set_title(f"optimisation history ({s['stage']})")
    ax.legend(loc="lower right")
    return _png(fig)


def importance_png(s: dict[str, Any]) -> bytes | None:
    from transfuse.evaluate.plots import _figure, _png

    imp = s.get("importances") or {}
    if not imp:
        return None
    names = list(imp)[::-1]
    fig = _figure(7, 0.4 * len(names) + 1.2)
    ax = fig.add_subplot()
    ax.barh(names, [imp[n] for n in names], color="#4c78a8")
    ax.set_xlabel("importance (fANOVA)")
    ax.set_title(f"parameter importances ({s['stage']})")
    return _png(fig)
