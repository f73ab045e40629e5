"""Synthetic spoken-word data: words spoken by Debian's ``espeak-ng`` across English accents,
voice variants, pitches and speeds, written as an audio folder with a voice-disjoint split.

SYNTHETIC data (see docs/audio.md): good for training and for checking a pipeline end to end;
judge generalisation on voices the model never heard (the ``test`` split) and, better, on real
recordings.
"""

from __future__ import annotations

import csv
import io
import os
import random
import re
import shutil
import subprocess
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any

from transfuse.errors import UserError
from transfuse.io import atomic_write_json, atomic_write_text

DIGITS: tuple[str, ...] = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")
COMMANDS: tuple[str, ...] = ("yes", "no", "up", "down", "left", "right", "on", "off", "stop", "go")
WORD_LISTS: dict[str, tuple[str, ...]] = {"digits": DIGITS, "commands": COMMANDS}

#: espeak-ng's English accents (``espeak-ng --voices=en``, the non-MBROLA ones)
ACCENTS: tuple[str, ...] = ("en-us", "en-gb", "en-gb-scotland", "en-gb-x-rp", "en-gb-x-gbclan",
                            "en-gb-x-gbcwmd", "en-029", "en-us-nyc")
#: a default set of human-sounding voice variants (``espeak-ng --voices=variant``)
VARIANTS: tuple[str, ...] = ("m1", "m2", "m3", "m4", "m5", "m6", "m7", "f1", "f2", "f3", "f4", "f5",
                             "klatt", "klatt2", "klatt3", "Alex", "Annie", "david", "linda", "steph")
#: How :func:`split_voices` groups voices: ``variant`` (all accents of a variant), ``voice`` (one
#: accent+variant), ``accent`` (all variants of an accent), ``accent_and_variant`` (test voices pair a
#: held-out accent with a held-out variant; voices mixing held-out and training parts are left out).
SPLIT_BY = ("variant", "voice", "accent", "accent_and_variant")
#: Bumped when the generator's output changes for the same parameters (part of the cache key).
GENERATOR_REVISION = 2


@dataclass
class SpeechSet:
    """What :func:`synthesize_words` wrote."""

    out_dir: Path
    words: list[str]
    train_voices: list[str]
    test_voices: list[str]
    n_train: int = 0
    n_test: int = 0
    manifest: Path = field(default=Path())

    def to_dict(self) -> dict[str, Any]:
        return {"out_dir": str(self.out_dir), "words": self.words, "train_voices": self.train_voices,
                "test_voices": self.test_voices, "n_train": self.n_train, "n_test": self.n_test,
                "manifest": str(self.manifest), "synthetic": True, "generator": "espeak-ng"}


def _espeak() -> str:
    exe = shutil.which("espeak-ng")
    if exe is None:
        raise UserError("espeak-ng not found; install it with: apt-get install espeak-ng")
    return exe


@lru_cache(maxsize=1)
def installed_voices() -> tuple[frozenset[str], frozenset[str]]:
    """``(languages, variants)`` known to the installed espeak-ng."""
    exe = _espeak()

    def column(arg: str, col: int) -> list[str]:
        out = subprocess.run([exe, f"--voices={arg}"], capture_output=True, text=True, check=True).stdout
        return [line.split()[col] for line in out.splitlines()[1:] if len(line.split()) > col]

    langs = set(column("en", 1))
    variants = {f.rsplit("/", 1)[-1] for f in column("variant", 4)}
    return frozenset(langs), frozenset(variants)


def expand_words(words: Sequence[str]) -> list[str]:
    """Words with the list names ``digits`` and ``commands`` expanded; duplicates dropped."""
    out: list[str] = []
    for w in words:
        for x in WORD_LISTS.get(w.strip().lower(), (w.strip(),)):
            if x and x not in out:
                out.append(x)
    if not out:
        raise UserError("--words: give at least one word (or the lists 'digits', 'commands')")
    return out


def _folder_name(word: str) -> str:
    name = re.sub(r"[^a-z0-9_-]+", "_", word.lower()).strip("_")
    if not name:
        raise UserError(f"--words: {word!r} has no letters or digits to name its folder")
    return name


