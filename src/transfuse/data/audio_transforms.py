"""Audio preparation in numpy alone (no torch): waveform helpers and Whisper's log-mel.

The audio backbones' eval transform (:class:`~transfuse.backbones.audio.common.AudioTransform`)
and ``predict --engine onnx`` both run :func:`model_input`, so an exported audio model is fed the
very arrays the torch path computes, without importing torch (seconds of start-up).
The recipe :func:`recipe_input` reads is the backbone's ``preprocess_config()`` (``sample_rate``,
``clip_seconds``, ``input``, ``log_mel.n_mels``), recorded in the export's ``onnx.json`` and in the
ONNX file's ``metadata_props``.
"""

from __future__ import annotations

from collections.abc import Mapping
from functools import lru_cache
from math import gcd
from typing import Any

import numpy as np

SAMPLE_RATE = 16_000
N_FFT = 400
HOP = 160
INPUT_KINDS = ("log_mel", "waveform")


def to_mono(wave: np.ndarray) -> np.ndarray:
    """Mix ``(samples,)`` or ``(samples, channels)`` down to float32 mono."""
    wave = np.asarray(wave, dtype=np.float32)
    return wave.mean(axis=1, dtype=np.float32) if wave.ndim == 2 else wave


def resample(wave: np.ndarray, sr_from: int, sr_to: int = SAMPLE_RATE) -> np.ndarray:
    """Polyphase resampling (scipy ``resample_poly``, Kaiser window) from ``sr_from`` to ``sr_to``."""
    if sr_from == sr_to:
        return np.asarray(wave, dtype=np.float32)
    from scipy.signal import resample_poly

    g = gcd(int(sr_from), int(sr_to))
    return resample_poly(wave, sr_to // g, sr_from // g).astype(np.float32)


def pad_or_trim(wave: np.ndarray, n: int) -> np.ndarray:
    """Zero-pad at the end, or cut, to exactly ``n`` samples."""
    if len(wave) >= n:
        return np.ascontiguousarray(wave[:n], dtype=np.float32)
    return np.pad(wave, (0, n - len(wave))).astype(np.float32)


def trim_silence(wave: np.ndarray, top_db: float = 40.0, frame: int = 400, hop: int = 160) -> np.ndarray:
    """Cut leading and trailing frames whose RMS is more than ``top_db`` below the loudest frame."""
    if len(wave) < frame:
        return wave
    n = 1 + (len(wave) - frame) // hop
    idx = np.arange(frame)[None, :] + hop * np.arange(n)[:, None]
    rms = np.sqrt(np.mean(wave[idx].astype(np.float64) ** 2, axis=1))
    loud = np.flatnonzero(20 * np.log10(np.maximum(rms, 1e-10) / max(rms.max(), 1e-10)) > -top_db)
    if len(loud) == 0:
        return wave
    return wave[loud[0] * hop : loud[-1] * hop + frame]


def _hz_to_mel(f: np.ndarray) -> np.ndarray:
    """Slaney's mel scale: linear below 1 kHz, logarithmic above (as librosa and Whisper)."""
    f = np.asarray(f, dtype=np.float64)
    return np.where(f < 1000.0, 3.0 * f / 200.0, 15.0 + np.log(np.maximum(f, 1e-10) / 1000.0) * 27.0 / np.log(6.4))


def _mel_to_hz(m: np.ndarray) -> np.ndarray:
    m = np.asarray(m, dtype=np.float64)
    return np.where(m < 15.0, 200.0 * m / 3.0, 1000.0 * np.exp(np.log(6.4) * (m - 15.0) / 27.0))


@lru_cache(maxsize=4)
def mel_filters(n_mels: int = 80) -> np.ndarray:
    """Whisper's Slaney-normalised mel filter bank, ``(201, n_mels)`` float32 for a 400-point FFT
    at 16 kHz, 0 to 8 kHz (what ``transformers.audio_utils.mel_filter_bank(..., norm="slaney",
    mel_scale="slaney")`` returns; equal within float32 rounding, tested)."""
    fft_freqs = np.linspace(0, SAMPLE_RATE / 2, 1 + N_FFT // 2)
    edges = _mel_to_hz(np.linspace(_hz_to_mel(0.0), _hz_to_mel(SAMPLE_RATE / 2), n_mels + 2))
    slopes = edges[None, :] - fft_freqs[:, None]
    width = np.diff(edges)
    down, up = -slopes[:, :-2] / width[:-1], slopes[:, 2:] / width[1:]
    fb = np.maximum(0.0, np.minimum(down, up)) * (2.0 / (edges[2:] - edges[:-2]))
    return fb.astype(np.float32)


def log_mel_array(wave: np.ndarray, n_mels: int = 80) -> np.ndarray:
    """Whisper's log-mel spectrogram of ``(samples,)`` or ``(B, samples)`` 16 kHz audio:
    ``(n_mels, samples // 160)`` float32 (or batched). Same maths as ``WhisperFeatureExtractor``:
    power STFT (400-pt periodic Hann, hop 160, centred with reflect padding, last frame dropped),
    mel, log10, floor at max - 8, ``(x + 4) / 4``."""
    x = np.asarray(wave, dtype=np.float32)
    pad = N_FFT // 2
    xp = np.pad(x, [(0, 0)] * (x.ndim - 1) + [(pad, pad)], mode="reflect")
    n_frames = x.shape[-1] // HOP  # torch.stft's 1 + n // hop frames, minus the last one
    frames = np.lib.stride_tricks.sliding_window_view(xp, N_FFT, axis=-1)[..., : n_frames * HOP : HOP, :]
    window = (0.5 - 0.5 * np.cos(2 * np.pi * np.arange(N_FFT) / N_FFT)).astype(np.float32)
    power = np.abs(np.fft.rfft(frames * window, axis=-1)) ** 2  # (..., frames, 201)
    mel = np.swapaxes(power.astype(np.float32) @ mel_filters(n_mels), -1, -2)
    logspec = np.log10(np.maximum(mel, 1e-10))
    top = logspec.max(axis=(-2, -1), keepdims=True)
    return ((np.maximum(logspec, top - 8.0) + 4.0) / 4.0).astype(np.float32)


def prepare_wave(decoded: Any, sample_rate: int, clip_samples: int) -> np.ndarray:
    """A decoded input ``(waveform, sample_rate)`` (or a bare 16 kHz waveform) -> float32 mono at
    ``sample_rate``, padded or cut to ``clip_samples``: the eval-time clip."""
    wave, sr = decoded if isinstance(decoded, tuple) else (decoded, sample_rate)
    return pad_or_trim(resample(to_mono(wave), int(sr), sample_rate), clip_samples)


def audio_recipe(pre: Mapping[str, Any]) -> dict[str, Any] | None:
    """The eval-time recipe of an audio backbone's ``preprocess_config()`` when :func:`model_input`
    reproduces it (Whisper-style log-mel or the raw waveform at 16 kHz), else None."""
    kind = pre.get("input")
    mel = pre.get("log_mel") or {}
    if pre.get("modality") != "audio" or kind not in INPUT_KINDS or int(pre.get("sample_rate", 0)) != SAMPLE_RATE:
        return None
    if kind == "log_mel" and not (mel.get("style") == "whisper" and mel.get("n_fft") == N_FFT and mel.get("hop") == HOP):
        return None
    return dict(pre)


def clip_samples(recipe: Mapping[str, Any]) -> int:
    return int(round(float(recipe["clip_seconds"]) * int(recipe["sample_rate"])))


def model_input(decoded: Any, kind: str, sample_rate: int, n_samples: int, n_mels: int = 80) -> np.ndarray:
    """One decoded input -> an audio backbone's eval-time model input (float32): the clip itself
    (``kind="waveform"``) or its log-mel ``(n_mels, n_samples // 160)`` (``kind="log_mel"``)."""
    wave = prepare_wave(decoded, sample_rate, n_samples)
    return wave if kind == "waveform" else log_mel_array(wave, n_mels)


def recipe_input(decoded: Any, recipe: Mapping[str, Any]) -> np.ndarray:
    """:func:`model_input` as a recorded recipe (:func:`audio_recipe`) describes it."""
    return model_input(decoded, recipe["input"], int(recipe["sample_rate"]), clip_samples(recipe),
                       int((recipe.get("log_mel") or {}).get("n_mels", 80)))
