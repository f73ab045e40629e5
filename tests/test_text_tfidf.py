"""The TF-IDF + logistic-regression baseline: a raw-text sklearn classifier."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.base import clone
from sklearn.model_selection import cross_val_score

from transfuse.backbones.registry import SPECIAL
from transfuse.backbones.text.tfidf import TfidfClassifier
from transfuse.errors import UserError

ANIMALS = ["the dog barked at the cat", "a cat chased a mouse", "the horse ate hay in the barn",
           "a puppy and a kitten played", "the cow grazed near the sheep", "wolves hunt deer at night"]
MONEY = ["the bank raised interest rates", "stocks fell as markets slumped", "she paid the loan back",
         "bond yields and the dollar rose", "the fund invested in shares", "inflation hurt the currency"]


def corpus():
    return ANIMALS + MONEY, np.array([0] * 6 + [1] * 6)


def test_fits_and_predicts_held_out_texts():
    X, y = corpus()
    clf = SPECIAL.get("tfidf")().fit(X, y)
    test = ["a dog and a cat", "interest rates and stocks"]
    proba = clf.predict_proba(test)
    assert proba.shape == (2, 2)
    np.testing.assert_allclose(proba.sum(1), 1.0)
    assert clf.predict(test).tolist() == [0, 1]
    assert clf.classes_.tolist() == [0, 1]


def test_is_a_raw_estimator_that_survives_clone_and_cv():
    X, y = corpus()
    clf = TfidfClassifier(C=5.0)
    assert clf.is_raw_estimator is True
    c = clone(clf)
    assert c.is_raw_estimator is True and c.get_params()["C"] == 5.0
    scores = cross_val_score(c, X, y, cv=3)
    assert scores.mean() >= 0.5


def test_string_labels_and_char_ngrams_handle_misspellings():
    X, y = corpus()
    labels = np.where(y == 0, "animal", "money")
    clf = TfidfClassifier(word_ngram_range=(1, 1)).fit(X, labels)
    assert clf.predict(["the kittn and puppyy"]).tolist() == ["animal"]  # only char n-grams match


def test_user_errors():
    msg = r"tfidf option\(s\) \['ngrams'\] not supported; valid options: word_ngram_range"
    with pytest.raises(UserError, match=msg):
        SPECIAL.get("tfidf")(ngrams=2)
    with pytest.raises(TypeError, match="list of texts"):
        TfidfClassifier().fit("one text", [0])
