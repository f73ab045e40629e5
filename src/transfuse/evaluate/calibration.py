"""Temperature scaling (Guo et al. 2017, https://arxiv.org/abs/1706.04599).

One scalar T > 0 divides the logits: p = softmax(z / T). T > 1 softens over-confident
predictions, T < 1 sharpens under-confident ones; the arg-max (so accuracy) never changes.
Log-probabilities are logits up to a per-row constant, so the pipeline, which keeps
probabilities, calibrates from ``log(proba)``.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from scipy.optimize import minimize_scalar
from scipy.special import log_softmax

from transfuse.evaluate.metrics import (
    LOG_LOSS_EPS,
    classification_metrics,
    reliability_bins,
)

T_MIN, T_MAX = 0.05, 20.0


def log_proba(proba: Any) -> np.ndarray:
    """Clipped natural log of probabilities: usable as logits for temperature scaling."""
    return np.log(np.clip(np.asarray(proba, dtype=np.float64), LOG_LOSS_EPS, 1.0))


def _nll(logits: np.ndarray, y: np.ndarray, temperature: float) -> float:
    return float(-np.mean(log_softmax(logits / temperature, axis=1)[np.arange(len(y)), y]))


def fit_temperature(logits_or_log_probs: Any, y: Any) -> float:
    """The T in [0.05, 20] minimising the mean negative log-likelihood of softmax(z / T).

    A 1-D bounded search over log T (the NLL is smooth and unimodal in practice). Pass logits or
    ``log_proba(proba)``; fit on held-out predictions (out-of-fold or validation), never on test.
    """
    z = np.asarray(logits_or_log_probs, dtype=np.float64)
    y = np.asarray(y)
    if z.ndim != 2 or y.ndim != 1 or len(y) != len(z) or len(y) == 0:
        raise ValueError(f"need logits (n, k) and labels (n,) with n > 0; got {z.shape} and {y.shape}")
    if not np.issubdtype(y.dtype, np.integer) or y.min() < 0 or y.max() >= z.shape[1]:
        raise ValueError(f"labels must be integer class indices in 0..{z.shape[1] - 1}")
    if not np.all(np.isfinite(z)):
        raise ValueError("logits hold NaN or infinite values; pass log_proba(proba) for probabilities")
    res = minimize_scalar(
        lambda log_t: _nll(z, y, float(np.exp(log_t))),
        bounds=(np.log(T_MIN), np.log(T_MAX)),
        method="bounded",
        options={"xatol": 1e-5},
    )
    return float(np.exp(res.x))


def apply_temperature(proba_or_logits: Any, temperature: float, *, logits: bool = False) -> np.ndarray:
    """Calibrated probabilities softmax(z / T); z = log(proba) unless ``logits=True``."""
    if not (np.isfinite(temperature) and temperature > 0):
        raise ValueError(f"temperature must be a positive finite number; got {temperature}")
    z = np.asarray(proba_or_logits, dtype=np.float64) if logits else log_proba(proba_or_logits)
    return np.exp(log_softmax(z / temperature, axis=1))


def temperature_calibration(
    fit_y: Any, fit_proba: Any, test_y: Any, test_proba: Any, classes: list[str], n_bins: int = 15
) -> tuple[float, dict[str, Any]]:
    """Fit T on held-out (e.g. out-of-fold) probabilities, apply it to the test probabilities.

    Returns T and the ``report["calibration"]`` block: temperature, test ECE / log-loss before
    and after, and the reliability bins before and after (for the report's reliability diagram).
    """
    temperature = fit_temperature(log_proba(fit_proba), fit_y)
    after = apply_temperature(test_proba, temperature)
    m_before = classification_metrics(test_y, test_proba, classes)
    m_after = classification_metrics(test_y, after, classes)
    return temperature, {
        "method": "temperature",
        "temperature": temperature,
        "ece_before": m_before["ece"],
        "ece_after": m_after["ece"],
        "log_loss_before": m_before["log_loss"],
        "log_loss_after": m_after["log_loss"],
        "reliability_before": reliability_bins(test_y, test_proba, n_bins),
        "reliability_after": reliability_bins(test_y, after, n_bins),
    }


def calibrate_candidate(oof_y: Any, oof_proba: Any, test_y: Any, test_proba: Any, classes: list[str],
                        n_bins: int = 15) -> tuple[float, dict[str, Any]]:
    """:func:`temperature_calibration` plus the out-of-fold ECE before and after (the fit data:
    an optimistic view) next to the test ECE (the honest one)."""
    if len(np.asarray(test_y)) == 0:  # no test split: report the out-of-fold view only
        temperature = fit_temperature(log_proba(oof_proba), oof_y)
        block: dict[str, Any] = {"method": "temperature", "temperature": temperature}
    else:
        temperature, block = temperature_calibration(oof_y, oof_proba, test_y, test_proba, classes, n_bins)
    oof_after = apply_temperature(oof_proba, temperature)
    block["oof_ece_before"] = classification_metrics(oof_y, oof_proba, classes)["ece"]
    block["oof_ece_after"] = classification_metrics(oof_y, oof_after, classes)["ece"]
    block["fitted_on"] = "out-of-fold probabilities of the chosen candidate"
    return temperature, block
