"""report.html: values, ordering, escaping, embedded PNGs, self-containment, missing fields, and the
page in a real headless Chromium (no console errors, every figure renders)."""

import base64
import copy
import io
import re
import string

import numpy as np
import pytest
from PIL import Image

from transfuse.evaluate.calibration import temperature_calibration
from transfuse.evaluate.metrics import classification_metrics
from transfuse.evaluate.report_html import render_report_html, write_report_html

CLASSES = [f"{ch}_class" for ch in string.ascii_lowercase]  # 26 classes
EVIL = "data/<script>alert('x')</script>/bad.png"


def _proba(rng, y, k, skill):
    logits = rng.normal(size=(len(y), k))
    logits[np.arange(len(y)), y] += skill
    e = np.exp(3 * logits)
    return e / e.sum(1, keepdims=True)


def _history(rng, folds=3, epochs=5):
    return [
        {"fold": f, "epoch": e, "train_loss": 2.0 / (e + 1), "val_loss": 2.2 / (e + 1) + rng.random() * 0.1,
         "val_accuracy": 0.5 + 0.08 * e + rng.random() * 0.02}
        for f in range(folds) for e in range(epochs)
    ]


@pytest.fixture(scope="module")
def report():
    rng = np.random.default_rng(0)
    k, n = len(CLASSES), 520
    y = np.arange(n) % k
    specs = [  # name, kind, skill, cv_mean
        ("efficientnet_lite0/linear_probe", "single", 3.0, 0.81),
        ("efficientnet_lite0/lp_ft", "single", 3.4, 0.86),
        ("ensemble/mean(lite0_probe+lite0_lpft)", "fusion", 3.7, 0.88),
        ("baseline/logreg", "baseline", 2.4, 0.74),
    ]
    cands = []
    for i, (name, kind, skill, cv) in enumerate(specs):
        test = classification_metrics(y, _proba(rng, y, k, skill), CLASSES)
        test.pop("per_class")
        cands.append({
            "name": name, "kind": kind, "backbone": "efficientnet_lite0", "strategy": name.split("/")[1],
            "method": None, "members": None, "cv_mean": cv, "cv_std": 0.012 + 0.003 * i,
            "cv_scores": [cv - 0.01, cv, cv + 0.01],
            "test": test,
            "history": _history(rng) if kind == "single" else [],
            "fit_seconds": 12.5 * (i + 1), "params": 4_650_000 + i, "inference_ms_per_example": 3.21 + i,
        })
    chosen = cands[2]
    p_oof, p_test = _proba(rng, y, k, 3.7), _proba(rng, y, k, 3.7)
    _, calibration = temperature_calibration(y, p_oof, y, p_test, CLASSES)
    chosen_test = classification_metrics(y, p_test, CLASSES)
    chosen["test"] = {k_: v for k_, v in chosen_test.items() if k_ != "per_class"}
    return {
        "name": "emoji-demo", "created": "2025-01-01T00:00:00", "transfuse_version": "0.1.0",
        "modality": "image", "metric": "accuracy",
        "task": {"classes": CLASSES, "n_train": 2080, "n_test": n,
                 "class_counts": {c: 80 + i for i, c in enumerate(CLASSES)}},
        "config": {"data": {"path": "/data/<emoji>"}, "backbones": ["bundled:efficientnet_lite0"], "seed": 0},
        "cv": {"folds": 3, "seed": 0},
        "candidates": cands, "chosen": chosen["name"],
        "test": chosen_test,
        "calibration": calibration,
        "quarantined": [{"path": EVIL, "reason": "corrupt <JPEG> & truncated"}]
        + [{"path": f"data/x/{i}.png", "reason": "16-bit greyscale"} for i in range(14)],
        "timings": {"data": 40.0, "embed:lite0": 30.0, "candidate:lite0/linear_probe": 2.5,
                    "candidate:lite0/lp_ft": 300.0},
        "wall_seconds": 351.0,
    }


@pytest.fixture(scope="module")
def html(report):
    return render_report_html(report)


def _images(html):
    return [base64.b64decode(b) for b in re.findall(r'src="data:image/png;base64,([^"]+)"', html)]


def test_writes_file_with_values(report, tmp_path):
    before = copy.deepcopy(report)
    path = write_report_html(report, tmp_path)
    assert path == tmp_path / "report.html"
    html = path.read_text(encoding="utf-8")
    assert report == before  # not mutated
    t = report["test"]
    for v in (f"{t['accuracy'] * 100:.1f}%", f"{t['macro_f1'] * 100:.1f}%", f"{t['log_loss']:.3f}", f"{t['ece']:.3f}"):
        assert v in html
    assert f"{report['calibration']['ece_after']:.3f}" in html
    # gain of the fusion over the best single by CV (lp_ft), in test-accuracy points
    best_single = report["candidates"][1]
    gain = (t["accuracy"] - best_single["test"]["accuracy"]) * 100
    assert f"{gain:+.1f} pts</span> test accuracy" in html
    assert "+2.0 pts</span> CV accuracy" in html
    for c in CLASSES:
        assert f"{c}: {report['task']['class_counts'][c]}</span>" in html
    # the embedding is within its candidate's time: not counted twice (40 + 2.5 + 300 s)
    assert "(steps not within another)</span></td><td class='num'><b>5 min 42 s" in html
    assert "embed:lite0 <span class=sub>(within its candidate)</span>" in html
    assert "wall clock, start to report</td><td class='num'>5 min 51 s" in html


