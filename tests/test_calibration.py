"""Temperature scaling: recovers a known temperature, lowers ECE, keeps the arg-max."""

import numpy as np
import pytest
from scipy.special import softmax

from transfuse.evaluate.calibration import (
    apply_temperature,
    fit_temperature,
    log_proba,
    temperature_calibration,
)
from transfuse.evaluate.metrics import classification_metrics


def _sample(seed, n, k, true_t):
    """Logits z and labels drawn from softmax(z / true_t)."""
    rng = np.random.default_rng(seed)
    z = rng.normal(size=(n, k)) * 4
    q = softmax(z / true_t, axis=1)
    y = (q.cumsum(1) > rng.random((n, 1))).argmax(1)
    return z, y


@pytest.mark.parametrize("true_t", [0.5, 2.5])
def test_recovers_known_temperature(true_t):
    z, y = _sample(0, 6000, 5, true_t)
    t = fit_temperature(z, y)
    assert t == pytest.approx(true_t, rel=0.08)


def test_fit_is_a_minimum_of_nll():
    z, y = _sample(1, 2000, 4, 1.7)
    t = fit_temperature(z, y)

    def nll(temp):
        p = softmax(z / temp, axis=1)
        return -np.mean(np.log(p[np.arange(len(y)), y]))

    assert nll(t) <= nll(t * 1.05) and nll(t) <= nll(t / 1.05)


def test_from_probabilities_equals_from_logits():
    z, y = _sample(2, 2000, 4, 2.0)
    p = softmax(z, axis=1)
    assert fit_temperature(log_proba(p), y) == pytest.approx(fit_temperature(z, y), rel=1e-3)
    np.testing.assert_allclose(apply_temperature(p, 2.0), apply_temperature(z, 2.0, logits=True), atol=1e-9)


def test_apply_golden_and_invariants():
    # p^(1/T) renormalised: sqrt(.8) : sqrt(.2) = 2 : 1
    np.testing.assert_allclose(apply_temperature(np.array([[0.8, 0.2]]), 2.0), [[2 / 3, 1 / 3]])
    z, _ = _sample(3, 100, 6, 1.0)
    p = softmax(z, axis=1)
    np.testing.assert_allclose(apply_temperature(p, 1.0), p, atol=1e-9)
    for t in (0.3, 4.0):
        q = apply_temperature(p, t)
        np.testing.assert_allclose(q.sum(1), 1.0)
        assert (q.argmax(1) == p.argmax(1)).all()
    with pytest.raises(ValueError, match="positive"):
        apply_temperature(p, 0.0)


def test_ece_drops_on_overconfident_predictions():
    z, y = _sample(4, 4000, 5, 1.0)  # labels follow softmax(z)
    overconfident = softmax(3 * z, axis=1)
    fit, test = slice(0, 2000), slice(2000, None)
    classes = list("abcde")
    t, info = temperature_calibration(y[fit], overconfident[fit], y[test], overconfident[test], classes)
    assert t == pytest.approx(3.0, rel=0.12)
    assert info["ece_before"] > 0.08
    assert info["ece_after"] < info["ece_before"] / 3
    assert info["log_loss_after"] < info["log_loss_before"]
    calibrated = apply_temperature(overconfident[test], t)
    assert info["ece_after"] == pytest.approx(classification_metrics(y[test], calibrated, classes)["ece"])
    assert sum(info["reliability_before"]["count"]) == 2000


def test_bad_inputs():
    with pytest.raises(ValueError, match="labels must be integer"):
        fit_temperature(np.zeros((2, 3)), np.array([0, 3]))
    with pytest.raises(ValueError, match="log_proba"):
        fit_temperature(np.array([[0.0, -np.inf]]), np.array([0]))
