"""A finished run folder as a Python object: predict with its chosen model (or any candidate),
read its leaderboard and report, export it. Models are loaded by :mod:`transfuse.artifacts.serve`
(the loader every command uses) and kept for the next call."""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

import numpy as np

from transfuse.api.inputs import Batch, as_batch
from transfuse.errors import UserError


class Run:
    """A run folder (``transfuse.fit`` returns one, :func:`load` opens one)."""

    def __init__(self, path: str | Path):
        from transfuse.artifacts.store import RunFolder

        self.path = Path(path).resolve()
        self._folder = RunFolder(self.path)
        if not self._folder.config_file.is_file():
            raise UserError(f"{str(path)!r} is not a transfuse run folder (no config.yaml); give a folder that "
                            "transfuse.fit, 'transfuse fit' or 'transfuse run' wrote")
        self._models: dict[tuple[str | None, str], tuple[Any, list[str], float | None]] = {}
        self._lock = threading.Lock()

    def __repr__(self) -> str:
        return f"Run({str(self.path)!r})"

    # -- what the run found ------------------------------------------------------------------------
    def report(self) -> dict[str, Any]:
        """``report.json``: every candidate's CV and test metrics, the choice, timings, ...
        (``report.html`` beside it is the readable version)."""
        from transfuse.io import read_json

        f = self.path / "report.json"
        if not f.is_file():
            raise UserError(f"{str(self.path)!r} has no report.json: the run did not finish; continue it with "
                            f"'transfuse resume {self.path}'")
        return read_json(f)

    @property
    def report_html(self) -> Path:
        return self.path / "report.html"

    @property
    def chosen(self) -> str:
        """The candidate chosen by cross-validation (the run's model)."""
        return self.report()["chosen"]

    @property
    def classes(self) -> list[str]:
        return list(self._spec(None).classes)

    @property
    def modality(self) -> str:
        return self._spec(None).modality

    def leaderboard(self) -> Any:
        """Every candidate, best CV first: a pandas DataFrame (candidate, kind, cv_mean, cv_std,
        test_accuracy, test_macro_f1, chosen)."""
        import pandas as pd

        rep = self.report()
        rows = []
        for c in sorted(rep["candidates"], key=lambda c: -c["cv_mean"]):
            t = c.get("test") or {}
            rows.append({"candidate": c["name"], "kind": c["kind"], "cv_mean": c["cv_mean"], "cv_std": c["cv_std"],
                         "test_accuracy": t.get("accuracy"), "test_macro_f1": t.get("macro_f1"),
                         "chosen": c["name"] == rep["chosen"]})
        return pd.DataFrame(rows)

    # -- prediction ----------------------------------------------------------------------------------
    def _spec(self, candidate: str | None) -> Any:
        from transfuse.artifacts.spec import load_spec
        from transfuse.export.predict import model_folder

        return load_spec(model_folder(self.path, candidate))

    def _model(self, candidate: str | None, engine: str) -> tuple[Any, list[str], float | None, Any]:
        from transfuse.artifacts.serve import load_model
        from transfuse.export.onnx import read_meta
        from transfuse.export.predict import OnnxClassifier, model_folder, resolve_engine

        folder = model_folder(self.path, candidate)
        engine = resolve_engine(folder, engine)
        key = (candidate, engine)
        with self._lock:
            if key not in self._models:
                if engine.startswith("onnx"):
                    from transfuse.artifacts.spec import load_spec

                    spec = load_spec(folder)
                    self._models[key] = (OnnxClassifier(folder, read_meta(folder) or {}, int8=engine == "onnx-int8"),
                                         spec)
                else:
                    self._models[key] = load_model(folder)
            model, spec = self._models[key]
        return model, spec.classes, engine, spec

    def predict_proba(self, X: Any, *, candidate: str | None = None, engine: str = "auto", batch_size: int = 32,
                      column: str | None = None) -> np.ndarray:
        """Class probabilities ``(n, len(run.classes))`` (calibrated, as ``transfuse predict``);
        ``candidate``: another candidate of the run (e.g. ``"fusion/stacking"``); ``engine``:
        ``torch``, ``onnx`` (after :meth:`export`) or ``auto``. ``X``: what
        :func:`~transfuse.api.inputs.as_batch` reads; for a multimodal model one ``{modality or
        run column: input}`` mapping per input, or a DataFrame of the run's columns
        (:mod:`transfuse.api.multimodal`)."""
        return self._proba(self._batch(X, candidate, column), candidate, engine, batch_size)

    def predict(self, X: Any, *, candidate: str | None = None, engine: str = "auto", batch_size: int = 32,
                column: str | None = None) -> np.ndarray:
        """The predicted class name of each input (an array of str)."""
        p = self.predict_proba(X, candidate=candidate, engine=engine, batch_size=batch_size, column=column)
        return np.asarray(self._spec(candidate).classes, dtype=object)[p.argmax(axis=1)]

    def _batch(self, X: Any, candidate: str | None, column: str | None) -> Batch:
        if isinstance(X, Batch):
            return X
        modality = self._spec(candidate).modality
        if modality != "multimodal":
            return as_batch(X, modality, column=column)
        from transfuse.api.multimodal import multimodal_batch
        from transfuse.export.predict import audio_check, model_folder, multimodal_columns

        folder = model_folder(self.path, candidate)
        columns = multimodal_columns(folder)
        if column is not None:
            raise UserError(f"column={column!r} applies to a model of one modality; this multimodal model reads "
                            f"the columns {', '.join(c for cs in columns.values() for c in cs)}: drop column=")
        return multimodal_batch(X, columns, audio_check(folder) if "audio" in columns else None)

    def _proba(self, batch: Batch, candidate: str | None, engine: str, batch_size: int) -> np.ndarray:
        from transfuse.artifacts.serve import predict_proba

        model, _, engine, spec = self._model(candidate, engine)
        data = batch.dataset()
        if engine.startswith("onnx"):
            return np.asarray(model.predict_proba(data, batch_size))
        return np.asarray(predict_proba(model, spec, data, batch_size))

    def records(self, X: Any, **kw: Any) -> list[dict[str, Any]]:
        """The records ``transfuse predict --json`` prints: ``{"input", "label", "proba": {class: p}}``."""
        batch = self._batch(X, kw.get("candidate"), kw.pop("column", None))
        classes = self._spec(kw.get("candidate")).classes
        P = self._proba(batch, kw.get("candidate"), kw.get("engine", "auto"), kw.get("batch_size", 32))
        return [{"input": name, "label": classes[int(p.argmax())], "proba": {c: float(v) for c, v in zip(classes, p)}}
                for name, p in zip(batch.names, P, strict=True)]

    # -- shipping ----------------------------------------------------------------------------------
    def export(self, *, int8: bool = False, candidate: str | None = None) -> dict[str, Any]:
        """Export the chosen model (or ``candidate``) to ONNX, parity-checked (``transfuse export``);
        returns the export record (file, parity, int8 accuracy)."""
        from transfuse.export.onnx import export_cli

        res = export_cli(self.path, "onnx", int8, candidate)
        with self._lock:
            self._models = {k: v for k, v in self._models.items() if k[1] != "onnx"}
        return res


def load(path: str | Path) -> Run:
    """Open a finished run folder (one-line error when it has no chosen model)."""
    run = Run(path)
    run._spec(None)
    return run