def test_candidates_sorted_by_cv_chosen_highlighted(report, html):
    table = html.split("<h2>Candidates</h2>", 1)[1].split("</table>", 1)[0]
    rows = re.findall(r"<tr class=\"(\w*)\"><td>([^<]+)", table)
    names = [n for _, n in rows]
    expected = [c["name"] for c in sorted(report["candidates"], key=lambda c: -c["cv_mean"])]
    assert names == expected
    assert [cls for cls, _ in rows] == ["chosen", "", "", ""]
    assert "88.0% ± 1.8" in table and "4.7M" in table and "25.0 s" in table and "5.21" in table
    lp = report["candidates"][1]["test"]
    assert f"{lp['accuracy'] * 100:.1f}%" in table


def test_escaping_and_self_contained(html):
    assert "<script" not in html.lower()
    assert "&lt;script&gt;alert(&#x27;x&#x27;)&lt;/script&gt;" in html
    assert "corrupt &lt;JPEG&gt; &amp; truncated" in html
    assert "/data/&lt;emoji&gt;" in html  # the config <pre>
    assert not re.search(r"(src|href)\s*=\s*['\"]?(https?:)?//", html, re.I)
    assert "url(" not in html and "@import" not in html and "<link" not in html
    assert "<details><summary>15 inputs skipped" in html  # long list collapsed


def test_plots_are_pngs(html):
    images = _images(html)
    assert len(images) == 4  # candidates, confusion matrix, learning curves, reliability
    for png in images:
        assert png.startswith(b"\x89PNG\r\n\x1a\n")
        Image.open(io.BytesIO(png)).verify()
    width, height = Image.open(io.BytesIO(images[1])).size
    assert 900 <= width <= 1100 and height >= 800  # 26x26: large, yet shown unscaled in the page


def test_minimal_and_single_candidate(tmp_path):
    html = write_report_html({"name": "tiny"}, tmp_path).read_text()
    assert "<h1>tiny</h1>" in html and "No candidate was chosen" in html and not _images(html)
    single = {
        "name": "one", "chosen": "m/linear_probe",
        "candidates": [{"name": "m/linear_probe", "kind": "single", "cv_mean": 0.7, "cv_std": float("nan")}],
    }
    html = render_report_html(single)
    assert "70.0% ± —" in html and "None: every input was usable" in html
    assert "Learning curves" not in html and "Versus the best single" not in html
    assert len(_images(html)) == 1  # only the candidates chart


def test_misclassified_examples_accuracy_interval_and_baseline_verdict(report, tmp_path):
    png = tmp_path / "seven.png"
    Image.fromarray(np.full((40, 40, 3), 200, np.uint8)).save(png)
    r = copy.deepcopy(report)
    r["test"]["accuracy_ci95"] = [0.4677, 0.9111]
    r["misclassified"] = [{"input": str(png), "true": "a_class", "predicted": "b_class", "confidence": 0.93},
                          {"input": "gone/<x>.png", "true": "c_class", "predicted": "a_class", "confidence": 0.5}]
    r["baseline"] = {"transfer_loses": True, "message": "transfer loses to the no-transfer baseline: pixels"}
    html = render_report_html(r)
    assert "95% CI 46.8%–91.1%" in html
    assert "Transfer loses to the no-transfer baseline: pixels.</p>" in html
    section = html[html.index("Misclassified test examples"):]
    assert section.count('alt="misclassified example"') == 1  # the file that exists gets a thumbnail
    assert "<code>gone/&lt;x&gt;.png</code></td><td>c_class</td><td>a_class</td><td class='num'>50.0%" in section
    assert "None: every test example" in render_report_html({"name": "x", "misclassified": []})


def test_pictures_are_left_out_once_the_time_limit_has_passed(report, tmp_path):
    """Under ``fit --time-limit``, a report written after the limit draws no picture (each one is
    a few seconds on a slow machine) and says which; the numbers and tables are all there."""
    from transfuse.budget import Budget, budgeted

    png = tmp_path / "seven.png"
    Image.fromarray(np.full((40, 40, 3), 200, np.uint8)).save(png)
    r = copy.deepcopy(report)
    r["misclassified"] = [{"input": str(png), "true": "a_class", "predicted": "b_class", "confidence": 0.93}]
    now = [59.0]
    with budgeted(Budget(60, start=0.0, clock=lambda: now[0])):
        within = render_report_html(r)
        now[0] = 60.0
        late = render_report_html(r)
    assert len(_images(within)) == 5 and "Pictures left out" not in within  # 4 plots and the thumbnail
    assert not _images(late)
    assert ("<p class='sub'>Pictures left out, the time limit having passed: candidates chart, confusion matrix, "
            "thumbnails, learning curves, reliability diagram. Every number and table is complete.</p>") in late
    assert late.index("Pictures left out") < late.index("<h2>Candidates</h2>")
    strip = re.compile(r"<img [^>]*>|<p class='sub'>Pictures left out[^<]*</p>")
    assert strip.sub("", late) == strip.sub("", within)  # nothing else differs
    assert render_report_html(r) == within  # no active limit: every picture


