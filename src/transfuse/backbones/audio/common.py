"""Shared audio plumbing: waveform preparation, augmentation, Whisper-style log-mel, base class.

Every audio backbone's transform takes the decoded input ``(waveform, sample_rate)`` (float32
mono, as returned by :mod:`transfuse.data.audio`), resamples it to 16 kHz, augments it when
training, pads/trims it to the clip length and hands it to :meth:`AudioBackbone.model_input`.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import torch

from transfuse.backbones.base import Backbone
from transfuse.config import AudioAugment
from transfuse.data.audio_transforms import (  # noqa: F401  (re-exported)
    HOP,
    N_FFT,
    SAMPLE_RATE,
    log_mel_array,
    mel_filters,
    model_input,
    pad_or_trim,
    resample,
    to_mono,
    trim_silence,
)
from transfuse.errors import UserError


# waveform helpers and the log-mel live in numpy alone (transfuse.data.audio_transforms): predict
# --engine onnx runs them without torch; the names stay importable from here


def augment_waveform(wave: np.ndarray, aug: AudioAugment, rng: np.random.Generator,
                     sr: int = SAMPLE_RATE) -> np.ndarray:
    """Gain, speed/pitch (resampling), time shift and white noise at an SNR, each at its probability."""
    wave = wave.astype(np.float32, copy=True)
    if rng.random() < aug.gain_prob and aug.gain_db > 0:
        wave *= np.float32(10 ** (rng.uniform(-aug.gain_db, aug.gain_db) / 20))
    if rng.random() < aug.speed_prob:
        factor = rng.uniform(*aug.speed)
        # play ``factor`` times faster: read the signal as if it had been sampled at sr * factor
        wave = resample(wave, int(round(sr * factor / 10)) * 10, sr)
    if rng.random() < aug.shift_prob and aug.shift_seconds > 0:
        k = int(rng.integers(-int(aug.shift_seconds * sr), int(aug.shift_seconds * sr) + 1))
        shifted = np.zeros_like(wave)
        if k >= 0:
            shifted[k:] = wave[: len(wave) - k]
        else:
            shifted[:k] = wave[-k:]
        wave = shifted
    if rng.random() < aug.noise_prob:
        power = float(np.mean(wave.astype(np.float64) ** 2))
        if power > 0:
            snr = rng.uniform(*aug.snr_db)
            wave += rng.standard_normal(len(wave)).astype(np.float32) * np.float32(
                np.sqrt(power / 10 ** (snr / 10)))
    return wave


def spec_augment(features: torch.Tensor, aug: AudioAugment, rng: np.random.Generator,
                 fill: float | None = None) -> torch.Tensor:
    """SpecAugment (frequency and time masks) on ``(n_mels, frames)`` features; masked cells are
    set to ``fill`` (default: the features' mean)."""
    if rng.random() >= aug.specaugment_prob:
        return features
    out = features.clone()
    value = float(out.mean()) if fill is None else fill
    n_mels, frames = out.shape
    for _ in range(aug.freq_masks):
        w = int(rng.integers(0, min(aug.freq_width, n_mels) + 1))
        f0 = int(rng.integers(0, n_mels - w + 1))
        out[f0 : f0 + w, :] = value
    for _ in range(aug.time_masks):
        w = int(rng.integers(0, min(aug.time_width, frames) + 1))
        t0 = int(rng.integers(0, frames - w + 1))
        out[:, t0 : t0 + w] = value
    return out


def sample_rng() -> np.random.Generator:
    """A numpy generator drawn from torch's RNG, so ``seed_everything`` (and Lightning's
    per-worker seeding) makes augmentation reproducible."""
    return np.random.default_rng(int(torch.randint(0, 2**31 - 1, (1,)).item()))


# ----------------------------------------------------------------------------- log-mel


def log_mel(wave: torch.Tensor | np.ndarray, n_mels: int = 80) -> torch.Tensor:
    """Whisper's log-mel spectrogram (:func:`~transfuse.data.audio_transforms.log_mel_array`) as a
    tensor. Computed in numpy (single-threaded: cheap per clip in DataLoader workers, and no torch
    thread contention in the main process)."""
    x = wave.detach().cpu().numpy() if isinstance(wave, torch.Tensor) else wave
    return torch.from_numpy(log_mel_array(x, n_mels))


# ----------------------------------------------------------------------------- base class


class AudioTransform:
    """Decoded input ``(waveform, sample_rate)`` -> model input: 16 kHz mono, augmented when
    training, padded/trimmed to ``clip_samples``; then either the waveform (``kind="waveform"``)
    or its Whisper log-mel ``(n_mels, clip_samples // 160)`` with SpecAugment (``kind="log_mel"``).
    Holds only plain settings, so it pickles cheaply into DataLoader workers."""

    def __init__(self, clip_samples: int, kind: str = "log_mel", n_mels: int = 80, train: bool = False,
                 augment: AudioAugment | None = None, sample_rate: int = SAMPLE_RATE):
        self.clip_samples, self.kind, self.n_mels = clip_samples, kind, n_mels
        self.train, self.augment, self.sample_rate = train, augment, sample_rate

    def waveform(self, decoded: Any, rng: np.random.Generator | None = None) -> np.ndarray:
        """The prepared clip (float32, ``clip_samples`` long)."""
        wave, sr = decoded if isinstance(decoded, tuple) else (decoded, self.sample_rate)
        wave = resample(to_mono(wave), int(sr), self.sample_rate)
        if self.train and self.augment is not None:
            wave = augment_waveform(wave, self.augment, rng or sample_rng(), self.sample_rate)
        return pad_or_trim(wave, self.clip_samples)

    def __call__(self, decoded: Any) -> torch.Tensor:
        rng = sample_rng() if self.train and self.augment is not None else None
        if rng is None:  # eval: the numpy path predict --engine onnx runs without torch
            return torch.from_numpy(model_input(decoded, self.kind, self.sample_rate, self.clip_samples, self.n_mels))
        wave = self.waveform(decoded, rng)
        if self.kind == "waveform":
            return torch.from_numpy(wave)
        feats = log_mel(wave, self.n_mels)
        if rng is not None:
            feats = spec_augment(feats, self.augment, rng)
        return feats


class AudioBackbone(Backbone):
    """Base of the audio backbones: 16 kHz clips of ``clip_seconds``. Subclasses set
    ``input_kind`` (``"log_mel"`` or ``"waveform"``) and ``n_mels``."""

    modality = "audio"
    sample_rate: int = SAMPLE_RATE
    input_kind: str = "log_mel"
    n_mels: int = 80

    def __init__(self, clip_seconds: float = 2.0) -> None:
        super().__init__()
        if not 0.1 <= float(clip_seconds) <= 30.0:
            raise UserError(
                f"backbone option clip_seconds={clip_seconds} is out of range; give 0.1 to 30 seconds")
        self.clip_seconds = float(clip_seconds)

    @property
    def clip_samples(self) -> int:
        return int(round(self.clip_seconds * self.sample_rate))

    def make_transform(self, train: bool = False, augment: Any = None) -> Callable[[Any], Any]:
        return AudioTransform(self.clip_samples, self.input_kind, self.n_mels, train,
                              as_augment(augment) if train else None, self.sample_rate)

    def base_preprocess(self) -> dict[str, Any]:
        pre: dict[str, Any] = {"modality": "audio", "sample_rate": self.sample_rate,
                               "clip_seconds": self.clip_seconds, "resample": "scipy.resample_poly",
                               "pad": "end", "input": self.input_kind}
        if self.input_kind == "log_mel":
            pre["log_mel"] = {"n_mels": self.n_mels, "n_fft": N_FFT, "hop": HOP, "style": "whisper"}
        return pre


def as_augment(augment: Any) -> AudioAugment | None:
    """``None``/``False`` -> no augmentation, ``True`` -> defaults, a mapping -> validated knobs."""
    if augment is None or augment is False:
        return None
    if isinstance(augment, AudioAugment):
        return augment
    if augment is True:
        return AudioAugment()
    if isinstance(augment, dict):
        return AudioAugment(**augment)
    raise UserError(f"augment.audio must be a mapping of AudioAugment fields, got {augment!r}")


def check_options(name: str, options: dict[str, Any], allowed: tuple[str, ...]) -> None:
    """Refuse unknown backbone options with the list of valid ones."""
    bad = sorted(set(options) - set(allowed))
    if bad:
        raise UserError(
            f"backbone {name}: unknown option(s) {', '.join(bad)}; valid options: {', '.join(allowed)}")
