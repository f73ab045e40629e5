"""``predict --engine onnx`` without torch for audio models (Whisper log-mel, the scratch CNN's
mel, a feature fusion of both) and multimodal ones (an image + text + audio feature fusion, fed
from a table in the run's own columns): the ONNX engine feeds the exported graph from numpy +
scipy (+ PIL, tokenizers) alone, audio through the backbones' own eval transform
(:mod:`transfuse.data.audio_transforms`), answers what the torch engine answers, and never
imports torch. (Image and text models: tests/test_export.py.)"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from transfuse.config import validate_config

pytestmark = pytest.mark.real

# Sample rates and channel layouts the clips are written with: resampling (8, 22.05, 44.1 kHz),
# stereo mix-down, clips shorter and longer than the 0.5 s the backbones take.
RATES = (16000, 8000, 22050, 44100)


def _clip(kind: str, i: int, sr: int, rng: np.random.Generator) -> np.ndarray:
    """A short synthetic sound of one class: a low tone, a high tone, or a noise burst."""
    seconds = 0.3 + 0.1 * (i % 5)
    t = np.arange(int(seconds * sr)) / sr
    env = np.minimum(1.0, np.minimum(t, t[-1] - t) * 40)
    if kind == "low":
        x = np.sin(2 * np.pi * (220 + 15 * i) * t)
    elif kind == "high":
        x = np.sin(2 * np.pi * (1800 + 60 * i) * t)
    else:
        x = rng.standard_normal(len(t))
    return (0.3 * env * x + 0.003 * rng.standard_normal(len(t))).astype(np.float32)


def write_sounds_folder(root: Path, per_class: int = 9) -> Path:
    import soundfile as sf

    rng = np.random.default_rng(0)
    for kind in ("low", "high", "noise"):
        (root / kind).mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            sr = RATES[i % len(RATES)]
            x = _clip(kind, i, sr, rng)
            if i % 4 == 3:  # stereo: the loader averages the channels
                x = np.stack([x, 0.5 * x], axis=1)
            sf.write(root / kind / f"{kind}{i}.wav", x, sr)
    return root


@pytest.fixture(scope="module")
def audio_run(tmp_path_factory) -> tuple[Path, list[str]]:
    """Whisper tiny.en and the scratch CNN (0.5 s clips), a linear probe each and their feature
    fusion, exported (the chosen model is exported by the command-line test)."""
    from transfuse.data.registry import load_dataset
    from transfuse.export.onnx import export_run
    from transfuse.pipeline import run_experiment

    root = tmp_path_factory.mktemp("aud")
    data = write_sounds_folder(root / "sounds")
    cfg = {"name": "aud", "data": {"source": "audio_folder", "path": str(data), "modality": "audio"},
           "split": {"folds": 3, "test_size": 0.3},
           "backbones": [{"name": "bundled:whisper_tiny_en_encoder", "options": {"clip_seconds": 0.5}},
                         {"name": "scratch_cnn", "options": {"clip_seconds": 0.5}}],
           "adapt": {"strategies": ["linear_probe"]},
           "fuse": {"ensembles": ["mean"], "features": {"enabled": True}},
           "output": {"dir": str(root / "run")}}
    run = root / "run"
    run_experiment(validate_config(cfg), run, progress=False)
    for c in CANDIDATES:
        export_run(run, candidate=c)
    d = load_dataset("audio_folder", str(data))
    files = [d.items[i] for i in json.loads((run / "splits.json").read_text())["test_idx"]]
    return run, files


CANDIDATES = ("fusion/features",)  # one graph, both backbones' inputs (m0: Whisper, m1: the scratch CNN)


def _onnx_in_a_fresh_interpreter(run: Path, files: list[str]) -> dict:
    """``predict(..., engine='onnx')`` for every exported candidate in a new Python process: its
    probabilities, and whether torch (or transformers) got imported."""
    code = ("import json, sys\nfrom transfuse.export.predict import predict\n"
            f"out = {{c: predict({str(run)!r}, {files!r}, engine='onnx', candidate=c)['proba'].tolist() "
            f"for c in {list(CANDIDATES)!r}}}\n"
            "print(json.dumps({'torch': 'torch' in sys.modules, 'transformers': 'transformers' in sys.modules, "
            "'proba': out}))")
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stderr[-3000:]
    return json.loads(p.stdout)


def test_audio_onnx_predict_needs_no_torch_and_matches_the_torch_engine(audio_run):
    from transfuse.export.predict import predict

    run, files = audio_run
    out = _onnx_in_a_fresh_interpreter(run, files)
    assert out["torch"] is False and out["transformers"] is False
    for c in CANDIDATES:
        ref = predict(run, files, engine="torch", candidate=c)["proba"]
        got = np.asarray(out["proba"][c])
        assert got.shape == ref.shape == (len(files), 3), c
        # the inputs are the same arrays (next test): what is left is ONNX vs torch kernels, which
        # the export's own parity check bounds by its tolerance, 1e-4
        assert np.abs(got - ref).max() < 1e-4, c


def test_audio_onnx_feeds_are_the_torch_transforms_inputs_bit_for_bit(audio_run):
    """The torch-free feeder gives exactly what the backbone's eval transform + collate give (the
    one numpy implementation behind both), for every part of every exported graph."""
    from transfuse.data.audio import AudioLoader
    from transfuse.export.onnx import collate_parts, parts_from_meta, read_meta
    from transfuse.export.preprocess import AudioPart, torch_free_parts
    from transfuse.export.predict import model_folder, load_inputs

    run, files = audio_run
    data, errors = load_inputs(files, "audio")
    assert errors == {} and len(data) == len(files)
    for c in CANDIDATES:
        meta = read_meta(model_folder(run, c))
        free = torch_free_parts(meta)
        assert free is not None and all(isinstance(p, AudioPart) for p in free), c
        torch_parts = parts_from_meta(meta)
        ref = [t.numpy() for t in collate_parts(torch_parts, data, range(len(data)))]
        clips = [AudioLoader()(f) for f in files]
        got = [a for p in free for a in p.feed(clips).values()]
        assert len(got) == len(ref) == len(meta["parts"]), c
        for g, r in zip(got, ref):
            assert g.dtype == r.dtype == np.float32 and np.array_equal(g, r), c
    # what the recipes say, for users of the ONNX file without transfuse
    whisper, scratch = (p["preprocess"] for p in read_meta(model_folder(run, "fusion/features"))["parts"])
    for pre, n_mels in ((whisper, 80), (scratch, 40)):
        assert pre["type"] == "audio" and pre["input"] == "log_mel" and pre["sample_rate"] == 16000
        assert pre["clip_seconds"] == 0.5 and pre["log_mel"] == {"n_mels": n_mels, "n_fft": 400, "hop": 160,
                                                                 "style": "whisper"}


def test_onnx_predict_of_an_audio_run_from_the_command_line(audio_run, tmp_path):
    """``transfuse predict RUN --engine onnx --json`` on the test clips: the chosen model's labels."""
    from transfuse.export.onnx import export_run
    from transfuse.export.predict import predict

    run, files = audio_run
    export_run(run)
    p = subprocess.run([sys.executable, "-m", "transfuse.cli", "predict", str(run), *files, "--engine", "onnx",
                        "--json"], capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stderr[-2000:]
    recs = [json.loads(line) for line in p.stdout.splitlines()]
    ref = predict(run, files, engine="torch")
    assert [r["input"] for r in recs] == files
    assert np.abs(np.array([list(r["proba"].values()) for r in recs]) - ref["proba"]).max() < 1e-4


def test_speech_embedding_has_no_onnx_engine_and_export_says_why(tmp_path):
    """The one audio backbone without a torch-free engine: its forward runs onnxruntime itself, so
    there is no ONNX graph to run; export refuses in one line (before any tracing) and the
    ONNX engine points to the export, while the torch engine serves the run."""
    from transfuse.errors import UserError
    from transfuse.export.onnx import export_cli
    from transfuse.export.predict import predict
    from transfuse.pipeline import run_experiment

    data = write_sounds_folder(tmp_path / "sounds", per_class=6)
    cfg = {"name": "se", "data": {"source": "audio_folder", "path": str(data), "modality": "audio"},
           "split": {"folds": 2, "test_size": 0.3},
           "backbones": [{"name": "bundled:speech_embedding", "options": {"clip_seconds": 1.0}}],
           "adapt": {"strategies": ["linear_probe"]}, "output": {"dir": str(tmp_path / "run")}}
    run_experiment(validate_config(cfg), tmp_path / "run", progress=False)
    with pytest.raises(UserError, match=r"^export: backbone bundled:speech_embedding cannot be exported to ONNX: its "
                       r"forward runs openWakeWord's own two ONNX models through onnxruntime, which "
                       r"torch.onnx.export cannot trace; serve this model with 'transfuse predict' \(--engine torch\)"):
        export_cli(tmp_path / "run", "onnx")
    assert not (tmp_path / "run" / "model" / "model.onnx").exists()
    clip = str(data / "low" / "low0.wav")
    with pytest.raises(UserError, match="has no ONNX model; run 'transfuse export' on it first, or use --engine torch"):
        predict(tmp_path / "run", [clip], engine="onnx")
    assert predict(tmp_path / "run", [clip], engine="torch")["proba"].shape == (1, 3)

# ------------------------------------------------------------------ multimodal: image + text + audio

@pytest.fixture(scope="module")
def multimodal_run(tmp_path_factory) -> tuple[Path, Path, list[dict[str, str]]]:
    """Digit images, a caption and a sound per row (a ``multimodal_manifest``), one backbone per
    modality (EfficientNet-Lite0, MiniLM-L6, the scratch CNN); the feature fusion of all three
    exported (one graph, three inputs). Returns the run, a table of its test rows in the manifest's
    own columns, and those rows as ``{modality: input}``."""
    import csv

    from conftest import write_digits_folder

    from transfuse.export.onnx import export_run
    from transfuse.pipeline import run_experiment

    root = tmp_path_factory.mktemp("mm")
    write_digits_folder(root, classes=(0, 1, 7), per_class=8)
    write_sounds_folder(root / "sounds", per_class=8)
    words = {0: ["a round loop", "an oval ring", "a closed circle"], 1: ["a straight stroke", "one upright line",
             "a thin bar"], 7: ["a bar and a slant", "a hook going down", "a line with a top bar"]}
    sound = {0: "low", 1: "high", 7: "noise"}
    rows = []
    for d in (0, 1, 7):
        for i, f in enumerate(sorted((root / f"digit{d}").glob("*.png"))):
            rows.append({"picture": f"digit{d}/{f.name}", "clip": f"sounds/{sound[d]}/{sound[d]}{i}.wav",
                         "caption": words[d][i % 3], "note": "handwritten" if i % 2 else "", "label": f"d{d}"})
    with open(root / "mm.csv", "w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    cfg = {"name": "mm", "data": {"source": "multimodal_manifest", "path": str(root / "mm.csv"), "modality": "multimodal",
                                  "options": {"image_column": "picture", "audio_column": "clip",
                                              "text_columns": ["caption", "note"]}},
           "split": {"folds": 3, "test_size": 0.25}, "preprocess": {"image_size": 32},
           "backbones": ["bundled:efficientnet_lite0", "bundled:minilm_l6",
                         {"name": "scratch_cnn", "options": {"clip_seconds": 0.5}}],
           "adapt": {"strategies": ["linear_probe"], "baseline": False},
           "fuse": {"ensembles": ["mean"], "features": {"enabled": True}}, "output": {"dir": str(root / "run")}}
    run = root / "run"
    run_experiment(validate_config(cfg), run, progress=False)
    meta = export_run(run, candidate="fusion/features")
    assert [p["preprocess"]["type"] for p in meta["parts"]] == ["image", "text", "audio"]
    test = [rows[i] for i in json.loads((run / "splits.json").read_text())["test_idx"]]
    with open(root / "test.csv", "w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(test)
    items = [{"image": str(root / r["picture"]), "audio": str(root / r["clip"]),
              "text": " | ".join(t for t in (r["caption"], r["note"]) if t)} for r in test]
    return run, root / "test.csv", items


def test_multimodal_onnx_predict_needs_no_torch_and_matches_the_torch_engine(multimodal_run):
    """Each part of the one graph reads its own column, preprocessed without torch."""
    from transfuse.export.predict import predict

    run, _, items = multimodal_run
    code = ("import json, sys\nfrom transfuse.export.predict import predict\n"
            f"r = predict({str(run)!r}, {items!r}, engine='onnx', candidate='fusion/features')\n"
            "print(json.dumps({'torch': 'torch' in sys.modules, 'proba': r['proba'].tolist(), 'errors': r['errors']}))")
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stderr[-3000:]
    out = json.loads(p.stdout)
    assert out["torch"] is False and out["errors"] == {}
    ref = predict(run, items, engine="torch", candidate="fusion/features")
    assert np.asarray(out["proba"]).shape == ref["proba"].shape == (len(items), 3)
    # image inputs within 1 float32 ulp of torch's, text ids and audio inputs identical: the
    # difference is ONNX vs torch kernels, bounded by the export's parity tolerance
    assert np.abs(np.asarray(out["proba"]) - ref["proba"]).max() < 1e-4
    assert ref["classes"] == json.loads((run / "report.json").read_text())["task"]["classes"] == ["d0", "d1", "d7"]


def test_multimodal_predict_from_a_table_on_the_command_line(multimodal_run):
    """``transfuse predict RUN --csv TABLE``: a multimodal model reads the run's own manifest
    columns (texts joined as at fit time); a bad row gets an error record, the others answers."""
    from transfuse.export.predict import predict

    run, table, items = multimodal_run
    bad = table.with_name("bad.csv")  # beside the table: its relative paths resolve the same
    bad.write_text("\n".join(table.read_text().splitlines()[:3]) + "\n"
                   + "digit0/missing.png,sounds/low/low0.wav,a round loop,,d0\n")
    good = [json.loads(r) for r in subprocess.run(
        [sys.executable, "-m", "transfuse.cli", "predict", str(run), "--csv", str(table), "--engine", "onnx",
         "--candidate", "fusion/features", "--json"], capture_output=True, text=True, timeout=300, check=True
    ).stdout.splitlines()]
    ref = predict(run, items, engine="torch", candidate="fusion/features")
    assert [r["input"] for r in good] == [f"{table}:{i}" for i in range(2, len(items) + 2)]
    assert np.abs(np.array([list(r["proba"].values()) for r in good]) - ref["proba"]).max() < 1e-4
    p = subprocess.run([sys.executable, "-m", "transfuse.cli", "predict", str(run), "--csv", str(bad), "--engine",
                        "onnx", "--candidate", "fusion/features", "--json"], capture_output=True, text=True, timeout=300)
    recs = [json.loads(r) for r in p.stdout.splitlines()]
    assert p.returncode == 1 and [("error" in r) for r in recs] == [False, False, True]
    assert recs[2]["error"] == "image: file not found"
    p = subprocess.run([sys.executable, "-m", "transfuse.cli", "predict", str(run), items[0]["image"],
                        "--candidate", "fusion/features"], capture_output=True, text=True, timeout=300)
    assert p.returncode == 2 and p.stderr.strip().splitlines() == [
        "error: a multimodal model reads a table: give --csv FILE with the columns picture, clip, caption, note "
        "(no file arguments, --text or --column)"]