# ------------------------------------------------------------------ in a real browser

def _chromium() -> None:
    """Headless Chromium is part of the test set-up (scripts/setup.sh): missing, the test fails."""
    from headless_chromium import find_chromium

    if find_chromium() is None:
        pytest.fail("no chromium on PATH: 'make setup' (scripts/setup.sh) installs the Debian package chromium")


def test_report_in_headless_chromium_has_no_errors_and_every_figure_renders(report, tmp_path):
    """The whole page in a real browser: no console error, exception or failed load; each figure
    (candidates chart, confusion matrix, misclassified thumbnails, learning curves, reliability
    diagram) decodes and is laid out at a non-zero size inside the page; the screenshot is kept."""
    from headless_chromium import open_page

    _chromium()
    r = copy.deepcopy(report)
    thumbs = []
    for i, colour in enumerate(("red", "navy")):
        thumbs.append(tmp_path / f"wrong{i}.png")
        Image.new("RGB", (40, 30), colour).save(thumbs[-1])
    r["misclassified"] = [{"input": str(p), "true": "a_class", "predicted": "b_class", "confidence": 0.9 - 0.1 * i}
                          for i, p in enumerate(thumbs)]
    r["misclassified"].append({"input": str(tmp_path / "moved.png"), "true": "c_class", "predicted": "a_class",
                               "confidence": 0.5})  # a file gone since the run: its path only, no broken image
    page = open_page(write_report_html(r, tmp_path), width=1200)
    (tmp_path / "report.png").write_bytes(page.png)
    assert page.errors == []
    assert [i["alt"] for i in page.images] == [
        "candidates: CV accuracy and test accuracy", "confusion matrix", "misclassified example",
        "misclassified example", "learning curves", "reliability diagram"]
    for img in page.images:
        assert img["complete"] and min(img["natural"]) > 0, img  # decoded: not a broken image
        assert min(img["shown"]) > 0 and img["shown"][0] <= page.size[0], img  # laid out, inside the page
    assert page.images[2]["natural"] == [40, 30]  # the thumbnail of the file, as it is
    assert page.size[0] == 1200  # nothing wider than the window: no sideways scrolling
    shot = Image.open(io.BytesIO(page.png))
    assert shot.size == page.size and page.size[1] > 2000
    assert np.asarray(shot.convert("L")).std() > 10  # a page was drawn, not a blank canvas


def test_headless_chromium_check_sees_errors_and_broken_images(tmp_path):
    """The browser check can fail: a console error, an exception, a missing file and an
    undecodable inline image are all reported."""
    from headless_chromium import open_page

    _chromium()
    page = tmp_path / "bad.html"
    page.write_text("<!DOCTYPE html><html><body><img alt='bad' src='data:image/png;base64,AAAA'>"
                    "<img alt='gone' src='gone.png'><script>console.error('boom'); notDefined();</script>"
                    "</body></html>")
    got = open_page(page, width=800)
    errors = sorted(got.errors)  # the failed load may be reported before or after the script ran
    assert len(errors) == 3 and errors[0] == "console.error: boom"
    assert errors[1].startswith("exception: ReferenceError: notDefined is not defined")
    assert errors[2].startswith("network: Failed to load resource: net::ERR_FILE_NOT_FOUND")
    assert [(i["alt"], i["natural"]) for i in got.images] == [("bad", [0, 0]), ("gone", [0, 0])]


def test_a_bag_of_some_folds_is_compared_on_its_folds_and_marked(report):
    """A chosen fold bag that ran 1 of the 3 folds: its CV gain over the best single is read on that
    fold only (not against the single's mean over all three), the table marks it, and the choice
    made on the same rows is shown."""
    r = copy.deepcopy(report)
    bag = r["candidates"][2]
    bag.update(name="bag/efficientnet_lite0/lp_ft", cv_mean=0.90, cv_std=0.0, cv_scores=[0.90],
               selected={"folds_run": [1, 3]})
    r["chosen"] = bag["name"]
    r["choice"] = [{"challenger": bag["name"], "leader": "efficientnet_lite0/lp_ft", "folds": 1,
                    "challenger_score": 0.90, "leader_score": 0.85, "chosen": bag["name"]}]
    html = render_report_html(r)
    # the best single's fold-1 score is 0.85 (0.86 - 0.01): +5.0 points there (+4.0 against its mean)
    assert "+5.0 pts</span> CV accuracy on the 1 fold(s) the chosen candidate ran" in html
    assert "<span class='sub'>1 of 3 folds</span>" in html
    assert ("bag/efficientnet_lite0/lp_ft (scored on 1 fold(s) only) against efficientnet_lite0/lp_ft on the "
            "same rows: 90.0% vs 85.0%; chosen: bag/efficientnet_lite0/lp_ft.") in html
