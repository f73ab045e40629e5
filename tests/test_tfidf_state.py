"""The TF-IDF baseline saved without pickle: JSON parameters + safetensors arrays, on WordNet glosses."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from safetensors.numpy import load_file, save_file

from transfuse.backbones.text.tfidf import TfidfClassifier
from transfuse.data.text import load_wordnet
from transfuse.errors import UserError

OUT_OF_VOCABULARY = ["", "zqxjv blorptastic wuggle", "a glorbnax that frimbles the quuxite", "!!! ???"]


@pytest.fixture(scope="module")
def glosses() -> tuple[list[str], np.ndarray, list[str], np.ndarray]:
    """Real WordNet noun glosses of four supersenses: every other one to fit, the rest held out."""
    try:
        ds = load_wordnet(supersenses=["animal", "food", "artifact", "person"], max_per_class=40, seed=0)
    except UserError as e:
        pytest.skip(str(e))
    labels = np.array(ds.classes)[ds.labels]
    return list(ds.items[::2]), labels[::2], list(ds.items[1::2]), labels[1::2]


def round_trip(clf: TfidfClassifier, tmp_path: Path) -> TfidfClassifier:
    params, arrays = clf.to_state()
    (tmp_path / "tfidf.json").write_text(json.dumps(params))
    save_file(arrays, str(tmp_path / "tfidf.safetensors"))
    return TfidfClassifier.from_state(json.loads((tmp_path / "tfidf.json").read_text()),
                                      load_file(str(tmp_path / "tfidf.safetensors")))


@pytest.mark.parametrize("binary", [False, True], ids=["4 string classes", "2 int classes"])
def test_round_trip_predicts_the_same_probabilities(glosses, tmp_path: Path, binary: bool) -> None:
    X, y, held_out, _ = glosses
    if binary:
        y = (y == "noun.animal").astype(np.int64)  # one coef row, sigmoid instead of softmax
    clf = TfidfClassifier(C=10.0).fit(X, y)
    back = round_trip(clf, tmp_path)
    texts = held_out + OUT_OF_VOCABULARY
    np.testing.assert_allclose(back.predict_proba(texts), clf.predict_proba(texts), rtol=0, atol=1e-6)
    assert back.predict(texts).tolist() == clf.predict(texts).tolist()
    assert back.classes_.tolist() == clf.classes_.tolist() and back.get_params() == clf.get_params()


def test_state_holds_only_json_types_and_numeric_arrays(glosses) -> None:
    X, y, _, _ = glosses
    params, arrays = TfidfClassifier(word_ngram_range=(1, 1), char_ngram_range=(3, 4)).fit(X, y).to_state()
    assert json.loads(json.dumps(params)) == params
    assert params["estimator"]["word_ngram_range"] == [1, 1] and params["classes"][0] == "noun.animal"
    assert set(arrays) == {"idf", "coef", "intercept"}  # string classes live in params
    assert all(isinstance(a, np.ndarray) and a.dtype.kind in "biuf" for a in arrays.values())
    n = sum(len(v) for v in params["vocabulary"].values())
    assert arrays["idf"].shape == (n,) and arrays["coef"].shape == (4, n) and arrays["intercept"].shape == (4,)


CORRUPTIONS: dict[str, tuple[Callable[[dict[str, Any], dict[str, np.ndarray]], Any], str]] = {
    "term dropped": (lambda p, a: p["vocabulary"]["word"].pop(),
                     r"idf has shape \(\d+,\) but the vocabulary has \d+ terms"),
    "term repeated": (lambda p, a: p["vocabulary"]["char"].insert(0, p["vocabulary"]["char"][0]),
                      "the vocabulary repeats a term"),
    "coef column dropped": (lambda p, a: a.update(coef=a["coef"][:, 1:]),
                            r"coef has shape \(4, \d+\) but the vocabulary has \d+ terms"),
    "class added": (lambda p, a: p["classes"].append("noun.extra"),
                    r"coef has 4 rows and intercept shape \(4,\) but 5 classes need 5"),
    "coef row dropped": (lambda p, a: a.update(coef=a["coef"][1:]),
                         r"coef has 3 rows and intercept shape \(4,\) but 4 classes need 4"),
    "intercept cut": (lambda p, a: a.update(intercept=a["intercept"][:2]),
                      r"coef has 4 rows and intercept shape \(2,\) but 4 classes need 4"),
    "idf missing": (lambda p, a: a.pop("idf"), "missing idf"),
    "other format": (lambda p, a: p.update(format="sklearn.pickle"),
                     "format 'sklearn.pickle' is not 'transfuse.tfidf/1'"),
    "unknown option": (lambda p, a: p["estimator"].update(ngrams=2),
                       r"tfidf option\(s\) \['ngrams'\] not supported"),
}


@pytest.mark.parametrize("case", CORRUPTIONS)
def test_inconsistent_states_are_refused(glosses, case: str) -> None:
    corrupt, message = CORRUPTIONS[case]
    X, y, _, _ = glosses
    params, arrays = TfidfClassifier(word_ngram_range=(1, 1), char_ngram_range=(3, 3)).fit(X, y).to_state()
    corrupt(params, arrays)
    with pytest.raises(UserError, match=message):
        TfidfClassifier.from_state(params, arrays)
