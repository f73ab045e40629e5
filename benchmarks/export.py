"""Export benchmark: torch eager vs ONNX fp32 vs ONNX int8, side by side in one run.

For each modality's main backbone (EfficientNet-Lite0 on emoji categories and on two grey-scale
sets, Fashion-MNIST and scikit-learn's digits; MiniLM-L6 on WordNet nouns; the Whisper tiny.en
encoder on espeak spoken digits): fit a linear probe with the
pipeline, export the chosen model (parity checked, temperature folded in), then measure the
median latency of the model on collated inputs at batch 1 and 32 (preprocessing excluded, the
same inputs for all three engines, one thread each) and test accuracy for each engine. int8 is
chosen per model family by the export (static QDQ with calibration for the conv net, dynamic
MatMul-only for the transformers; docs/export.md); for static int8 the export tries MinMax,
Percentile and Entropy calibration and keeps the one flipping fewest decisions on training rows
held out from calibration, or ships fp32 when even that loses more than a point there. The torch row also shows the run's temperature scaling: T and ECE before/after on out-of-fold and
test predictions.

    .venv/bin/python benchmarks/export.py [--quick] [--threads 1]
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np
from _common import write_results

from transfuse.config import validate_config
from transfuse.data.images import EMOJI_8_CATEGORIES


def tasks(quick: bool) -> dict[str, dict]:
    # no raw baseline (pixels, TF-IDF): the benchmark exports the transferred model, which must win
    common = {"seed": 0, "split": {"folds": 3, "test_size": 0.25}, "adapt": {"baseline": False}}
    per = 40 if quick else 150
    speech = {"words": ["digits"], "accents": ["en-us", "en-gb"], "pitches": [50]}
    return {
        "image: EfficientNet-Lite0 (emoji-8)": {
            **common, "preprocess": {"image_size": 64},  # emoji are 64 px images
            "data": {"source": "emoji", "modality": "image",
                               "options": {"categories": list(EMOJI_8_CATEGORIES)}},
            "backbones": ["bundled:efficientnet_lite0"]},
        "image: EfficientNet-Lite0 (Fashion-MNIST, grey)": {
            **common, "preprocess": {"image_size": 64},
            "data": {"source": "fashion_mnist", "modality": "image",
                     "options": {"max_per_class": 15 if quick else 100, "seed": 0}},
            "backbones": ["bundled:efficientnet_lite0"]},
        "image: EfficientNet-Lite0 (sklearn digits, grey 8x8)": {
            **common, "preprocess": {"image_size": 64},
            "data": {"source": "folder", "modality": "image", "path": "{digits}"},
            "backbones": ["bundled:efficientnet_lite0"]},
        "text: MiniLM-L6 (WordNet nouns)": {
            **common, "data": {"source": "wordnet", "modality": "text",
                               "options": {"supersenses": ["animal", "artifact", "food", "plant", "person",
                                                           "location"], "max_per_class": per}},
            "backbones": ["bundled:minilm_l6"]},
        "audio: Whisper tiny.en encoder (spoken digits)": {
            **common, "data": {"source": "speech", "modality": "audio", "options": {**speech, "split": "train"}},
            "backbones": ["bundled:whisper_tiny_en_encoder"]},
    }


def write_digits(root: Path) -> str:
    """All 1,797 of scikit-learn's 8x8 handwritten digits as grey PNGs, one folder per digit."""
    from PIL import Image
    from sklearn.datasets import load_digits

    d = load_digits()
    for i, (img, c) in enumerate(zip(d.images, d.target)):
        (root / f"digit{c}").mkdir(parents=True, exist_ok=True)
        Image.fromarray((img * (255.0 / 16.0)).astype(np.uint8)).save(root / f"digit{c}" / f"{i}.png")
    return str(root)


def median_ms(fn, repeats: int) -> float:
    fn()  # warm up
    ts = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        ts.append(time.perf_counter() - t)
    return 1000.0 * float(np.median(ts))


