"""``TransfuseClassifier``: the pipeline as a scikit-learn estimator (``cross_val_score``,
``GridSearchCV``, ``Pipeline``, ``clone``).

``fit(X, y)`` runs :func:`transfuse.fit` into a run folder (a temporary one, removed with the
estimator, unless ``workdir`` is given: then ``workdir/fit-<hash of data and settings>``, which a
refit with the same data and settings reuses); ``predict``/``predict_proba`` use that run's
chosen model. ``X``: what :func:`transfuse.api.inputs.as_batch` accepts, including scikit-learn's
2-D numeric arrays, read as rows of flattened greyscale images (``image_shape``; non-uint8 values
are mapped to 0..255 by the range seen in ``fit``).
"""

from __future__ import annotations

import hashlib
import json
import shutil
import tempfile
import weakref
from pathlib import Path
from typing import Any

import numpy as np
from sklearn.base import BaseEstimator, ClassifierMixin
from sklearn.utils.multiclass import check_classification_targets
from sklearn.utils.validation import check_is_fitted, column_or_1d, validate_data

from transfuse.api.inputs import Batch, as_batch
from transfuse.errors import UserError


def _is_frame_like(X: Any) -> bool:
    return type(X).__name__ in ("DataFrame", "Series")


def _is_pil(X: Any) -> bool:
    from transfuse.api.inputs import _is_pil as is_pil

    return is_pil(X)


def _numeric_2d(X: Any) -> bool:
    return isinstance(X, np.ndarray) and X.ndim == 2 and X.dtype.kind in "biuf"


def _is_array_like_2d(X: Any) -> bool:
    """A 2-D numeric array-like (numpy, nested lists of numbers, a numeric DataFrame)."""
    if isinstance(X, np.ndarray):
        return X.ndim == 2 and X.dtype.kind in "biufcO" and not (X.dtype.kind == "O" and isinstance(X.flat[0], str))
    if type(X).__name__ == "DataFrame":
        return False
    if isinstance(X, (list, tuple)) and X and isinstance(X[0], (list, tuple)) and not isinstance(X[0], str):
        return not (len(X[0]) == 2 and np.ndim(X[0][1]) == 0 and isinstance(X[0][0], np.ndarray))
    return False


