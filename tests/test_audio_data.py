"""Audio data sources: folder and manifest loading, every bad input quarantined with its reason,
odd sample rates kept and resampled by the transform, silence trimming."""

from __future__ import annotations

import json
import pickle
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from transfuse.backbones.audio.scratch_cnn import create_scratch_cnn
from transfuse.data.audio import load_audio_folder, load_audio_manifest
from transfuse.data.registry import DATA_SOURCES
from transfuse.errors import UserError


def tone(freq: float = 440.0, seconds: float = 0.5, sr: int = 16000, amp: float = 0.5) -> np.ndarray:
    return (amp * np.sin(2 * np.pi * freq * np.arange(int(seconds * sr)) / sr)).astype(np.float32)


def write(path: Path, wave: np.ndarray, sr: int = 16000, subtype: str | None = None) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    sf.write(path, wave, sr, subtype=subtype)
    return path


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    root = tmp_path / "words"
    write(root / "yes" / "a.wav", tone(440))
    write(root / "yes" / "b.flac", tone(450))
    write(root / "yes" / "c.ogg", tone(460))
    write(root / "no" / "a.wav", tone(880))
    write(root / "no" / "stereo.wav", np.stack([tone(880), tone(880) * 0.5], axis=1))
    (root / "no" / "notes.txt").write_text("not audio")
    return root


def test_folder_loads_classes_ids_and_mono_waveforms(folder: Path) -> None:
    ds = load_audio_folder(folder)
    assert ds.modality == "audio" and ds.classes == ["no", "yes"] and ds.quarantined == []
    assert ds.ids == ["no/a.wav", "no/stereo.wav", "yes/a.wav", "yes/b.flac", "yes/c.ogg"]
    assert ds.labels.tolist() == [0, 0, 1, 1, 1]
    wave, sr = ds.load(1)
    assert sr == 16000 and wave.dtype == np.float32 and wave.ndim == 1
    np.testing.assert_allclose(wave, tone(880) * 0.75, atol=1e-4)  # channel mean
    assert pickle.loads(pickle.dumps(ds.loader)) == ds.loader
    assert all(s in DATA_SOURCES for s in ("audio_folder", "audio_manifest", "speech"))


def _reason(ds, name: str) -> str:
    hits = [q.reason for q in ds.quarantined if Path(q.path).name == name]
    assert len(hits) == 1, (name, ds.quarantined)
    return hits[0]


def test_each_bad_file_is_quarantined_with_its_reason(folder: Path) -> None:
    yes = folder / "yes"
    (yes / "empty.wav").write_bytes(b"")
    write(yes / "noframes.wav", np.zeros(0, np.float32))
    write(yes / "silent.wav", np.zeros(8000, np.float32))
    nan = tone()
    nan[100] = np.nan
    nan[200] = np.inf
    write(yes / "nan.wav", nan, subtype="FLOAT")
    (yes / "corrupt.wav").write_bytes(b"RIFF\x10\x00\x00\x00WAVEjunkjunkjunk" + bytes(100))
    (yes / "garbage.flac").write_bytes(bytes(range(256)) * 4)
    write(yes / "long.wav", tone(seconds=3.0, sr=8000), sr=8000)
    (folder / "maybe").mkdir()
    ds = load_audio_folder(folder, max_seconds=2.0)
    assert _reason(ds, "empty.wav") == "zero-length file (0 bytes)"
    assert _reason(ds, "noframes.wav") == "zero-length audio (no samples)"
    assert _reason(ds, "silent.wav").startswith("all-silent (peak 0.0e+00")
    assert _reason(ds, "nan.wav") == "NaN/inf samples (2 of 8000)"
    assert _reason(ds, "corrupt.wav").startswith("corrupt or unsupported audio header")
    assert _reason(ds, "garbage.flac").startswith("corrupt or unsupported audio header")
    assert _reason(ds, "long.wav") == "over-long clip: 3.0 s > max_seconds=2"
    assert _reason(ds, "maybe") == "empty class folder: no .flac/.ogg/.wav files"
    assert len(ds.quarantined) == 8
    assert ds.classes == ["no", "yes"] and len(ds) == 5  # the good files are all still there
    # without a length limit the long clip is fine
    assert "yes/long.wav" in load_audio_folder(folder, max_seconds=None).ids


def test_quiet_but_not_silent_audio_is_kept(folder: Path) -> None:
    write(folder / "yes" / "quiet.wav", tone(amp=0.001), subtype="FLOAT")
    ds = load_audio_folder(folder)
    assert "yes/quiet.wav" in ds.ids
    assert "yes/quiet.wav" not in load_audio_folder(folder, silence_threshold=0.01).ids


