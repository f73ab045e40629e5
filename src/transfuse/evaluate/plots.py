"""Report plots as PNG bytes (matplotlib Agg canvas; no pyplot, no global state, no display)."""

from __future__ import annotations

import io
from collections import defaultdict
from typing import Any

import numpy as np

KIND_COLOURS = {"single": "#4c78a8", "fusion": "#f58518", "baseline": "#9d9d9d"}
CHOSEN_COLOUR = "#2ca02c"
MAX_CURVE_ROWS = 8


def _figure(width: float, height: float) -> Any:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), dpi=100, layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def _png(fig: Any) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    return buf.getvalue()


def _short(text: str, n: int = 28) -> str:
    return text if len(text) <= n else text[: n - 1] + "…"


def candidates_chart(candidates: list[dict], chosen: str | None) -> bytes:
    """Horizontal bars: CV mean ± std per candidate (best at the top), test accuracy as diamonds."""
    cands = sorted(candidates, key=lambda c: c.get("cv_mean") or 0.0)
    names = [str(c.get("name", "?")) for c in cands]
    mean = np.array([c.get("cv_mean") or 0.0 for c in cands], dtype=float)
    std = np.array([c.get("cv_std") or 0.0 for c in cands], dtype=float)
    test = [(i, (c.get("test") or {}).get("accuracy")) for i, c in enumerate(cands)]
    test = [(i, a) for i, a in test if a is not None]
    fig = _figure(8.5, 1.2 + 0.42 * len(cands))
    ax = fig.add_subplot()
    colours = [CHOSEN_COLOUR if n == chosen else KIND_COLOURS.get(c.get("kind"), "#4c78a8")
               for n, c in zip(names, cands)]
    y = np.arange(len(cands))
    ax.barh(y, mean, xerr=std, color=colours, capsize=3, height=0.6)
    if test:
        ax.scatter([a for _, a in test], [i for i, _ in test], marker="D", color="black", zorder=3, s=28,
                   label="test accuracy")
    from matplotlib.patches import Patch  # one swatch per bar colour drawn (not the first bar's for all)

    kinds = {"chosen" if n == chosen else str(c.get("kind") or "single"): col
             for n, c, col in zip(names, cands, colours)}
    swatches = [Patch(color=col, label=f"CV mean ± std: {k}") for k, col in sorted(kinds.items())]
    ax.set_yticks(y, [_short(n, 40) for n in names])
    values = np.concatenate([mean - std, [a for _, a in test]]) if len(cands) else np.array([0.0])
    low = max(0.0, float(np.floor((values.min() - 0.05) * 20) / 20))
    ax.set_xlim(low, 1.0 + 0.015 * (1.0 - low))  # a diamond at 1.0 is drawn whole, not cut by the frame
    ax.set_xlabel("accuracy" + (f" (axis starts at {low:.2f})" if low > 0 else ""))
    ax.grid(axis="x", alpha=0.3)
    handles = ax.get_legend_handles_labels()[0] + swatches
    ax.legend(handles=handles, loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=8)  # beside the bars
    return _png(fig)


def confusion_matrix_plot(cm: list[list[int]], classes: list[str]) -> bytes:
    """Counts annotated; colour = share of the true class (row), so small classes stay visible."""
    m = np.asarray(cm, dtype=float)
    k = len(m)
    labels = [_short(str(c), 22) for c in classes] if len(classes) == k else [str(i) for i in range(k)]
    # ~1000 px wide so the page shows it unscaled; cells stay >= ~25 px up to ~30 classes
    side = min(9.0, max(4.0, 0.3 * k + 1.5))
    fig = _figure(side + 1.4, side)
    ax = fig.add_subplot()
    share = m / np.maximum(m.sum(axis=1, keepdims=True), 1)
    im = ax.imshow(share, cmap="Blues", vmin=0, vmax=1)
    fig.colorbar(im, ax=ax, shrink=0.6, fraction=0.04, label="share of true class")
    font = 10 if k <= 12 else max(6.5, 10 - (k - 12) * 0.13)
    for i in range(k):
        for j in range(k):
            if m[i, j] or k <= 12:
                ax.text(j, i, f"{int(m[i, j])}", ha="center", va="center", fontsize=font,
                        color="white" if share[i, j] > 0.55 else "black")
    ax.set_xticks(range(k), labels, rotation=90 if k > 6 else 0, fontsize=font)
    ax.set_yticks(range(k), labels, fontsize=font)
    ax.set_xlabel("predicted class")
    ax.set_ylabel("true class")
    return _png(fig)