class TransfuseClassifier(ClassifierMixin, BaseEstimator):
    """Transfer learning + fusion, selected by cross-validation, behind ``fit``/``predict``.

    Parameters (all stored as given; nothing is done in ``__init__``):
    ``backbones`` / ``strategies``: as in ``transfuse fit`` (default: the modality's bundled
    backbones, ``linear_probe``); ``modality``: image | text | audio (default: from ``X``);
    ``folds``: CV folds inside each fit; ``image_size``: input resolution for the image backbones;
    ``image_shape``: (height, width) of 2-D rows; ``config``: other config sections (nested dict);
    ``workdir``: keep run folders there; ``seed``; ``batch_size`` (prediction).
    """

    def __init__(self, backbones: Any = None, strategies: Any = None, modality: str | None = None, folds: int = 3,
                 image_size: int | None = None, image_shape: Any = None, config: dict[str, Any] | None = None,
                 workdir: str | None = None, seed: int = 0, batch_size: int = 32):
        self.backbones = backbones
        self.strategies = strategies
        self.modality = modality
        self.folds = folds
        self.image_size = image_size
        self.image_shape = image_shape
        self.config = config
        self.workdir = workdir
        self.seed = seed
        self.batch_size = batch_size

    def __sklearn_tags__(self) -> Any:
        tags = super().__sklearn_tags__()
        tags.input_tags.string = True  # a 1-D list of texts or file paths
        tags.input_tags.three_d_array = True  # (n, H, W) images
        tags.non_deterministic = False
        return tags

    # -- inputs ------------------------------------------------------------------------------------
    def _as_batch(self, X: Any, reset: bool) -> Batch:
        import scipy.sparse as sp

        if sp.issparse(X):  # scikit-learn's own message: "Sparse data was passed ..., but dense data is required"
            validate_data(self, X, reset=reset, accept_sparse=False)
        if hasattr(X, "__array__") and not isinstance(X, np.ndarray) and not _is_frame_like(X) and not _is_pil(X):
            X = np.asarray(X)
        if isinstance(X, np.ndarray) and X.ndim == 1 and X.dtype.kind in "biufc":
            validate_data(self, X, reset=reset)  # scikit-learn's "Expected 2D array, got 1D array instead"
        numeric_frame = type(X).__name__ == "DataFrame" and all(dt.kind in "biuf" for dt in X.dtypes)
        if _is_array_like_2d(X) or _numeric_2d(X) or numeric_frame:
            X = validate_data(self, X, reset=reset, dtype=None if getattr(X, "dtype", None) == np.uint8 else "numeric")
            if reset:
                self.pixel_range_ = (float(X.min()), float(X.max())) if X.dtype != np.uint8 else None
            return as_batch(X, self.modality or "image", image_shape=self.image_shape,
                            pixel_range=getattr(self, "pixel_range_", None))
        if reset:
            self.pixel_range_ = None
            if hasattr(self, "n_features_in_"):
                del self.n_features_in_
        modality = self.modality if reset else self.run_.modality
        return as_batch(X, modality)

    def fit(self, X: Any, y: Any) -> TransfuseClassifier:
        from transfuse.api.fit import build_config
        from transfuse.pipeline import run_experiment

        if y is None:
            raise ValueError("TransfuseClassifier requires y to be passed, but the target y is None")
        batch = self._as_batch(X, reset=True)
        y = column_or_1d(y, warn=True)  # a (n, 1) column: scikit-learn's DataConversionWarning
        check_classification_targets(y)
        if len(y) != len(batch):
            raise ValueError(f"X has {len(batch)} samples but y has {len(y)}")
        self.classes_ = np.unique(y)
        if len(self.classes_) < 2:
            raise ValueError(f"TransfuseClassifier needs at least 2 classes in y; got {len(self.classes_)} class")
        names = [str(c) for c in self.classes_]
        if len(set(names)) != len(names):
            raise ValueError("two classes of y have the same text form; give labels that differ as strings")
        self._release()
        settings = self.get_params()
        key = hashlib.sha256(json.dumps({k: v for k, v in settings.items() if k != "workdir"}, sort_keys=True,
                                        default=str).encode()).hexdigest()
        if self.workdir is None:
            tmp = tempfile.mkdtemp(prefix="transfuse-fit-")
            self._finalizer = weakref.finalize(self, shutil.rmtree, tmp, True)
            out = Path(tmp) / "run"
        else:
            from transfuse.api.inputs import fingerprint

            fp = fingerprint(batch, [str(v) for v in y])
            out = Path(self.workdir) / f"fit-{hashlib.sha256((key + fp).encode()).hexdigest()[:12]}"
        cfg = build_config(batch, [str(v) for v in y], out=out, backbones=self.backbones, strategies=self.strategies,
                           folds=self.folds, image_size=self.image_size, seed=self.seed, config=self.config,
                           name="transfuse-classifier")
        run_experiment(cfg, cfg.output.dir, progress=False)
        from transfuse.api.run import Run

        self.run_ = Run(cfg.output.dir)
        run_classes = self.run_.classes
        missing = [c for c in names if c not in run_classes]
        if missing:  # every input of a class was quarantined (duplicates, undecodable)
            raise ValueError(f"class(es) {missing} have no valid input left after validation; see "
                             f"{self.run_.path / 'report.html'}")
        self.column_order_ = np.array([run_classes.index(c) for c in names])
        self.run_dir_ = str(self.run_.path)
        return self

    def _release(self) -> None:
        fin = getattr(self, "_finalizer", None)
        if fin is not None:
            fin()
            self._finalizer = None

    # -- prediction --------------------------------------------------------------------------------
    def predict_proba(self, X: Any) -> np.ndarray:
        check_is_fitted(self, "run_")
        batch = self._as_batch(X, reset=False)
        if not Path(self.run_dir_, "model").is_dir():
            raise UserError(f"the run folder of this fitted estimator ({self.run_dir_}) is gone; refit, or give "
                            "workdir= to keep fitted models")
        P = self.run_.predict_proba(batch, batch_size=self.batch_size)
        return P[:, self.column_order_]

    def predict(self, X: Any) -> np.ndarray:
        P = self.predict_proba(X)
        return self.classes_[P.argmax(axis=1)]

    def __getstate__(self) -> dict[str, Any]:
        state = dict(super().__getstate__())
        state.pop("_finalizer", None)
        if "run_" in state:
            state["run_"] = None
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        super().__setstate__(state)
        if state.get("run_dir_") is not None:
            from transfuse.api.run import Run

            self.run_ = Run(state["run_dir_"]) if Path(state["run_dir_"]).is_dir() else None
