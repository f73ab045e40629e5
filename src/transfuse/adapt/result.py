"""What a candidate leaves behind: CV scores, out-of-fold and test probabilities (saved, resumable)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from transfuse.io import atomic_save_npz, atomic_write_json, read_json

RESULT_FILE = "result.json"
PROBA_FILE = "proba.npz"


def safe_name(name: str) -> str:
    """A candidate name as a folder name (``fusion/mean`` -> ``fusion_mean``)."""
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in name)


@dataclass
class CandidateResult:
    """One candidate's evidence. ``oof``: ``(n_train, C)`` out-of-fold probabilities (fusions are
    built on them); ``test``: ``(n_test, C)`` (for the report: selection reads CV only);
    ``selected``: what each fold's inner selection chose and what the final fit used."""

    name: str
    kind: str  # "single" | "baseline" | "fusion" | "distilled"
    oof: np.ndarray
    test: np.ndarray
    cv_scores: list[float]
    backbone: str | None = None
    strategy: str | None = None
    method: str | None = None
    members: list[str] | None = None
    history: list[dict[str, Any]] = field(default_factory=list)
    fit_seconds: float = 0.0
    params: int | None = None
    inference_ms_per_example: float | None = None
    selected: dict[str, Any] | None = None

    @property
    def cv_mean(self) -> float:
        return float(np.mean(self.cv_scores))

    @property
    def cv_std(self) -> float:
        return float(np.std(self.cv_scores))

    def summary(self) -> dict[str, Any]:
        return {
            "name": self.name, "kind": self.kind, "backbone": self.backbone,
            "strategy": self.strategy, "method": self.method, "members": self.members,
            "cv_mean": self.cv_mean, "cv_std": self.cv_std, "cv_scores": self.cv_scores,
            "history": self.history, "fit_seconds": self.fit_seconds, "params": self.params,
            "inference_ms_per_example": self.inference_ms_per_example, "selected": self.selected,
        }

    def save(self, folder: Path) -> None:
        atomic_save_npz(folder / PROBA_FILE, oof=self.oof, test=self.test)
        atomic_write_json(folder / RESULT_FILE, self.summary())  # written last: marks done

    @classmethod
    def load(cls, folder: Path) -> CandidateResult | None:
        if not (folder / RESULT_FILE).exists() or not (folder / PROBA_FILE).exists():
            return None
        s = read_json(folder / RESULT_FILE)
        with np.load(folder / PROBA_FILE, allow_pickle=False) as z:
            oof, test = z["oof"], z["test"]
        keys = ("name", "kind", "cv_scores", "backbone", "strategy", "method", "members",
                "history", "fit_seconds", "params", "inference_ms_per_example", "selected")
        return cls(oof=oof, test=test, **{k: s.get(k) for k in keys})
