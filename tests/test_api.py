"""The Python API (``transfuse.fit / load / Run``) and the scikit-learn estimator
(``transfuse.TransfuseClassifier``) on real data: sklearn's handwritten digits through
EfficientNet-Lite0 at 32 px, and short texts through TF-IDF.

What is checked: in-memory inputs of every accepted form give the probabilities the saved run gives
for the same pixels from files; ``load`` reopens a run with the same answers; the leaderboard is the
report's; a str given to a text model is never read as a file; the estimator is clone-safe,
picklable, and works in ``cross_val_score``, ``GridSearchCV`` and ``Pipeline``; scikit-learn's
``check_estimator`` API checks pass (which legacy checks are left out, and why: docs/decisions.md).
"""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import transfuse
from transfuse.errors import UserError

pytestmark = pytest.mark.real
IMG = {"backbones": ["bundled:efficientnet_lite0"], "image_size": 32, "folds": 2,
       "config": {"adapt": {"baseline": False}}}  # the pixels baseline: tests/test_pipeline.py
ANIMALS = ["the dog barked at the cat", "a cat sat on the mat and purred", "the horse ran across the field",
           "a cow gave milk in the barn", "the sheep grazed on the hill", "a bird sang in the tree",
           "the dog chased a rabbit", "a cat caught a mouse", "the horse ate hay in the stable",
           "the cow and the sheep slept", "a bird built a nest", "the puppy wagged its tail"]
FOODS = ["bread baked with flour and yeast", "a bowl of rice with beans", "fresh apples and pears",
         "cheese made from milk and salt", "a pot of soup with carrots", "pasta with tomato sauce",
         "a slice of bread with butter", "rice cooked with onions", "a salad of lettuce and tomato",
         "cake made with sugar and eggs", "soup of beans and onions", "butter and cheese on toast"]


def digits(n_per_class: int = 12, classes=(0, 1, 7)) -> tuple[np.ndarray, np.ndarray]:
    """Real handwritten digits as (n, 32, 32) uint8 images and their labels."""
    from sklearn.datasets import load_digits

    d = load_digits()
    idx = np.concatenate([np.flatnonzero(d.target == c)[:n_per_class] for c in classes])
    imgs = [np.asarray(Image.fromarray((d.images[i] * 255 / 16).astype(np.uint8)).resize((32, 32), Image.NEAREST))
            for i in idx]
    return np.stack(imgs), d.target[idx]


@pytest.fixture(scope="module")
def image_run(tmp_path_factory) -> transfuse.Run:
    X, y = digits()
    return transfuse.fit(X, y, out=tmp_path_factory.mktemp("api") / "digits", **IMG)


def test_fit_on_arrays_predicts_like_the_saved_files(image_run: transfuse.Run) -> None:
    X, y = digits()
    run = image_run
    assert run.classes == ["0", "1", "7"] and run.modality == "image"
    P = run.predict_proba(X)
    assert P.shape == (len(X), 3) and np.allclose(P.sum(axis=1), 1, atol=1e-5)
    # the run was trained on PNG files written from X: the same pixels from those files
    files = sorted((run.path / "inputs").rglob("*.png"))
    assert len(files) == len(X)
    np.testing.assert_allclose(run.predict_proba([Path(f) for f in files]), P, atol=1e-6)
    # every other accepted form of the same images
    np.testing.assert_allclose(run.predict_proba([Image.fromarray(a) for a in X[:4]]), P[:4], atol=1e-6)
    np.testing.assert_allclose(run.predict_proba(list(X[:4, :, :, None])), P[:4], atol=1e-6)
    np.testing.assert_allclose(run.predict_proba(X[:4].reshape(4, -1), ), P[:4], atol=1e-6)  # 2-D rows
    assert list(run.predict(X)) == [run.classes[k] for k in P.argmax(axis=1)]
    assert (run.predict(X) == y.astype(str)).mean() > 0.6  # it learned something


def test_load_leaderboard_report_and_records(image_run: transfuse.Run) -> None:
    import pandas as pd

    X, _ = digits()
    again = transfuse.load(image_run.path)
    np.testing.assert_allclose(again.predict_proba(X[:5]), image_run.predict_proba(X[:5]), atol=1e-7)
    rep = again.report()
    board = again.leaderboard()
    assert isinstance(board, pd.DataFrame) and set(board["candidate"]) == {c["name"] for c in rep["candidates"]}
    assert board.iloc[0]["cv_mean"] == max(c["cv_mean"] for c in rep["candidates"])
    assert board.loc[board["chosen"], "candidate"].tolist() == [rep["chosen"]] == [again.chosen]
    rec = again.records(X[:2])
    assert [r["input"] for r in rec] == ["image:0", "image:1"] and set(rec[0]["proba"]) == set(again.classes)
    frame = pd.DataFrame({"image": list(X[:3])})
    np.testing.assert_allclose(again.predict_proba(frame), image_run.predict_proba(X[:3]), atol=1e-7)