def _check_voices(voices: Sequence[str]) -> None:
    langs, variants = installed_voices()
    for v in voices:
        lang, _, var = v.partition("+")
        if lang not in langs:
            raise UserError(f"voice {v!r}: espeak-ng has no English accent {lang!r}; valid: "
                            f"{', '.join(sorted(langs))}")
        if var and var not in variants:
            raise UserError(f"voice {v!r}: espeak-ng has no variant {var!r}; valid: "
                            f"{', '.join(sorted(variants))}")


def split_voices(voices: Sequence[str], test_fraction: float, seed: int,
                 split_by: str = "variant") -> tuple[list[str], list[str]]:
    """Voice-disjoint split: groups (see :data:`SPLIT_BY`) are shuffled with ``seed`` and
    ``round(test_fraction * groups)`` of them (at least one, never all) go to test.

    ``accent_and_variant`` holds out accents and variants at once (each drawn as above): a test
    voice has an accent and a variant training never heard; voices with one held-out part only are
    in neither split."""
    if split_by not in SPLIT_BY:
        raise UserError(f"split_by={split_by!r} is not valid; give one of {', '.join(SPLIT_BY)}")
    if not 0 < test_fraction < 1:
        raise UserError(f"test_fraction={test_fraction} must lie strictly between 0 and 1")
    if split_by == "accent_and_variant":
        held = ({v.partition("+")[0] for v in split_voices(voices, test_fraction, seed, "accent")[1]},
                {v.partition("+")[2] for v in split_voices(voices, test_fraction, seed, "variant")[1]})
        where = {v: (v.partition("+")[0] in held[0], v.partition("+")[2] in held[1]) for v in voices}
        return ([v for v in voices if where[v] == (False, False)],
                [v for v in voices if where[v] == (True, True)])

    def key(v: str) -> str:
        accent, _, variant = v.partition("+")
        return {"variant": variant, "accent": accent}.get(split_by, v)

    groups = sorted({key(v) for v in voices})
    if len(groups) < 2:
        raise UserError(f"need at least 2 distinct {split_by}s for a voice-disjoint split; got {groups}")
    random.Random(seed).shuffle(groups)
    n_test = min(len(groups) - 1, max(1, round(test_fraction * len(groups))))
    test_groups = set(groups[:n_test])
    return ([v for v in voices if key(v) not in test_groups], [v for v in voices if key(v) in test_groups])


#: Accents whose espeak-ng name ignores a ``+variant`` suffix, and the name of the same voice file
#: (gmw/en) that honours it: ``-v en-gb+f1`` speaks exactly like ``-v en-gb`` (espeak-ng 1.51).
ESPEAK_NAMES: dict[str, str] = {"en-gb": "en"}


def espeak_voice(voice: str) -> str:
    """The ``-v`` argument that makes espeak-ng speak ``voice`` (``accent+variant``)."""
    accent, plus, variant = voice.partition("+")
    return ESPEAK_NAMES.get(accent, accent) + plus + variant if variant else voice


def _speak(exe: str, word: str, voice: str, pitch: int, speed: int, path: Path) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    r = subprocess.run([exe, "-v", espeak_voice(voice), "-p", str(pitch), "-s", str(speed), "-w", str(tmp), word],
                       capture_output=True, text=True)
    if r.returncode != 0 or not tmp.is_file() or tmp.stat().st_size <= 44:
        tmp.unlink(missing_ok=True)
        raise UserError(f"espeak-ng failed for {word!r} with voice {voice}: {r.stderr.strip()[:200]}")
    os.replace(tmp, path)


