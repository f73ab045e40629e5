"""``tfidf``: the no-transfer text baseline, TF-IDF word + character n-grams and logistic regression.

It is a raw-input sklearn classifier (``fit(list[str], y)`` / ``predict_proba(list[str])``), not a
:class:`~transfuse.backbones.base.Backbone`: ``is_raw_estimator = True`` tells the pipeline to
cross-validate it over the texts themselves, so every report shows what transfer learning bought.
A fitted one is saved without pickle as JSON parameters plus numpy arrays
(:meth:`~TfidfClassifier.to_state`, :meth:`~TfidfClassifier.from_state`).
"""

from __future__ import annotations

import inspect
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
from sklearn.base import BaseEstimator, ClassifierMixin
from sklearn.feature_extraction.text import TfidfVectorizer
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import FeatureUnion, Pipeline
from sklearn.utils.validation import check_is_fitted

from transfuse.backbones.registry import RAW_ESTIMATORS, SPECIAL
from transfuse.errors import UserError

#: ``format`` of :meth:`TfidfClassifier.to_state`'s parameters.
STATE_FORMAT = "transfuse.tfidf/1"


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

    def to_state(self) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
        """The fitted model as JSON-able parameters (estimator options, each vectorizer's terms in
        column order, string classes) and numeric arrays ``idf`` (word then char columns), ``coef``,
        ``intercept`` and, for numeric labels, ``classes`` (safetensors cannot hold strings):
        nothing a loader executes."""
        check_is_fitted(self, "pipeline_")
        vectorizers = self.pipeline_.named_steps["tfidf"].transformer_list
        lr = self.pipeline_.named_steps["clf"]
        params: dict[str, Any] = {
            "format": STATE_FORMAT,
            "estimator": {k: list(v) if isinstance(v, tuple) else v for k, v in self.get_params().items()},
            "vocabulary": {name: sorted(v.vocabulary_, key=v.vocabulary_.__getitem__) for name, v in vectorizers},
        }
        arrays = {"idf": np.concatenate([v.idf_ for _, v in vectorizers]).astype(np.float64),
                  "coef": np.ascontiguousarray(lr.coef_, dtype=np.float64),
                  "intercept": np.ascontiguousarray(lr.intercept_, dtype=np.float64)}
        classes = self.classes_
        if classes.dtype.kind in "biuf":
            arrays["classes"] = np.ascontiguousarray(classes)
        elif all(isinstance(c, str) for c in classes.tolist()):
            params["classes"] = classes.tolist()
        else:
            raise UserError(f"tfidf state: labels must be numbers or strings, got {classes.dtype} classes")
        return params, arrays

    @classmethod
    def from_state(cls, params: Mapping[str, Any], arrays: Mapping[str, np.ndarray]) -> TfidfClassifier:
        """The fitted classifier :meth:`to_state` described, rebuilt without refitting (its
        ``predict_proba`` equals the original's); parts that disagree raise a UserError."""
        if params.get("format") != STATE_FORMAT:
            raise UserError(f"tfidf state: format {params.get('format')!r} is not {STATE_FORMAT!r}")
        missing = ([k for k in ("estimator", "vocabulary") if k not in params]
                   + [k for k in ("idf", "coef", "intercept") if k not in arrays])
        if missing or ("classes" in arrays) == ("classes" in params):
            raise UserError(f"tfidf state: missing {', '.join(missing) or 'classes (or given twice)'}")
        options = {k: tuple(v) if isinstance(v, list) else v for k, v in params["estimator"].items()}
        _check_options(options)
        clf = cls(**options)
        pipe = clf._pipeline()
        vectorizers = pipe.named_steps["tfidf"].transformer_list
        terms = [list(params["vocabulary"].get(name, ())) for name, _ in vectorizers]
        classes = np.asarray(arrays["classes"] if "classes" in arrays else params["classes"])
        idf, coef, intercept = (np.asarray(arrays[k], dtype=np.float64) for k in ("idf", "coef", "intercept"))
        _check_state(terms, idf, coef, intercept, classes)
        start = 0
        for (_, vec), words in zip(vectorizers, terms):
            vec.vocabulary_ = {t: i for i, t in enumerate(words)}
            vec.idf_ = idf[start:start + len(words)]
            start += len(words)
        lr = pipe.named_steps["clf"]
        lr.coef_, lr.intercept_, lr.classes_ = coef, intercept, classes
        clf.pipeline_, clf.classes_ = pipe, classes
        return clf


def _texts(X: Sequence[str]) -> list[str]:
    if isinstance(X, str):
        raise TypeError("X must be a list of texts, not one string")
    return [str(x) for x in X]


def _check_state(terms: list[list[str]], idf: np.ndarray, coef: np.ndarray, intercept: np.ndarray,
                 classes: np.ndarray) -> None:
    """Raise a UserError naming the first disagreement between the parts of a tfidf state."""
    n = sum(len(t) for t in terms)
    problem = None
    if any(len(set(t)) != len(t) for t in terms):
        problem = "the vocabulary repeats a term"
    elif idf.shape != (n,):
        problem = f"idf has shape {idf.shape} but the vocabulary has {n} terms"
    elif coef.ndim != 2 or coef.shape[1] != n:
        problem = f"coef has shape {coef.shape} but the vocabulary has {n} terms (columns)"
    elif classes.ndim != 1 or len(classes) < 2 or len(np.unique(classes)) != len(classes):
        problem = f"classes must be 2 or more distinct labels, got {classes.tolist()}"
    else:
        rows = 1 if len(classes) == 2 else len(classes)
        if coef.shape[0] != rows or intercept.shape != (rows,):
            problem = (f"coef has {coef.shape[0]} rows and intercept shape {intercept.shape} but "
                       f"{len(classes)} classes need {rows}")
    if problem:
        raise UserError(f"tfidf state: {problem}")


def make_tfidf(**options: Any) -> TfidfClassifier:
    """Factory for ``--backbone tfidf``; options are :class:`TfidfClassifier` parameters."""
    _check_options(options)
    return TfidfClassifier(**options)


def _check_options(options: Mapping[str, Any]) -> None:
    valid = list(inspect.signature(TfidfClassifier).parameters)
    unknown = sorted(set(options) - set(valid))
    if unknown:
        raise UserError(f"tfidf option(s) {unknown} not supported; valid options: {', '.join(valid)}")


SPECIAL.add("tfidf", make_tfidf)
RAW_ESTIMATORS.add("tfidf")