def test_fitting_again_into_the_same_folder_resumes(image_run: transfuse.Run) -> None:
    X, y = digits()
    mtime = (image_run.path / "model" / "model.json").stat().st_mtime_ns
    run = transfuse.fit(X, y, out=image_run.path, **IMG)
    assert run.chosen == image_run.chosen
    assert (image_run.path / "model" / "model.json").stat().st_mtime_ns >= mtime
    with pytest.raises(UserError, match="holds a different experiment"):
        transfuse.fit(X[::-1], y[::-1], out=image_run.path, **IMG)


def test_fit_on_a_folder_and_predict_on_a_folder(digits_folder: Path, tmp_path: Path) -> None:
    run = transfuse.fit(digits_folder, out=tmp_path / "folder", **IMG)
    assert run.report()["config"]["data"]["source"] == "folder" and run.classes == ["digit0", "digit1", "digit7"]
    files = sorted((digits_folder / "digit7").glob("*.png"))
    np.testing.assert_allclose(run.predict_proba(digits_folder / "digit7"), run.predict_proba(files), atol=1e-7)
    np.testing.assert_allclose(run.predict_proba([str(f) for f in files]), run.predict_proba(files), atol=1e-7)
    assert (run.predict(files) == "digit7").mean() > 0.5

def test_text_fit_and_strings_are_never_files(tmp_path: Path) -> None:
    texts, labels = ANIMALS + FOODS, ["animal"] * 12 + ["food"] * 12
    run = transfuse.fit(texts, labels, backbones=["tfidf"], folds=2, out=tmp_path / "txt")
    assert run.modality == "text" and run.classes == ["animal", "food"]
    assert list(run.predict(["the cat chased the dog", "bread and butter"])) == ["animal", "food"]
    f = tmp_path / "note.txt"
    f.write_text("bread and butter and cheese")
    # a str is the text itself even when it names a file; a Path is read
    assert run.records([str(f)])[0]["input"] == str(f)
    np.testing.assert_allclose(run.predict_proba([f]), run.predict_proba(["bread and butter and cheese"]), atol=1e-7)
    with pytest.raises(UserError, match="cannot be exported to ONNX") as e:  # a TF-IDF winner: refused in one line
        run.export()
    assert "\n" not in str(e.value)


@pytest.mark.parametrize("bad, words", [
    ([], "no inputs given"),
    ([np.zeros((4, 4), np.float32)], "must be uint8"),
    (["a text"], "'a text' is not an existing file; give image files, numpy or PIL images"),
    ([Path("/nonexistent/x.png")], "is not an existing file"),
    ([Path(__file__)], "test_api.py' is not a decodable image"),
    ([Path(__file__).with_name("x.wav")], "is not an existing file"),
    ([np.zeros((2, 2), np.uint8), "x"], "mix"),
])
def test_bad_inputs_are_one_line_errors(image_run: transfuse.Run, bad, words: str) -> None:
    with pytest.raises(UserError, match=words) as e:
        image_run.predict(bad)
    assert "\n" not in str(e.value)


def test_fit_without_labels_is_a_one_line_error(tmp_path: Path) -> None:
    with pytest.raises(UserError, match="labels are missing"):
        transfuse.fit(["a", "b"], out=tmp_path / "x")
    with pytest.raises(UserError, match="2 inputs but 3 labels"):
        transfuse.fit(["a", "b"], [0, 1, 1], out=tmp_path / "x")


# -- the scikit-learn estimator ----------------------------------------------------------------------


def text_clf(**kw) -> transfuse.TransfuseClassifier:
    return transfuse.TransfuseClassifier(backbones=("tfidf",), folds=2, **kw)


def test_estimator_in_cross_val_score_grid_search_and_pipeline() -> None:
    from sklearn.base import clone
    from sklearn.model_selection import GridSearchCV, StratifiedKFold, cross_val_score
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import FunctionTransformer

    X = np.array(ANIMALS + FOODS, dtype=object)
    y = np.array([0] * 12 + [1] * 12)
    cv = StratifiedKFold(2, shuffle=True, random_state=0)
    scores = cross_val_score(text_clf(), X, y, cv=cv)
    assert scores.shape == (2,) and scores.mean() > 0.6
    grid = GridSearchCV(text_clf(), {"folds": [2, 3]}, cv=cv).fit(X, y)
    assert grid.best_params_["folds"] in (2, 3) and set(grid.predict(X[:4])) <= {0, 1}
    upper = FunctionTransformer(lambda t: np.array([s.upper() for s in t], dtype=object))
    pipe = make_pipeline(upper, text_clf()).fit(X, y)
    assert list(pipe.predict(["THE CAT", "BREAD AND BUTTER"])) == [0, 1]
    c = clone(text_clf(config={"calibration": {"enabled": False}}))
    assert c.get_params() == text_clf(config={"calibration": {"enabled": False}}).get_params()