def synthesize_words(words: Sequence[str], out_dir: str | Path, voices: Sequence[str] | None = None,
                     pitches: Sequence[int] = (40, 60), speeds: Sequence[int] = (150,), seed: int = 0,
                     test_fraction: float = 0.25, *, accents: Sequence[str] = ACCENTS,
                     variants: Sequence[str] = VARIANTS, split_by: str = "variant",
                     workers: int = 2) -> SpeechSet:
    """Speak every word in every voice, pitch and speed; write ``out_dir/{train,test}/<word>/*.wav``
    (22.05 kHz mono 16-bit), ``out_dir/manifest.csv`` (path, label, split, voice, accent, variant,
    pitch, speed) and ``out_dir/speech.json``. ``voices`` (``"en-us+f3"``) defaults to every
    ``accents`` x ``variants`` pair. The split is voice-disjoint (:func:`split_voices`)."""
    exe = _espeak()
    words = expand_words(words)
    folders = {w: _folder_name(w) for w in words}
    voices = list(dict.fromkeys(voices or [f"{a}+{v}" for a in accents for v in variants]))
    _check_voices(voices)
    for name, vals, lo, hi in (("pitches", pitches, 0, 99), ("speeds", speeds, 80, 450)):
        if not vals or any(not lo <= int(x) <= hi for x in vals):
            raise UserError(f"{name}={list(vals)}: give values in {lo}..{hi}")
    train, test = split_voices(voices, test_fraction, seed, split_by)
    out = Path(out_dir)
    if out.exists() and any(out.iterdir()):
        raise UserError(f"--out {out}: the folder is not empty (old clips would break the voice-disjoint "
                        "split); give a new folder or delete it")
    jobs, rows = [], []
    for split, vs in (("train", train), ("test", test)):
        for w in words:
            (out / split / folders[w]).mkdir(parents=True, exist_ok=True)
            for v in vs:
                for p in pitches:
                    for s in speeds:
                        rel = f"{split}/{folders[w]}/{folders[w]}__{v}__p{int(p)}_s{int(s)}.wav"
                        jobs.append((w, v, int(p), int(s), out / rel))
                        accent, _, variant = v.partition("+")
                        rows.append({"path": rel, "label": folders[w], "split": split, "voice": v,
                                     "accent": accent, "variant": variant, "pitch": int(p), "speed": int(s)})
    with ThreadPoolExecutor(max(1, workers)) as pool:
        list(pool.map(lambda j: _speak(exe, *j), jobs))
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=list(rows[0]), lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    atomic_write_text(out / "manifest.csv", buf.getvalue())
    result = SpeechSet(out, [folders[w] for w in words], train, test,
                       sum(r["split"] == "train" for r in rows), sum(r["split"] == "test" for r in rows),
                       out / "manifest.csv")
    atomic_write_json(out / "speech.json", {**result.to_dict(), "pitches": list(pitches),
                                            "speeds": list(speeds), "seed": seed,
                                            "test_fraction": test_fraction, "split_by": split_by})
    return result


def speech_cli(words: list[str], out: str, voices: list[str] | None = None,
               pitches: list[int] | None = None, speeds: list[int] | None = None, seed: int = 0,
               test_fraction: float = 0.25, split_by: str = "variant", overwrite: bool = False) -> dict[str, Any]:
    """``transfuse data speech --words ... --out DIR``: synthesise (into a safe output folder, see
    :mod:`transfuse.outputs`), print a one-line summary and return it as a dict."""
    import dataclasses
    import json

    from transfuse.outputs import abandon_output, finish_output, start_output

    folder = Path(out).expanduser()
    tmp = start_output(folder, "data", [], overwrite)
    try:
        res = synthesize_words(words, tmp, voices, tuple(pitches or (40, 60)), tuple(speeds or (150,)),
                               seed, test_fraction, split_by=split_by)
        res = dataclasses.replace(res, out_dir=folder, manifest=folder / "manifest.csv")
        info = json.loads((tmp / "speech.json").read_text())
        atomic_write_json(tmp / "speech.json", {**info, "out_dir": str(folder), "manifest": str(res.manifest)})
        finish_output(tmp, folder, "data", [], overwrite)
    except BaseException:
        abandon_output(tmp)
        raise
    print(f"wrote {res.n_train} train and {res.n_test} test clips of {len(res.words)} words to {res.out_dir} "
          f"({len(res.train_voices)} train voices, {len(res.test_voices)} held-out test voices; synthetic)")
    return res.to_dict()


# ----------------------------------------------------------------------------- data source "speech"

def espeak_version() -> str:
    """``espeak-ng --version`` (part of the cache key: another version speaks differently)."""
    out = subprocess.run([_espeak(), "--version"], capture_output=True, text=True, check=False).stdout
    return " ".join(out.split()[:4])


