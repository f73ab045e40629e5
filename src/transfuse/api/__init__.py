"""The Python API: :func:`fit` (the pipeline on data on disk or in memory), :func:`load` (a run
folder), :class:`Run` (predict / predict_proba / leaderboard / report / export) and
:class:`TransfuseClassifier` (a scikit-learn estimator)."""

from transfuse.api.estimator import TransfuseClassifier
from transfuse.api.fit import fit
from transfuse.api.run import Run, load

__all__ = ["Run", "TransfuseClassifier", "fit", "load"]