def test_estimator_labels_pickle_and_params(tmp_path: Path) -> None:
    X = ANIMALS + FOODS
    y = np.array(["zoo"] * 12 + ["baker"] * 12)
    clf = text_clf(workdir=str(tmp_path)).fit(X, y)
    assert list(clf.classes_) == ["baker", "zoo"]
    P = clf.predict_proba(["the cat sat", "rice and beans"])
    assert list(clf.classes_[P.argmax(axis=1)]) == ["zoo", "baker"] == list(clf.predict(["the cat sat", "rice and beans"]))
    back = pickle.loads(pickle.dumps(clf))
    np.testing.assert_allclose(back.predict_proba(["the cat sat", "rice and beans"]), P, atol=1e-7)
    assert clf.set_params(folds=3).get_params()["folds"] == 3
    # a refit with the same data and settings reuses its finished run folder
    runs = sorted(tmp_path.glob("fit-*"))
    text_clf(workdir=str(tmp_path)).fit(X, y)
    assert sorted(tmp_path.glob("fit-*")) == runs


def test_estimator_on_digit_rows() -> None:
    """scikit-learn's own form of the digits: (n, 64) rows of 0..16 values."""
    from sklearn.datasets import load_digits

    d = load_digits()
    idx = np.concatenate([np.flatnonzero(d.target == c)[:12] for c in (0, 1, 7)])
    clf = transfuse.TransfuseClassifier(**IMG).fit(d.data[idx], d.target[idx])
    assert clf.n_features_in_ == 64 and clf.pixel_range_ == (0.0, 16.0)
    assert (clf.predict(d.data[idx]) == d.target[idx]).mean() > 0.6
    with pytest.raises(ValueError, match="X has 10 features"):
        clf.predict(d.data[idx, :10])


def test_check_estimator_api_checks() -> None:
    """scikit-learn's API checks (clone, repr, fit returns self, no work in __init__, unfitted
    errors, n_features_in_, read-only input, ...), all of them, on the image estimator."""
    from sklearn.utils.estimator_checks import check_estimator

    clf = transfuse.TransfuseClassifier(**{**IMG, "config": {"fuse": {"enabled": False}, "adapt": {"baseline": False}}})
    failed = [r for r in check_estimator(clf, legacy=False, on_fail=None) if r["status"] == "failed"]
    assert not failed, [(r["check_name"], str(r["exception"])[:300]) for r in failed]


def test_fit_overwrite_replaces_a_finished_run(tmp_path: Path) -> None:
    texts, labels = ANIMALS + FOODS, ["animal"] * 12 + ["food"] * 12
    out = tmp_path / "run"
    transfuse.fit(texts, labels, backbones=["tfidf"], folds=2, out=out)
    with pytest.raises(UserError, match="--overwrite") as e:
        transfuse.fit(texts, labels, backbones=["tfidf"], folds=3, out=out)
    assert "transfuse resume" in str(e.value) and "\n" not in str(e.value)
    run = transfuse.fit(texts, labels, backbones=["tfidf"], folds=3, out=out, overwrite=True)
    assert run.report()["cv"]["folds"] == 3 and (out / "inputs").is_dir()
    assert list(run.predict(["the cat sat"])) == ["animal"]

#: Legacy checks that apply and take seconds (input validation, error paths). All legacy checks
#: were run once in full (docs/decisions.md, 281 s): they pass, except the one that expects a
#: classifier to learn 2-10 dimensional tabular blobs (check_classifiers_train) and the one that
#: expects float32 network outputs not to depend on batch composition
#: (check_methods_subset_invariance: 3e-6 apart at rtol 1e-4).
LEGACY = ("check_estimator_sparse_array", "check_estimator_sparse_matrix", "check_complex_data",
          "check_estimators_empty_data_messages", "check_fit1d", "check_fit2d_1sample",
          "check_classifiers_one_label", "check_classifiers_regression_target", "check_supervised_y_no_nan",
          "check_requires_y_none", "check_estimators_nan_inf", "check_supervised_y_2d",
          "check_classifier_data_not_an_array")


@pytest.mark.parametrize("check", LEGACY)
def test_check_estimator_legacy_checks_that_apply(check: str) -> None:
    from sklearn.utils import estimator_checks

    getattr(estimator_checks, check)("TransfuseClassifier", transfuse.TransfuseClassifier(**IMG))