def run_task(label: str, raw: dict, threads: int, repeats: int) -> list[dict]:
    import torch

    from transfuse.artifacts.serve import load_model
    from transfuse.artifacts.store import RunFolder
    from transfuse.export.onnx import (
        INT8_FILE,
        ONNX_FILE,
        batched_proba,
        build_graph,
        collate_parts,
        export_run,
        feeds,
        session,
    )
    from transfuse.pipeline import run_experiment

    with tempfile.TemporaryDirectory() as d, tempfile.TemporaryDirectory() as data_dir:
        run_dir = Path(d)
        if raw["data"].get("path") == "{digits}":
            raw = {**raw, "data": {**raw["data"], "path": write_digits(Path(data_dir))}}
        cfg = validate_config({**raw, "name": "export-bench", "output": {"dir": d}})
        report = run_experiment(cfg, run_dir, progress=False)
        cal = report.get("calibration") or {}
        meta = export_run(run_dir, int8=True)
        model, spec = load_model(run_dir / "model")
        graph, parts = build_graph(model, spec, run_dir / "model")
        test = RunFolder(run_dir).prepare_data(cfg).test
        y = test.labels
        torch.set_num_threads(threads)
        q = meta["int8"]
        sessions = {"ONNX fp32": session(run_dir / "model" / ONNX_FILE, threads)}
        if q["shipped"]:
            sessions["ONNX int8"] = session(run_dir / "model" / INT8_FILE, threads)
        batches = {b: collate_parts(parts, test, np.arange(b) % len(test)) for b in (1, 32)}
        rows = []
        for engine in ("torch eager", *sessions):
            if engine == "torch eager":
                p = np.load(run_dir / "model" / "test_proba.npy")

                def call(b):
                    with torch.inference_mode():
                        return graph(*batches[b])
            else:
                sess = sessions[engine]
                p = batched_proba(sess, parts, test)

                def call(b, sess=sess):
                    return sess.run(["proba"], feeds(parts, batches[b]))
            rows.append({"model": label, "engine": engine,
                         "ms @ batch 1": median_ms(lambda: call(1), repeats),
                         "ms @ batch 32": median_ms(lambda: call(32), max(3, repeats // 4)),
                         "test accuracy": float((p.argmax(1) == y).mean()), "n_test": len(y)})
        eager = rows[0]
        for r in rows:
            r["speed-up @1 vs eager"] = eager["ms @ batch 1"] / r["ms @ batch 1"]
            r["accuracy Δ pts"] = 100 * (r["test accuracy"] - eager["test accuracy"])
        rows[0].update({"T": cal.get("temperature"), "ECE oof before→after":
                        f"{cal.get('oof_ece_before', float('nan')):.4f}→{cal.get('oof_ece_after', float('nan')):.4f}",
                        "ECE test before→after":
                        f"{cal.get('ece_before', float('nan')):.4f}→{cal.get('ece_after', float('nan')):.4f}"})
        rows[1]["parity max |Δp|"] = meta["parity_max_abs_diff"]
        rows[1]["size MB"] = meta["size_bytes"] / 1e6
        tried = ", ".join(f"{t['calibration']} {100 * t['flipped']:.1f}" for t in q["tried"])
        int8_row = rows[2] if q["shipped"] else rows[1]
        int8_row.update({"int8 method": q["method"], "int8 calibration (% flipped on check rows)": tried,
                         "int8": f"{q.get('calibration', 'dynamic')} shipped" if q["shipped"] else q["reason"]})
        if q["shipped"]:
            rows[2]["size MB"] = q["size_bytes"] / 1e6
    return rows


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true", help="fewer examples per class")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--repeats", type=int, default=20)
    ap.add_argument("--only", default=None, help="image | text | audio")
    args = ap.parse_args()
    rows = []
    for label, raw in tasks(args.quick).items():
        if args.only and not label.startswith(args.only):
            continue
        new = run_task(label, raw, args.threads, args.repeats)
        rows += new
        for r in new:
            print(r, flush=True)
    cols = ["model", "engine", "ms @ batch 1", "ms @ batch 32", "speed-up @1 vs eager", "test accuracy",
            "accuracy Δ pts", "n_test", "parity max |Δp|", "size MB", "int8 method", "int8",
            "int8 calibration (% flipped on check rows)", "T", "ECE oof before→after", "ECE test before→after"]
    print(write_results("export", rows, cols, {"threads": args.threads, "load": os.getloadavg()[0]}))


if __name__ == "__main__":
    main()
