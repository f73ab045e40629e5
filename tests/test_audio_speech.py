"""The espeak-ng spoken-word generator: voice-disjoint split, files, manifest, errors."""

from __future__ import annotations

import csv
import shutil
from pathlib import Path

import pytest

from transfuse.data.audio import load_audio_folder
from transfuse.data.speech import COMMANDS, DIGITS, expand_words, speech_cli, split_voices, synthesize_words
from transfuse.errors import UserError

needs_espeak = pytest.mark.skipif(shutil.which("espeak-ng") is None, reason="espeak-ng is not installed")


def test_word_lists() -> None:
    assert DIGITS == ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")
    assert len(COMMANDS) == len(set(COMMANDS)) == 10
    assert expand_words(["digits", "yes", "one"]) == [*DIGITS, "yes"]
    with pytest.raises(UserError, match="at least one word"):
        expand_words(["  "])


def test_split_by_variant_never_shares_a_variant() -> None:
    voices = [f"{a}+{v}" for a in ("en-us", "en-gb", "en-029") for v in ("m1", "m2", "f1", "f2", "f3")]
    train, test = split_voices(voices, 0.4, seed=3)
    variants = lambda vs: {v.partition("+")[2] for v in vs}  # noqa: E731
    assert sorted(train + test) == sorted(voices)
    assert not variants(train) & variants(test) and len(variants(test)) == 2
    assert split_voices(voices, 0.4, seed=3) == (train, test)  # seeded
    tr2, te2 = split_voices(voices, 0.4, seed=3, split_by="voice")
    assert not set(tr2) & set(te2) and len(te2) == 6  # round(0.4 * 15)
    assert any(split_voices(voices, 0.4, seed=s) != (train, test) for s in range(4, 10))


def test_split_by_accent_and_by_accent_and_variant() -> None:
    accents, variants = ("en-us", "en-gb", "en-029", "en-us-nyc", "en-gb-x-rp"), ("m1", "m2", "f1", "f2")
    voices = [f"{a}+{v}" for a in accents for v in variants]
    acc = lambda vs: {v.partition("+")[0] for v in vs}  # noqa: E731
    var = lambda vs: {v.partition("+")[2] for v in vs}  # noqa: E731
    train, test = split_voices(voices, 0.4, seed=1, split_by="accent")
    assert sorted(train + test) == sorted(voices)
    assert not acc(train) & acc(test) and len(acc(test)) == 2 and var(test) == set(variants)
    tr, te = split_voices(voices, 0.4, seed=1, split_by="accent_and_variant")
    held_acc = acc(test)  # the same accents are held out (same seed and fraction)
    held_var = var(split_voices(voices, 0.4, seed=1)[1])
    assert len(held_var) == 2  # round(0.4 * 4)
    # test = 2 held-out accents x 2 held-out variants; train = 3 x 2; the 8 mixed voices are in neither
    assert acc(te) == held_acc and var(te) == held_var and len(te) == 4
    assert not acc(tr) & held_acc and not var(tr) & held_var and len(tr) == 6


def test_split_errors() -> None:
    with pytest.raises(UserError, match="at least 2 distinct variants"):
        split_voices(["en-us+m1", "en-gb+m1"], 0.5, 0)
    with pytest.raises(UserError, match="test_fraction=1.0 must lie strictly between 0 and 1"):
        split_voices(["en-us+m1", "en-us+m2"], 1.0, 0)
    with pytest.raises(UserError, match="split_by='speaker' is not valid; give one of variant, voice, accent, accent_and_variant"):
        split_voices(["en-us+m1", "en-us+m2"], 0.5, 0, split_by="speaker")


@needs_espeak
def test_synthesized_folder_is_voice_disjoint_and_loadable(tmp_path: Path) -> None:
    out = tmp_path / "speech"
    voices = ["en-us+m1", "en-gb+m1", "en-us+f2", "en-gb+f2", "en-029+m3", "en-gb-scotland+m3"]
    res = synthesize_words(["seven", "Go!"], out, voices=voices, pitches=(50,), speeds=(170,),
                           seed=1, test_fraction=0.34)
    assert res.words == ["seven", "go"]
    assert len(res.test_voices) == 2 and len(res.train_voices) == 4  # one variant of three held out
    with open(out / "manifest.csv") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 2 * 6 == res.n_train + res.n_test
    seen = {"train": set(), "test": set()}
    for r in rows:
        p = out / r["path"]
        assert p.is_file() and p.parts[-3] == r["split"] and p.parts[-2] == r["label"]
        assert r["voice"] == f"{r['accent']}+{r['variant']}" and r["voice"] in p.name
        seen[r["split"]].add(r["voice"])
    assert seen["train"] == set(res.train_voices) and seen["test"] == set(res.test_voices)
    assert not seen["train"] & seen["test"]
    assert not {v.split("+")[1] for v in seen["train"]} & {v.split("+")[1] for v in seen["test"]}
    train = load_audio_folder(out / "train")
    test = load_audio_folder(out / "test")
    assert train.quarantined == [] == test.quarantined
    assert train.classes == test.classes == ["go", "seven"]
    assert len(train) == 8 and len(test) == 4
    wave, sr = train.load(0)
    assert sr == 22050 and 0.2 < len(wave) / sr < 2.0
    with pytest.raises(UserError, match="the folder is not empty"):
        synthesize_words(["seven"], out, voices=voices)