def _by_fold(history: list[dict], key: str) -> dict[Any, tuple[list, list]]:
    out: dict[Any, tuple[list, list]] = defaultdict(lambda: ([], []))
    for h in sorted(history, key=lambda h: (str(h.get("fold")), h.get("epoch") or 0)):
        if h.get(key) is not None and h.get("epoch") is not None:
            out[h.get("fold")][0].append(h["epoch"])
            out[h.get("fold")][1].append(h[key])
    return out


def _curves(ax: Any, history: list[dict], key: str, colour: str, label: str, style: str = "-") -> None:
    folds = _by_fold(history, key)
    per_epoch: dict[int, list[float]] = defaultdict(list)
    for xs, ys in folds.values():
        ax.plot(xs, ys, style, color=colour, lw=0.8, alpha=0.45)
        for x, v in zip(xs, ys):
            per_epoch[x].append(v)
    if per_epoch:
        xs = sorted(per_epoch)
        ax.plot(xs, [np.mean(per_epoch[x]) for x in xs], style, color=colour, lw=2.2, marker="o", ms=3, label=label)


def learning_curves(candidates: list[dict]) -> tuple[bytes, int]:
    """Per candidate with history: val accuracy and loss per epoch; thin = folds, thick = mean.

    Returns the PNG and how many candidates with history were left out (at most 8 rows drawn).
    """
    with_hist = [c for c in candidates if c.get("history")]
    shown = with_hist[:MAX_CURVE_ROWS]
    fig = _figure(10, 0.4 + 2.4 * len(shown))
    axes = fig.subplots(len(shown), 2, squeeze=False)
    for (ax_acc, ax_loss), c in zip(axes, shown):
        _curves(ax_acc, c["history"], "val_accuracy", "#4c78a8", "val accuracy")
        _curves(ax_loss, c["history"], "train_loss", "#9d9d9d", "train loss", "--")
        _curves(ax_loss, c["history"], "val_loss", "#f58518", "val loss")
        ax_acc.set_title(_short(str(c.get("name", "?")), 60) + " — val accuracy", fontsize=9)
        ax_loss.set_title("loss", fontsize=9)
        for ax in (ax_acc, ax_loss):
            ax.xaxis.get_major_locator().set_params(integer=True)
            ax.grid(alpha=0.3)
            ax.set_xlabel("epoch", fontsize=8)
            if ax.get_legend_handles_labels()[0]:
                ax.legend(fontsize=7)
    return _png(fig), len(with_hist) - len(shown)


def reliability_diagram(curves: dict[str, dict]) -> bytes:
    """Accuracy vs mean confidence per bin for each labelled ``reliability_bins`` result."""
    fig = _figure(5.5, 5.0)
    ax = fig.add_subplot()
    ax.plot([0, 1], [0, 1], ":", color="gray", label="perfect calibration")
    for (label, bins), colour in zip(curves.items(), ("#d62728", "#2ca02c", "#4c78a8")):
        pts = [(c, a, n) for c, a, n in zip(bins["confidence"], bins["accuracy"], bins["count"]) if n]
        if not pts:
            continue
        conf, acc, n = map(np.array, zip(*pts))
        ece = bins.get("ece")
        ax.plot(conf, acc, "-", color=colour, lw=1.5,
                label=label + (f" (ECE {ece:.3f})" if ece is not None else ""))
        ax.scatter(conf, acc, s=15 + 200 * n / n.sum(), color=colour, alpha=0.7, clip_on=False)
    ax.set_xlim(0, 1.02)  # a bin at confidence or accuracy 1 is drawn whole
    ax.set_ylim(0, 1.02)
    ax.set_xlabel("confidence (top-label, mean per bin; dot size = share of examples)")
    ax.set_ylabel("accuracy in bin")
    ax.grid(alpha=0.3)
    ax.legend(loc="upper left", fontsize=8)
    return _png(fig)
