"""``transfuse serve``: a real uvicorn server in a subprocess on a free loopback port, queried with a
real HTTP client (httpx). It answers the records ``transfuse predict --json`` prints, with the same
labels and probabilities (1e-5), for an image run (multipart uploads) and a TF-IDF text run (JSON);
concurrent requests are batched and each still gets its own answer; bad requests get a 4xx with
one line naming the problem."""

from __future__ import annotations

import json
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import numpy as np
import pytest
from conftest import Server, cli, run_config, write_digits_folder

pytestmark = pytest.mark.real
TOL = 1e-5
TEXTS = ["a domesticated carnivorous mammal that barks", "a sweet baked food made of dough",
         "a large wild feline with a mane", "bread made of wheat flour and yeast"]


@pytest.fixture(scope="module")
def image_run(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("srv_img")
    data = write_digits_folder(root / "digits", classes=(1, 7, 9), per_class=10)
    return run_config({"name": "srv_img", "data": {"source": "folder", "path": str(data)},
                 "split": {"folds": 2, "test_size": 0.25}, "preprocess": {"image_size": 32},
                 "backbones": ["bundled:efficientnet_lite0"], "adapt": {"baseline": False}, "output": {"dir": str(root / "run")}})


@pytest.fixture(scope="module")
def text_run(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("srv_txt")
    return run_config({"name": "srv_txt", "data": {"source": "wordnet", "modality": "text",
                                             "options": {"supersenses": ["animal", "food"], "max_per_class": 10}},
                 "split": {"folds": 2, "test_size": 0.25}, "backbones": ["tfidf"],
                 "output": {"dir": str(root / "run")}})


@pytest.fixture(scope="module")
def image_server(image_run: Path) -> Iterator[Server]:
    s = Server(image_run, "--max-upload-mb", "0.01")
    yield s
    s.stop()


@pytest.fixture(scope="module")
def text_server(text_run: Path) -> Iterator[Server]:
    s = Server(text_run)
    yield s
    s.stop()


def _files(image_run: Path) -> list[Path]:
    return sorted((image_run.parent / "digits").rglob("*.png"))[::3][:8]


def _cli_records(run: Path, inputs: list[str], texts: bool = False) -> list[dict]:
    args = [a for t in inputs for a in ("--text", t)] if texts else inputs
    return [json.loads(line) for line in cli("predict", str(run), *args, "--json").stdout.splitlines()]


def _same(served: list[dict], expected: list[dict], names: list[str]) -> None:
    assert [r["input"] for r in served] == names
    assert [r["label"] for r in served] == [r["label"] for r in expected]
    for a, b in zip(served, expected, strict=True):
        assert list(a["proba"]) == list(b["proba"])
        np.testing.assert_allclose(list(a["proba"].values()), list(b["proba"].values()), atol=TOL, rtol=0)


def _upload(files: list[Path]) -> list:
    return [("files", (f.name, f.read_bytes(), "image/png")) for f in files]


def test_image_uploads_answer_what_predict_answers(image_run: Path, image_server: Server) -> None:
    assert image_server.health["status"] == "ok" and image_server.health["modality"] == "image"
    files = _files(image_run)
    r = httpx.post(image_server.url + "/predict", files=_upload(files), timeout=120)
    assert r.status_code == 200, r.text
    _same(r.json(), _cli_records(image_run, [str(f) for f in files]), [f.name for f in files])
    # concurrent one-file requests: batched together, each still answered with its own record
    before = httpx.get(image_server.url + "/health").json()["batches"]
    with ThreadPoolExecutor(8) as pool:
        answers = list(pool.map(lambda f: httpx.post(image_server.url + "/predict", files=_upload([f]), timeout=120),
                                files))
    assert all(a.status_code == 200 for a in answers)
    _same([a.json()[0] for a in answers], r.json(), [f.name for f in files])
    assert httpx.get(image_server.url + "/health").json()["batches"] - before < len(files)


def test_texts_as_json_answer_what_predict_answers(text_run: Path, text_server: Server) -> None:
    r = httpx.post(text_server.url + "/predict", json={"inputs": TEXTS}, timeout=120)
    assert r.status_code == 200, r.text
    _same(r.json(), _cli_records(text_run, TEXTS, texts=True), TEXTS)


def test_a_text_that_names_a_server_file_is_only_text(text_server: Server) -> None:
    secret = str(Path(__file__).resolve())
    r = httpx.post(text_server.url + "/predict", json={"inputs": [secret]}, timeout=60)
    assert r.status_code == 200 and r.json()[0]["input"] == secret


@pytest.mark.parametrize("kw, status, words", [
    ({"json": {"inputs": ["x"]}}, 422, "multipart/form-data files in the field 'files'"),
    ({"files": [("files", ("a.png", b"not an image", "image/png"))]}, 422, "'a.png' is not a decodable image"),
    ({"files": [("files", ("big.png", b"\x89PNG" + b"0" * 20_000, "image/png"))]}, 413, "'big.png' is over the limit"),
    ({"files": [("files", ("e.png", b"", "image/png"))]}, 422, "'e.png' is empty"),
    ({"files": [("other", ("a.png", b"x", "image/png"))]}, 422, "no files in the field 'files'"),
    ({"content": b"zz", "headers": {"content-type": "text/plain"}}, 415, "is not accepted"),
])
def test_bad_image_requests_get_one_line_4xx(image_server: Server, kw: dict, status: int, words: str) -> None:
    r = httpx.post(image_server.url + "/predict", timeout=60, **kw)
    assert r.status_code == status and words in r.json()["detail"] and "\n" not in r.json()["detail"], r.text


@pytest.mark.parametrize("kw, status, words", [
    ({"json": {"inputs": []}}, 422, "non-empty list of strings"),
    ({"json": {"texts": ["a"]}}, 422, '{"inputs": ["text", ...]}'),
    ({"json": {"inputs": ["ok", " "]}}, 422, "input 1 is an empty text"),
    ({"content": b"{not json", "headers": {"content-type": "application/json"}}, 400, "not valid JSON"),
    ({"files": [("files", ("a.txt", b"hello", "text/plain"))]}, 422, "this model takes texts"),
])
def test_bad_text_requests_get_one_line_4xx(text_server: Server, kw: dict, status: int, words: str) -> None:
    r = httpx.post(text_server.url + "/predict", timeout=60, **kw)
    assert r.status_code == status and words in r.json()["detail"] and "\n" not in r.json()["detail"], r.text


def test_a_busy_port_is_a_one_line_error(text_run: Path, text_server: Server) -> None:
    p = cli("serve", str(text_run), "--port", str(text_server.port), check=False)
    assert p.returncode == 2 and "pick another port with --port" in p.stderr and "Traceback" not in p.stderr
