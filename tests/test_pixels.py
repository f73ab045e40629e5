"""The raw-pixel image baseline (``pixels``): fits, round-trips through its saved state without
pickle, and refuses bad options and damaged states in one line."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from transfuse.backbones.pixels import PixelClassifier, make_pixels, pixel_features
from transfuse.errors import UserError


def _digits(n_per_class: int = 15, classes=(0, 1, 7)):
    from sklearn.datasets import load_digits

    d = load_digits()
    idx = np.concatenate([np.flatnonzero(d.target == c)[:n_per_class] for c in classes])
    imgs = [Image.fromarray((d.images[i] * 255 / 16).astype(np.uint8)).resize((32, 32)) for i in idx]
    return imgs, np.array([f"d{c}" for c in d.target[idx]])


@pytest.mark.parametrize("color, binary", [("rgb", False), ("gray", True)])
def test_fits_and_round_trips_through_its_state(color: str, binary: bool):
    X, y = _digits(classes=(0, 1) if binary else (0, 1, 7))
    clf = make_pixels(size=8, color=color, image_size=224).fit(X[::2], y[::2])  # image_size: ignored
    assert clf.score(X[1::2], y[1::2]) >= 0.9  # 8x8 digits are easy for raw pixels
    params, arrays = clf.to_state()
    assert params["classes"] == sorted(set(y)) and arrays["coef"].shape == (1 if binary else 3, 64 * (1 if color == "gray" else 3))
    again = PixelClassifier.from_state(params, arrays)
    np.testing.assert_allclose(again.predict_proba(X), clf.predict_proba(X), atol=1e-6, rtol=0)
    assert pixel_features(X[:1], 8, color).max() <= 1.0


def test_bad_options_and_states_are_one_line_errors():
    with pytest.raises(UserError, match=r"pixels option size=100 must be a whole number from 2 to 64"):
        make_pixels(size=100)
    with pytest.raises(UserError, match=r"pixels option color='cmyk' is not valid; use gray or rgb"):
        make_pixels(color="cmyk")
    with pytest.raises(UserError, match=r"pixels option\(s\) \['sise'\] not supported; valid options: size, color"):
        make_pixels(sise=8)
    X, y = _digits(5)
    params, arrays = make_pixels(size=4).fit(X, y).to_state()
    with pytest.raises(UserError, match=r"pixels state: shapes mean \(48,\), scale \(48,\), coef \(3, 47\)"):
        PixelClassifier.from_state(params, {**arrays, "coef": arrays["coef"][:, 1:]})