@pytest.mark.parametrize("sr", [8000, 44100, 96000])
def test_odd_sample_rates_are_kept_and_resampled(tmp_path: Path, sr: int) -> None:
    root = tmp_path / "d"
    write(root / "a" / "x.wav", tone(500, seconds=1.0, sr=sr), sr=sr)
    write(root / "b" / "y.wav", tone(700, seconds=1.0))
    ds = load_audio_folder(root)
    assert ds.quarantined == [] and len(ds) == 2
    wave, got_sr = ds.load(0)
    assert got_sr == sr and len(wave) == sr
    # the backbone transform brings it to 16 kHz: 1 s of 500 Hz -> 16000 samples peaking at 500 Hz
    t = create_scratch_cnn(clip_seconds=1.0).make_transform()
    clip = t.waveform((wave, got_sr))
    assert len(clip) == 16000 and np.argmax(np.abs(np.fft.rfft(clip))) == 500


def test_rate_below_minimum_is_quarantined(tmp_path: Path) -> None:
    write(tmp_path / "d" / "a" / "low.wav", tone(100, sr=2000), sr=2000)
    write(tmp_path / "d" / "a" / "ok.wav", tone())
    ds = load_audio_folder(tmp_path / "d")
    assert _reason(ds, "low.wav") == "sample rate 2000 Hz is below min_sample_rate=4000"


def test_silence_trimming_option(tmp_path: Path) -> None:
    wave = np.concatenate([np.zeros(8000, np.float32), tone(seconds=0.5), np.zeros(8000, np.float32)])
    write(tmp_path / "d" / "a" / "x.wav", wave, subtype="FLOAT")
    plain = load_audio_folder(tmp_path / "d").load(0)[0]
    trimmed = load_audio_folder(tmp_path / "d", trim_silence=True).load(0)[0]
    assert len(plain) == 24000
    assert 8000 <= len(trimmed) <= 8000 + 2 * 400  # the tone, within one 25 ms frame each side
    assert np.abs(trimmed).max() == pytest.approx(0.5, abs=1e-3)


def test_folder_errors_are_one_line_user_errors(tmp_path: Path) -> None:
    with pytest.raises(UserError, match="needs data.path"):
        load_audio_folder(None)
    with pytest.raises(UserError, match="not a folder"):
        load_audio_folder(tmp_path / "nope")
    (tmp_path / "flat").mkdir()
    with pytest.raises(UserError, match="no class sub-folders"):
        load_audio_folder(tmp_path / "flat")
    (tmp_path / "bad" / "a").mkdir(parents=True)
    (tmp_path / "bad" / "a" / "x.wav").write_bytes(b"")
    with pytest.raises(UserError, match="no usable audio file \\(1 quarantined: .*x.wav: zero-length file"):
        load_audio_folder(tmp_path / "bad")


def test_csv_manifest_resolves_relative_paths_and_quarantines_bad_rows(folder: Path) -> None:
    (folder / "yes" / "broken.wav").write_bytes(b"")
    lines = ["file,word", "words_alias/yes/a.wav,yes", f"{folder / 'no' / 'a.wav'},no",
             "yes/broken.wav,yes", "yes/missing.wav,yes", ",no", "no/stereo.wav,"]
    manifest = folder / "list.csv"
    (folder / "words_alias").symlink_to(folder)
    manifest.write_text("\n".join(lines) + "\n")
    ds = load_audio_manifest(manifest, path_column="file", label_column="word")
    assert ds.classes == ["no", "yes"] and ds.labels.tolist() == [1, 0]
    assert ds.ids == ["words_alias/yes/a.wav", str(folder / "no" / "a.wav")]
    reasons = sorted(q.reason for q in ds.quarantined)
    assert reasons == ["file not found", "row 5: missing file", "row 6: missing word",
                       "zero-length file (0 bytes)"]
    with pytest.raises(UserError, match="no column 'path' \\(found: file, word\\); set data.options.path_column"):
        load_audio_manifest(manifest)


def test_jsonl_manifest(folder: Path) -> None:
    manifest = folder / "m.jsonl"
    manifest.write_text("\n".join(json.dumps(r) for r in [
        {"path": "yes/b.flac", "label": "yes"}, {"path": "no/a.wav", "label": "no"}]) + "\n")
    ds = load_audio_manifest(manifest)
    assert ds.ids == ["yes/b.flac", "no/a.wav"] and ds.labels.tolist() == [1, 0]
    assert ds.load(0)[0] == pytest.approx(tone(450), abs=1e-4)
    manifest.write_text('{"path": "yes/b.flac"\n')
    with pytest.raises(UserError, match="line 1 is not JSON"):
        load_audio_manifest(manifest)
    with pytest.raises(UserError, match="unknown manifest type '.xml'"):
        (folder / "m.xml").write_text("<x/>")
        load_audio_manifest(folder / "m.xml")
