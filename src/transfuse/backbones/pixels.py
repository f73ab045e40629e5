"""``pixels``: the no-transfer image baseline, logistic regression on raw pixels.

Each image is shrunk to ``size`` x ``size`` (box filter: every source pixel counts), in grey or
colour, scaled to [0, 1], standardised per pixel, then multinomial logistic regression. On small
or simple images (digits, icons, sketches) it can beat a transferred ImageNet probe: 8x8 digits,
0.917 against EfficientNet-Lite0's probe at 0.783 (issue 16). Like ``tfidf`` for texts it is a
raw-input sklearn classifier (``is_raw_estimator = True``): the pipeline cross-validates it over
the decoded images with the same fold loop as every candidate, and a fitted one is saved without
pickle as JSON parameters plus arrays (:meth:`~PixelClassifier.to_state`).
"""

from __future__ import annotations

import inspect
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
from sklearn.base import BaseEstimator, ClassifierMixin
from sklearn.linear_model import LogisticRegression
from sklearn.preprocessing import StandardScaler
from sklearn.utils.validation import check_is_fitted

from transfuse.backbones.registry import RAW_ESTIMATORS, SPECIAL
from transfuse.errors import UserError

#: ``format`` of :meth:`PixelClassifier.to_state`'s parameters.
STATE_FORMAT = "transfuse.pixels/1"


def pixel_features(images: Sequence[Any], size: int, color: str) -> np.ndarray:
    """``(n, size*size*channels)`` float32 in [0, 1]: each image (PIL, array or path) shrunk
    with a box filter, grey (``L``) or colour (``RGB``)."""
    from PIL import Image

    from transfuse.data.images import load_image, to_rgb

    mode = "L" if color == "gray" else "RGB"
    rows = []
    for x in images:
        if isinstance(x, (str, bytes)) or hasattr(x, "__fspath__"):
            img = load_image(x)
        elif isinstance(x, np.ndarray):
            img = Image.fromarray(x)
        else:
            img = x
        img = to_rgb(img).convert(mode).resize((size, size), Image.BOX)
        rows.append(np.asarray(img, np.float32).reshape(-1) / 255.0)
    return np.stack(rows) if rows else np.zeros((0, size * size * (1 if mode == "L" else 3)), np.float32)