@needs_espeak
def test_unknown_voice_fails_before_any_work(tmp_path: Path) -> None:
    with pytest.raises(UserError, match="no variant 'zz9'; valid: .*m1"):
        synthesize_words(["one"], tmp_path / "x", voices=["en-us+m1", "en-us+zz9"])
    with pytest.raises(UserError, match="no English accent 'en-mars'"):
        synthesize_words(["one"], tmp_path / "x", voices=["en-mars+m1", "en-us+m2"])
    with pytest.raises(UserError, match="speeds=\\[10\\]: give values in 80..450"):
        synthesize_words(["one"], tmp_path / "x", voices=["en-us+m1", "en-us+m2"], speeds=(10,))
    assert not (tmp_path / "x").exists()


@needs_espeak
def test_speech_cli_summary(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    d = speech_cli(["one"], str(tmp_path / "s"), voices=["en-us+m1", "en-us+f1"], pitches=[50],
                   speeds=[160], test_fraction=0.5)
    assert d["n_train"] == 1 and d["n_test"] == 1 and d["synthetic"] is True
    assert "wrote 1 train and 1 test clips of 1 words" in capsys.readouterr().out


@needs_espeak
def test_speech_source_synthesises_once_into_the_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from transfuse.data import speech
    from transfuse.data.registry import load_dataset

    monkeypatch.setenv("TRANSFUSE_HOME", str(tmp_path / "home"))
    opts = {"words": ["one", "two"], "voices": ["en-us+m1", "en-us+f2", "en-gb+m3"], "pitches": [50],
            "speeds": [160], "test_fraction": 0.34}
    train = load_dataset("speech", None, **opts)
    test = load_dataset("speech", None, **opts, split="test")
    assert train.classes == test.classes == ["one", "two"]
    assert len(train) == 4 and len(test) == 2 and train.quarantined == []  # one variant of 3 held out
    sets = list((tmp_path / "home" / "data" / "speech").iterdir())
    assert len(sets) == 1 and (sets[0] / "speech.json").is_file()  # no temporary folder left
    calls = []
    monkeypatch.setattr(speech, "synthesize_words", lambda *a, **k: calls.append(a))
    assert load_dataset("speech", None, **opts).items == train.items and calls == []  # reused
    with pytest.raises(UserError, match="split='dev' is not valid; give train or test"):
        load_dataset("speech", None, **opts, split="dev")


@needs_espeak
def test_speech_source_in_a_given_folder_refuses_other_parameters(tmp_path: Path) -> None:
    from transfuse.data.speech import load_speech

    opts = {"words": ["go"], "voices": ["en-us+m1", "en-us+f2"], "pitches": [50], "speeds": [160],
            "test_fraction": 0.5}
    ds = load_speech(tmp_path / "set", **opts)
    assert len(ds) == 1 and (tmp_path / "set" / "manifest.csv").is_file()
    assert load_speech(tmp_path / "set", **opts, split="test").classes == ["go"]
    with pytest.raises(UserError, match="holds a speech set made with other parameters"):
        load_speech(tmp_path / "set", **{**opts, "speeds": [170]})
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "x.txt").write_text("x")
    with pytest.raises(UserError, match="not empty and no speech.json"):
        load_speech(tmp_path / "other", **opts)


def test_espeak_voice_names() -> None:
    from transfuse.data.speech import espeak_voice

    assert espeak_voice("en-gb+f1") == "en+f1"  # en-gb ignores variants; en is the same voice file
    assert espeak_voice("en-us+m3") == "en-us+m3" and espeak_voice("en-gb") == "en-gb"


@needs_espeak
def test_every_default_accent_honours_its_variant(tmp_path: Path) -> None:
    from transfuse.data.speech import ACCENTS

    voices = [f"{a}+{v}" for a in ACCENTS for v in ("m1", "f3")]
    res = synthesize_words(["up"], tmp_path / "s", voices=voices, pitches=(50,), test_fraction=0.5)
    audio = {}
    for p in (tmp_path / "s").rglob("*.wav"):
        audio[p.name.split("__")[1]] = p.read_bytes()
    assert len(audio) == len(voices) == res.n_train + res.n_test
    for a in ACCENTS:
        assert audio[f"{a}+m1"] != audio[f"{a}+f3"], a
