"""A multimodal model (image + text feature fusion) from Python and over HTTP: ``Run.predict /
predict_proba / records`` on mappings and on a DataFrame of the run's own columns, and
``transfuse serve`` on JSON with base64 files, answer what ``transfuse predict RUN --csv`` answers
(labels, probabilities to 1e-5) on both engines; bad inputs and requests get one exact line.

The task needs both modalities: a handwritten 0 or 1 (the image) painted red or blue (the
caption), four classes; neither input alone can tell them apart."""

from __future__ import annotations

import base64
import csv
import functools
import json
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pandas as pd
import pytest
from conftest import Server, run_config, write_digits_folder
from PIL import Image

import transfuse
from transfuse.errors import UserError

pytestmark = pytest.mark.real
TOL = 1e-5
CAPTIONS = {"red": ["painted red", "a red one", "in red ink"], "blue": ["painted blue", "a blue one", "in blue ink"]}
SHAPE = ('{"image": ..., "text": ...} (or the run\'s columns {"picture": ..., "caption": ..., "note": ...})')


def write_table(path: Path, rows: list[dict]) -> None:
    with open(path, "w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)


@pytest.fixture(scope="module")
def mm_run(tmp_path_factory) -> tuple[Path, Path]:
    """The run (a 2-fold ``multimodal_manifest`` run: EfficientNet-Lite0 at 32 px and MiniLM-L3
    probes, their feature fusion chosen, exported to ONNX) and a table of its test rows in the
    manifest's columns (paths relative to the table, some ``note`` cells empty)."""
    root = tmp_path_factory.mktemp("mm_predict")
    write_digits_folder(root, classes=(0, 1), per_class=16)
    rows = []
    for d in (0, 1):
        for i, f in enumerate(sorted((root / f"digit{d}").glob("*.png"))):
            colour = ("red", "blue")[i % 2]
            rows.append({"picture": f"digit{d}/{f.name}", "caption": CAPTIONS[colour][i // 2 % 3],
                         "note": "handwritten" if i // 2 % 2 else "", "label": f"{d}-{colour}"})
    write_table(root / "mm.csv", rows)
    data = {"source": "multimodal_manifest", "path": str(root / "mm.csv"), "modality": "multimodal",
            "options": {"image_column": "picture", "text_columns": ["caption", "note"]}}
    run = run_config({"name": "mm", "data": data,
                      "split": {"folds": 2, "test_size": 0.25},  # preprocess.image_size: image runs only
                      "backbones": [{"name": "bundled:efficientnet_lite0", "options": {"image_size": 32}},
                                    "bundled:minilm_l3"],
                      "adapt": {"strategies": ["linear_probe"], "baseline": False},
                      "fuse": {"ensembles": ["mean"]}, "output": {"dir": str(root / "run")}})
    write_table(root / "test.csv", [rows[i] for i in json.loads((run / "splits.json").read_text())["test_idx"]])
    transfuse.load(run).export()
    return run, root / "test.csv"


@functools.cache
def predict_csv(run: Path, table: Path, engine: str) -> tuple[dict, ...]:
    """``transfuse predict RUN --csv TABLE --engine ENGINE --json``: its records (the command in
    this process: a fresh one costs seconds of imports)."""
    from typer.testing import CliRunner

    from transfuse.cli import app

    r = CliRunner().invoke(app, ["predict", str(run), "--csv", str(table), "--engine", engine, "--json"])
    assert r.exit_code == 0, r.output
    return tuple(json.loads(line) for line in r.stdout.splitlines())


def proba(records) -> np.ndarray:
    return np.array([list(r["proba"].values()) for r in records])


def joined(*texts: object) -> str:
    """The text of a row's text columns as fit joins them (non-empty cells, ``" | "``)."""
    return " | ".join(t for t in texts if isinstance(t, str) and t)


@pytest.mark.parametrize("engine", ["torch", "onnx"])
def test_run_predict_on_mappings_and_a_dataframe_answers_what_predict_csv_answers(
        mm_run, engine: str, monkeypatch: pytest.MonkeyPatch) -> None:
    run_dir, table = mm_run
    expected = predict_csv(run_dir, table, engine)
    run = transfuse.load(run_dir)
    assert run.modality == "multimodal" and run.chosen == "fusion/features"
    assert list(expected[0]["proba"]) == run.classes == ["0-blue", "0-red", "1-blue", "1-red"]
    monkeypatch.chdir(table.parent)  # the table's relative paths, read from the current directory
    frame = pd.read_csv(table)  # empty 'note' cells are NaN
    assert frame["note"].isna().any()
    by_column = frame.to_dict("records")
    by_modality = [{"image": np.asarray(Image.open(r["picture"])) if i % 2 else Image.open(r["picture"]),
                    "text": joined(r["caption"], r["note"])} for i, r in enumerate(by_column)]
    for X in (frame, by_column, by_modality):
        assert np.abs(run.predict_proba(X, engine=engine) - proba(expected)).max() <= TOL
    recs = run.records(frame, engine=engine)
    assert [r["input"] for r in recs] == [f"row:{i}" for i in range(len(frame))]
    assert [r["label"] for r in recs] == [r["label"] for r in expected] == list(run.predict(by_column, engine=engine))
    # and the engines agree to the export's parity tolerance (the calibrated fusion is confident: T > 1)
    assert np.abs(proba(predict_csv(run_dir, table, "torch")) - proba(predict_csv(run_dir, table, "onnx"))).max() < 1e-4


@pytest.fixture(scope="module")
def mm_server(mm_run) -> Iterator[Server]:
    s = Server(mm_run[0], "--max-upload-mb", "0.01")
    yield s
    s.stop()


def b64(f: Path) -> str:
    return base64.b64encode(f.read_bytes()).decode()


def test_served_json_with_base64_files_answers_what_predict_csv_answers(mm_run, mm_server: Server) -> None:
    run_dir, table = mm_run
    assert {k: mm_server.health[k] for k in ("modality", "columns", "engine", "model")} == {
        "modality": "multimodal", "columns": {"image": ["picture"], "text": ["caption", "note"]},
        "engine": "onnx", "model": "fusion/features"}
    expected = predict_csv(run_dir, table, "onnx")
    rows = list(csv.DictReader(table.open()))
    by_modality = [{"image": b64(table.parent / r["picture"]), "text": joined(r["caption"], r["note"])} for r in rows]
    by_column = [{**r, "picture": b64(table.parent / r["picture"])} for r in rows]
    for inputs in (by_modality, by_column):
        r = httpx.post(mm_server.url + "/predict", json={"inputs": inputs}, timeout=120)
        assert r.status_code == 200, r.text
        assert [x["input"] for x in r.json()] == [f"input:{i}" for i in range(len(rows))]
        assert [x["label"] for x in r.json()] == [x["label"] for x in expected]
        assert np.abs(proba(r.json()) - proba(expected)).max() <= TOL


FIX = ("give an existing image file (PNG, JPEG, ...; a relative path is read from the current directory), a "
       "numpy (HxW[xC] uint8) or PIL image")


@pytest.mark.parametrize("bad, kw, message", [
    ([{"picture": "digit0/missing.png", "caption": "a red one"}], {},
     f"input 0: image 'digit0/missing.png': file not found; {FIX}"),
    ([{"text": "painted red"}], {}, "input 0 has no image; give 'image' (or the run's column 'picture')"),
    ([{"image": "IMG", "caption": " ", "note": None}], {},
     "input 0 has no text (it is empty); give 'text' (or the run's columns 'caption', 'note')"),
    ([{"image": "IMG", "text": 3}], {}, "input 0: the text is of type int; give a str"),
    ([{"image": 7, "text": "a red one"}], {}, f"input 0: the image is of type int; {FIX}"),
    ([{"image": np.zeros((4, 4), np.float32), "text": "a red one"}], {},
     "input 0: image: image arrays must be uint8 (0..255), got float32; convert with np.clip(a, 0, 255)"
     ".astype(np.uint8), or give 2-D rows with image_shape"),
    ([{"image": "IMG", "text": "a red one"}, "painted blue"], {},
     f"input 1 is of type str, not a mapping; a multimodal model takes one {SHAPE} per input"),
    ("painted red", {}, f"a multimodal model takes a list of mappings, one {SHAPE} per input, or a pandas "
                        "DataFrame with the run's columns; got str"),
    (pd.DataFrame({"picture": ["IMG"]}), {}, "the DataFrame has no columns 'caption', 'note'; this multimodal "
     "model reads the columns picture, caption, note (or image, text); its columns: picture"),
    ([], {}, "no inputs given (an empty list)"),
    ([{"image": "IMG", "text": "a red one"}], {"column": "caption"}, "column='caption' applies to a model of "
     "one modality; this multimodal model reads the columns picture, caption, note: drop column="),
])
def test_bad_inputs_are_exact_one_line_errors(mm_run, bad, kw: dict, message: str,
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    run_dir, table = mm_run
    monkeypatch.chdir(table.parent)
    img = next(iter(csv.DictReader(table.open())))["picture"]
    if isinstance(bad, list):
        bad = [{k: img if isinstance(v, str) and v == "IMG" else v for k, v in x.items()} if isinstance(x, dict)
               else x for x in bad]
    elif isinstance(bad, pd.DataFrame):
        bad = bad.replace("IMG", img)
    with pytest.raises(UserError) as e:
        transfuse.load(run_dir).predict(bad, **kw)
    assert str(e.value) == message


PER_INPUT = f"one {SHAPE} per input, each file's bytes base64-encoded"
IMAGES = "send PNG, JPEG, BMP, GIF, WebP or TIFF files"


@pytest.mark.parametrize("kw, status, detail", [
    ({"json": {"inputs": []}}, 422, f'the body must be {{"inputs": [...]}} with at least one input: {PER_INPUT}'),
    ({"json": {"inputs": ["painted red"]}}, 422,
     f"input 0 is of type str, not a mapping; a multimodal model takes one {SHAPE} per input"),
    ({"json": {"inputs": [{"text": "painted red"}]}}, 422,
     "input 0 has no image; give 'image' (or the run's column 'picture')"),
    ({"json": {"inputs": [{"image": "%%%", "text": "a"}]}}, 422,
     "input 0: the image file is not base64; send the file's bytes base64-encoded"),
    ({"json": {"inputs": [{"image": 5, "text": "a"}]}}, 422,
     "input 0: the image file is of type int; send the file's bytes base64-encoded"),
    ({"json": {"inputs": [{"image": base64.b64encode(b"not an image").decode(), "text": "a"}]}}, 422,
     f"input 0: the image file is not a decodable image (UnidentifiedImageError); {IMAGES}"),
    ({"json": {"inputs": [{"image": base64.b64encode(b"\x89PNG" + b"0" * 20_000).decode(), "text": "a"}]}}, 413,
     "input 0: the image file is over the limit of 10485 bytes (--max-upload-mb); send a smaller file"),
    ({"content": b"{not json", "headers": {"content-type": "application/json"}}, 400,
     f'the body is not valid JSON (JSONDecodeError); send JSON {{"inputs": [...]}}, {PER_INPUT}'),
    ({"files": [("files", ("a.png", b"x", "image/png"))]}, 422,
     f'this multimodal model takes POST JSON {{"inputs": [...]}}, {PER_INPUT}, not file uploads'),
    ({"content": b"zz", "headers": {"content-type": "text/plain"}}, 415,
     f"content type 'text/plain' is not accepted; POST JSON {{\"inputs\": [...]}}, {PER_INPUT}"),
])
def test_bad_requests_get_exact_one_line_4xx(mm_server: Server, kw: dict, status: int, detail: str) -> None:
    r = httpx.post(mm_server.url + "/predict", timeout=60, **kw)
    assert (r.status_code, r.json()["detail"]) == (status, detail)