def speech_params(words: Sequence[str], voices: Sequence[str] | None, pitches: Sequence[int],
                  speeds: Sequence[int], seed: int, test_fraction: float, split_by: str,
                  accents: Sequence[str], variants: Sequence[str]) -> dict[str, Any]:
    """The parameters that determine a synthesised set (what its cache key is made of)."""
    return {"words": [_folder_name(w) for w in expand_words(words)],
            "voices": list(dict.fromkeys(voices or [f"{a}+{v}" for a in accents for v in variants])),
            "pitches": [int(p) for p in pitches], "speeds": [int(s) for s in speeds], "seed": int(seed),
            "test_fraction": float(test_fraction), "split_by": split_by, "espeak": espeak_version(),
            "generator": GENERATOR_REVISION}


def ensure_speech_set(params: dict[str, Any], folder: Path | None = None, workers: int = 2) -> Path:
    """The folder holding the set ``params`` describes, synthesised on first use.

    Default folder: ``$TRANSFUSE_HOME/data/speech/<sha256 of params>``. A folder that already
    holds a set (``speech.json``) is reused when its parameters match and refused otherwise.
    The set is written to a temporary sibling and renamed into place, so an interrupted or
    concurrent synthesis never leaves a half-written set behind."""
    import hashlib
    import json

    from transfuse.paths import data_dir

    key = hashlib.sha256(json.dumps(params, sort_keys=True).encode()).hexdigest()[:16]
    folder = Path(folder) if folder is not None else data_dir() / "speech" / key
    meta = folder / "speech.json"
    if meta.is_file():
        old = json.loads(meta.read_text())
        if old.get("params") != params:
            raise UserError(f"data.path {folder}: holds a speech set made with other parameters "
                            f"(see {meta}); give another folder or delete it")
        return folder
    if folder.exists() and any(folder.iterdir()):
        raise UserError(f"data.path {folder}: not empty and no speech.json; give an empty or new folder")
    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = folder.with_name(f".{folder.name}.tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        synthesize_words(params["words"], tmp, params["voices"], params["pitches"], params["speeds"],
                         params["seed"], params["test_fraction"], split_by=params["split_by"],
                         workers=workers)
        info = json.loads((tmp / "speech.json").read_text())
        atomic_write_json(tmp / "speech.json", {**info, "out_dir": str(folder),
                                                "manifest": str(folder / "manifest.csv"), "params": params})
        if folder.exists():
            folder.rmdir()  # empty (checked above); a concurrent writer's set makes this fail
        os.rename(tmp, folder)
    except OSError:
        if not (folder / "speech.json").is_file():
            raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return folder


def load_speech(path: str | Path | None = None, *, words: Sequence[str] = ("digits",),
                split: str = "train", voices: Sequence[str] | None = None,
                accents: Sequence[str] = ACCENTS, variants: Sequence[str] = VARIANTS,
                pitches: Sequence[int] = (40, 60), speeds: Sequence[int] = (150,), seed: int = 0,
                test_fraction: float = 0.25, split_by: str = "variant", **audio_options: Any) -> Any:
    """Data source ``speech``: espeak-ng spoken words (SYNTHETIC), synthesised on first use.

    The set is cached in ``path`` or ``$TRANSFUSE_HOME/data/speech/<key>`` (key: the parameters
    and the espeak-ng version) and reused afterwards. ``split`` picks the voice-disjoint ``train``
    or ``test`` part; give the same parameters to ``data.options`` and ``data.test_options`` (with
    ``split: test``) for a held-out-voice test set. Other options (``trim_silence``,
    ``max_seconds``, ...) go to the ``audio_folder`` loader."""
    from transfuse.data.audio_folder import load_audio_folder  # imports torch: only when loading

    if split not in ("train", "test"):
        raise UserError(f"data option split={split!r} is not valid; give train or test")
    params = speech_params(words, voices, pitches, speeds, seed, test_fraction, split_by, accents, variants)
    folder = ensure_speech_set(params, Path(path) if path is not None else None)
    return load_audio_folder(folder / split, name=f"speech-{split}", **audio_options)
