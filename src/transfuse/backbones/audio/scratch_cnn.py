"""``scratch_cnn``: Whisper-style log-mel + a small 2-D CNN with seeded random weights, trained
from scratch: the no-transfer baseline that shows what the pretrained audio backbones buy."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from transfuse.backbones.audio.common import AudioBackbone, check_options
from transfuse.backbones.registry import SPECIAL
from transfuse.errors import UserError


def _block(c_in: int, c_out: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(c_in, c_out, 3, padding=1, bias=False), nn.BatchNorm2d(c_out),
                         nn.ReLU(inplace=True), nn.MaxPool2d(2, ceil_mode=True))


class ScratchCNN(AudioBackbone):
    """Four conv blocks (``width``, 2x, 4x, 4x channels; 3x3 conv, BN, ReLU, 2x2 max-pool) over the
    ``(n_mels, frames)`` log-mel, then global average pooling: ``4 * width`` features."""

    input_kind = "log_mel"

    def __init__(self, clip_seconds: float = 2.0, n_mels: int = 40, width: int = 16, seed: int = 0):
        super().__init__(clip_seconds)
        if not 16 <= n_mels <= 128 or not 1 <= width <= 256:
            raise UserError(f"scratch_cnn options n_mels={n_mels} and width={width} must lie in "
                            "16..128 and 1..256")
        self.n_mels, self.width, self.seed = int(n_mels), int(width), int(seed)
        chans = [1, width, 2 * width, 4 * width, 4 * width]
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(self.seed)
            self.body = nn.Sequential(*[_block(a, b) for a, b in zip(chans, chans[1:])])
        self.feature_dim = chans[-1]

    def forward(self, batch: torch.Tensor) -> torch.Tensor:
        return self.body(batch.unsqueeze(1)).mean(dim=(2, 3))

    def layer_id(self, param_name: str) -> int:
        """``body.i`` -> i (one id per conv block)."""
        return int(param_name.split(".")[1])

    def preprocess_config(self) -> dict[str, Any]:
        return self.base_preprocess()


def create_scratch_cnn(**options: Any) -> ScratchCNN:
    """Factory for ``scratch_cnn`` (options: ``clip_seconds``, ``n_mels``, ``width``, ``seed``)."""
    check_options("scratch_cnn", options, ("clip_seconds", "n_mels", "width", "seed"))
    return ScratchCNN(**{k: float(v) if k == "clip_seconds" else int(v) for k, v in options.items()})


SPECIAL.add("scratch_cnn", create_scratch_cnn)
