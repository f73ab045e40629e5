"""Hyperparameter search (Optuna): head trials on cached features, then a few fine-tuning trials.

:mod:`~transfuse.search.study` (samplers, storages, running and summarising a study),
:mod:`~transfuse.search.objectives` (what a trial scores), :mod:`~transfuse.search.report`
(``search.html``), :mod:`~transfuse.search.run` (the search of a run folder) and
:mod:`~transfuse.search.nested` (the same search re-run inside each outer CV fold, so a searched
candidate's CV is honest). This layer sits below :mod:`transfuse.pipeline` and never imports it.
"""