class PixelClassifier(ClassifierMixin, BaseEstimator):
    """Raw pixels (``size`` x ``size``, ``gray`` or ``rgb``) -> standardise -> logistic regression
    (``C``: inverse L2 strength; small images have few, correlated features, so 1.0 suffices)."""

    is_raw_estimator = True
    modality = "image"

    def __init__(self, size: int = 16, color: str = "rgb", C: float = 1.0, max_iter: int = 1000,
                 class_weight: str | None = None) -> None:
        self.size = size
        self.color = color
        self.C = C
        self.max_iter = max_iter
        self.class_weight = class_weight

    def _features(self, X: Sequence[Any]) -> np.ndarray:
        return pixel_features(X, int(self.size), self.color)

    def fit(self, X: Sequence[Any], y: Sequence[Any]) -> PixelClassifier:
        F = self._features(X)
        if len(F) != len(y):
            raise ValueError(f"X has {len(F)} images but y has {len(y)} labels")
        self.scaler_ = StandardScaler().fit(F)
        self.clf_ = LogisticRegression(C=self.C, max_iter=self.max_iter, class_weight=self.class_weight)
        self.clf_.fit(self.scaler_.transform(F), np.asarray(y))
        self.classes_ = self.clf_.classes_
        return self

    def decision_function(self, X: Sequence[Any]) -> np.ndarray:
        return self.clf_.decision_function(self.scaler_.transform(self._features(X)))

    def predict_proba(self, X: Sequence[Any]) -> np.ndarray:
        return self.clf_.predict_proba(self.scaler_.transform(self._features(X)))

    def predict(self, X: Sequence[Any]) -> np.ndarray:
        return self.classes_[np.argmax(self.predict_proba(X), axis=1)]

    def to_state(self) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
        """Options (and string classes) as JSON; ``mean``, ``scale``, ``coef``, ``intercept`` and
        numeric ``classes`` as arrays: nothing a loader executes."""
        check_is_fitted(self, "clf_")
        params: dict[str, Any] = {"format": STATE_FORMAT, "estimator": self.get_params()}
        arrays = {"mean": np.asarray(self.scaler_.mean_, np.float64),
                  "scale": np.asarray(self.scaler_.scale_, np.float64),
                  "coef": np.ascontiguousarray(self.clf_.coef_, dtype=np.float64),
                  "intercept": np.ascontiguousarray(self.clf_.intercept_, dtype=np.float64)}
        classes = self.classes_
        if classes.dtype.kind in "biuf":
            arrays["classes"] = np.ascontiguousarray(classes)
        elif all(isinstance(c, str) for c in classes.tolist()):
            params["classes"] = classes.tolist()
        else:
            raise UserError(f"pixels state: labels must be numbers or strings, got {classes.dtype} classes")
        return params, arrays

    @classmethod
    def from_state(cls, params: Mapping[str, Any], arrays: Mapping[str, np.ndarray]) -> PixelClassifier:
        """The fitted classifier :meth:`to_state` described (same ``predict_proba``); parts that
        disagree raise a one-line UserError."""
        if params.get("format") != STATE_FORMAT:
            raise UserError(f"pixels state: format {params.get('format')!r} is not {STATE_FORMAT!r}")
        missing = [k for k in ("mean", "scale", "coef", "intercept") if k not in arrays]
        if "estimator" not in params or missing or ("classes" in arrays) == ("classes" in params):
            raise UserError(f"pixels state: missing {', '.join(missing) or 'estimator or classes'}")
        options = dict(params["estimator"])
        _check_options(options)
        clf = cls(**options)
        mean, scale, coef, intercept = (np.asarray(arrays[k], np.float64) for k in ("mean", "scale", "coef", "intercept"))
        classes = np.asarray(arrays["classes"] if "classes" in arrays else params["classes"])
        n = int(clf.size) ** 2 * (1 if clf.color == "gray" else 3)
        rows = 1 if len(classes) == 2 else len(classes)
        if mean.shape != (n,) or scale.shape != (n,) or coef.shape != (rows, n) or intercept.shape != (rows,):
            raise UserError(f"pixels state: shapes mean {mean.shape}, scale {scale.shape}, coef {coef.shape}, "
                            f"intercept {intercept.shape} do not fit {n} pixels and {len(classes)} classes")
        clf.scaler_ = StandardScaler()
        clf.scaler_.mean_, clf.scaler_.scale_, clf.scaler_.var_ = mean, scale, scale ** 2
        clf.scaler_.n_features_in_ = n
        lr = LogisticRegression(C=clf.C, max_iter=clf.max_iter, class_weight=clf.class_weight)
        lr.coef_, lr.intercept_, lr.classes_ = coef, intercept, classes
        lr.n_features_in_ = n
        clf.clf_, clf.classes_ = lr, classes
        return clf


def _check_options(options: Mapping[str, Any]) -> None:
    valid = list(inspect.signature(PixelClassifier).parameters)
    unknown = sorted(set(options) - set(valid))
    if unknown:
        raise UserError(f"pixels option(s) {unknown} not supported; valid options: {', '.join(valid)}")
    size, color = options.get("size", 16), options.get("color", "rgb")
    if not isinstance(size, int) or not 2 <= size <= 64:
        raise UserError(f"pixels option size={size!r} must be a whole number from 2 to 64 (e.g. 8 or 16)")
    if color not in ("gray", "rgb"):
        raise UserError(f"pixels option color={color!r} is not valid; use gray or rgb")


def make_pixels(**options: Any) -> PixelClassifier:
    """Factory for ``--backbone pixels``; options are :class:`PixelClassifier` parameters (the
    run's ``preprocess.image_size`` is for the transferred backbones and is ignored here)."""
    options.pop("image_size", None)
    _check_options(options)
    return PixelClassifier(**options)


SPECIAL.add("pixels", make_pixels)
RAW_ESTIMATORS.add("pixels")
