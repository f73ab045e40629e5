"""``tfidf``: the no-transfer text baseline, TF-IDF word + character n-grams and logistic regression.

It is a raw-input sklearn classifier (``fit(list[str], y)`` / ``predict_proba(list[str])``), not a
:class:`~transfuse.backbones.base.Backbone`: ``is_raw_estimator = True`` tells the pipeline to
cross-validate it over the texts themselves, so every report shows what transfer learning bought.
"""

from __future__ import annotations

import inspect
from collections.abc import Sequence
from typing import Any

import numpy as np
from sklearn.base import BaseEstimator, ClassifierMixin
from sklearn.feature_extraction.text import TfidfVectorizer
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import FeatureUnion, Pipeline

from transfuse.backbones.registry import SPECIAL
from transfuse.errors import UserError


class TfidfClassifier(ClassifierMixin, BaseEstimator):
    """Sublinear TF-IDF over word n-grams and character n-grams (within word boundaries),
    each L2-normalised and concatenated, then multinomial logistic regression.

    Character n-grams make it robust to misspellings, inflections and obfuscated spam; word
    n-grams carry the topical signal. ``min_df`` and ``max_features`` bound the vocabulary.
    """

    is_raw_estimator = True
    modality = "text"

    def __init__(
        self,
        word_ngram_range: tuple[int, int] = (1, 2),
        char_ngram_range: tuple[int, int] = (2, 5),
        min_df: int = 1,
        max_features: int | None = 200_000,
        C: float = 30.0,
        max_iter: int = 2000,
        class_weight: str | None = None,
    ) -> None:
        self.word_ngram_range = word_ngram_range
        self.char_ngram_range = char_ngram_range
        self.min_df = min_df
        self.max_features = max_features
        self.C = C
        self.max_iter = max_iter
        self.class_weight = class_weight

    def _pipeline(self) -> Pipeline:
        common = dict(sublinear_tf=True, min_df=self.min_df, max_features=self.max_features, lowercase=True)
        features = FeatureUnion([
            ("word", TfidfVectorizer(analyzer="word", ngram_range=tuple(self.word_ngram_range),
                                     token_pattern=r"(?u)\b\w+\b", **common)),
            ("char", TfidfVectorizer(analyzer="char_wb", ngram_range=tuple(self.char_ngram_range), **common)),
        ])
        clf = LogisticRegression(C=self.C, max_iter=self.max_iter, class_weight=self.class_weight)
        return Pipeline([("tfidf", features), ("clf", clf)])

    def fit(self, X: Sequence[str], y: Sequence[Any]) -> TfidfClassifier:
        texts = _texts(X)
        if len(texts) != len(y):
            raise ValueError(f"X has {len(texts)} texts but y has {len(y)} labels")
        self.pipeline_ = self._pipeline().fit(texts, np.asarray(y))
        self.classes_ = self.pipeline_.classes_
        return self

    def predict_proba(self, X: Sequence[str]) -> np.ndarray:
        return self.pipeline_.predict_proba(_texts(X))

    def decision_function(self, X: Sequence[str]) -> np.ndarray:
        return self.pipeline_.decision_function(_texts(X))

    def predict(self, X: Sequence[str]) -> np.ndarray:
        return self.classes_[np.argmax(self.predict_proba(X), axis=1)]


def _texts(X: Sequence[str]) -> list[str]:
    if isinstance(X, str):
        raise TypeError("X must be a list of texts, not one string")
    return [str(x) for x in X]


def make_tfidf(**options: Any) -> TfidfClassifier:
    """Factory for ``--backbone tfidf``; options are :class:`TfidfClassifier` parameters."""
    valid = [p for p in inspect.signature(TfidfClassifier).parameters]
    unknown = sorted(set(options) - set(valid))
    if unknown:
        raise UserError(f"tfidf option(s) {unknown} not supported; valid options: {', '.join(valid)}")
    return TfidfClassifier(**options)


SPECIAL.add("tfidf", make_tfidf)
