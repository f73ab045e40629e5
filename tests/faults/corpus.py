"""The fault corpus: hostile or careless inputs for every input path, each with its expected outcome.

Every input is generated here by code (no binary blobs in the repository). An :class:`Invocation`
is one real ``transfuse`` command run in a subprocess in its own folder; a :class:`Case` is one
fault and the outcome it must have in that command's result:

- ``error``: exit 2 and exactly this one line on stderr (``error: ...``);
- ``refused``: the same, for an output folder that would have replaced the user's files;
- ``quarantined``: the run finishes and its report lists the input with this reason;
- ``record``: ``predict`` answers the other inputs and prints this error record for the bad one;
- ``warning``: the command finishes and prints this one warning;
- ``kept``: the command finishes and the input is used (e.g. a long text truncated, not dropped);
- ``listed``: the command finishes, the input is used and the report lists it as read from outside
  its data folder (the file it read: ``expect``).

``new`` marks the faults of issue 13 (crashes, hangs, silent corruption or data loss before the
fix); the others were handled already and stay in the corpus so that they stay handled.
Messages hold ``{d}``, the invocation's folder, where they name a path.
"""

from __future__ import annotations

import json
import shutil
import struct
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

TESTS = Path(__file__).resolve().parents[1]
if str(TESTS) not in sys.path:
    sys.path.insert(0, str(TESTS))

from conftest import write_digits_folder  # noqa: E402

Build = Callable[[Path, dict[str, Path]], tuple[list[str], dict[str, str]]]


@dataclass(frozen=True)
class Invocation:
    """One ``transfuse`` command. ``build(folder, needed)`` writes its inputs into ``folder`` and
    returns ``(argv, extra env)``; ``needed`` maps the names in ``needs`` to their folders (read
    only: the snapshot check covers them too). ``outputs``: paths under ``folder`` it may write.
    Memory is bounded twice: the command runs under an address-space limit (``max_vm_mb``) and
    its peak RSS (from ``wait4``) must stay under ``max_rss_mb``."""

    name: str
    build: Build
    rc: int
    outputs: tuple[str, ...] = ()
    needs: tuple[str, ...] = ()
    timeout: float = 120.0
    max_rss_mb: float = 1500.0
    #: the address-space limit it runs under (RLIMIT_AS): a runaway allocation fails at once
    #: instead of swapping the machine; torch and onnxruntime map ~2-3 GB they never touch
    max_vm_mb: float = 6144.0


@dataclass(frozen=True)
class Case:
    name: str
    path: str  # the input path: data source, manifest, text table, config, merge input, predict input, run folder
    fault: str
    outcome: str  # error | refused | quarantined | record | warning | kept
    expect: str  # the message, reason or record ("..." at the end: a prefix)
    run: str  # the Invocation it is checked in
    new: bool = False
    item: str = ""  # quarantined / record / kept: the input's file name or id


# -- generated inputs ---------------------------------------------------------------------------

def raw_safetensors(path: Path, header: object, data: bytes = b"", length: int | None = None) -> None:
    """A safetensors file with exactly this header (any JSON) and these data bytes."""
    head = json.dumps(header).encode()
    path.write_bytes(struct.pack("<Q", len(head) if length is None else length) + head + data)


def f32(*values: float) -> bytes:
    return struct.pack(f"<{len(values)}f", *values)


GOOD_TENSORS = {"w": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]},
                "b": {"dtype": "F32", "shape": [1], "data_offsets": [8, 12]}}


def bomb_bmp(path: Path, side: int = 20000) -> None:
    """A 54-byte BMP whose header claims side x side pixels: a decompression bomb."""
    path.write_bytes(b"BM" + struct.pack("<IHHI", 54, 0, 0, 54)
                     + struct.pack("<IiiHHIIiiII", 40, side, side, 1, 24, 0, 0, 2835, 2835, 0, 0))


def alias_bomb(levels: int = 9) -> list[str]:
    """YAML lines (indented under a key) of an alias bomb: each anchor is 9 aliases of the last."""
    rows = ['  l0: &l0 ["xxxxxxxxxx", "xxxxxxxxxx", "xxxxxxxxxx"]']
    rows += [f"  l{i}: &l{i} [{', '.join([f'*l{i - 1}'] * 9)}]" for i in range(1, levels)]
    return rows


def wav_bytes(samples: list[float], rate: int = 16000, width: int = 2, channels: int = 1) -> bytes:
    """A PCM WAV (``width`` bytes a sample; 1: unsigned 8-bit) of ``samples`` in [-1, 1]."""
    import io
    import wave

    buf = io.BytesIO()
    with wave.open(buf, "wb") as w:
        w.setnchannels(channels)
        w.setsampwidth(width)
        w.setframerate(rate)
        if width == 1:
            w.writeframes(bytes(int(128 + 127 * v) for v in samples))
        else:
            top = (1 << (8 * width - 1)) - 1
            w.writeframes(b"".join(int(top * v).to_bytes(width, "little", signed=True) for v in samples))
    return buf.getvalue()


def float_wav(samples: list[float], rate: int = 16000) -> bytes:
    """A 32-bit float WAV (format 3), which the stdlib's ``wave`` cannot write."""
    data = struct.pack(f"<{len(samples)}f", *samples)
    fmt = struct.pack("<HHIIHH", 3, 1, rate, rate * 4, 4, 32)
    return (b"RIFF" + struct.pack("<I", 4 + 8 + len(fmt) + 8 + len(data)) + b"WAVE" + b"fmt "
            + struct.pack("<I", len(fmt)) + fmt + b"data" + struct.pack("<I", len(data)) + data)


def tone(freq: float, seconds: float = 0.5, rate: int = 16000, seed: int = 0) -> list[float]:
    import math
    import random

    r = random.Random(seed)
    return [0.5 * math.sin(2 * math.pi * freq * i / rate) + 0.05 * r.uniform(-1, 1) for i in range(int(seconds * rate))]


def patched(data: bytes, at: int, fmt: str, value: int) -> bytes:
    """``data`` with one header field (``struct`` format ``fmt`` at byte ``at``) replaced."""
    b = bytearray(data)
    b[at:at + struct.calcsize(fmt)] = struct.pack(fmt, value)
    return bytes(b)


# -- invocations --------------------------------------------------------------------------------

def fit_images(d: Path, _: dict[str, Path]) -> tuple[list[str], dict[str, str]]:
    """An image folder with every kind of bad file, an external test manifest with bad rows, and
    a feature cache that cannot be written (its folder lies below a file)."""
    data = write_digits_folder(d / "digits", per_class=8, size=32)
    good = sorted((data / "digit0").glob("*.png"))[0].read_bytes()
    (data / "digit0" / "zero.png").write_bytes(b"")
    (data / "digit0" / "notes.png").write_text("this is a text file, not an image")
    bomb_bmp(data / "digit1" / "bomb.bmp")
    (data / "digit1" / "truncated.png").write_bytes(good[: len(good) // 2])
    (data / "digit7" / "corrupt.jpg").write_bytes(b"\xff\xd8\xff\xe0" + bytes(range(256)) * 2)
    (data / "digit7" / "loop_a.png").symlink_to("loop_b.png")
    (data / "digit7" / "loop_b.png").symlink_to("loop_a.png")
    (data / "empty_class").mkdir()
    # files read from outside their data folder: a link out of it, manifest rows with ../ and an
    # absolute path (the manifest is in lists/, its images beside it)
    for name, size, c in (("far.png", 30, 0), ("near.png", 27, 7), ("abs.png", 26, 1)):
        src = next((write_digits_folder(d / "elsewhere" / name, classes=(c,), per_class=1, size=size)).rglob("*.png"))
        src.rename(d / "elsewhere" / f"{name}.tmp")
        shutil.rmtree(d / "elsewhere" / name)
        (d / "elsewhere" / f"{name}.tmp").rename(d / "elsewhere" / name)
    (data / "digit0" / "linked_out.png").symlink_to("../../elsewhere/far.png")
    test = write_digits_folder(d / "test_images", per_class=3, size=28)  # other bytes: not duplicates
    rows = ["path,label"] + [f"../{p.relative_to(d)},{p.parent.name}" for p in sorted(test.rglob("*.png"))]
    rows += ["../test_images/missing.png,digit0", "test_images/" + "a" * 10_000_000 + ".png,digit1",
             "../elsewhere/near.png,digit7", f"{d}/elsewhere/abs.png,digit1"]
    (d / "lists").mkdir()
    (d / "lists" / "test.csv").write_text("\n".join(rows) + "\n")
    (d / "afile").write_text("a file where the cache folder should be")
    return (["fit", "--data", "digits", "--test-data", "lists/test.csv", "--backbone", "bundled:efficientnet_lite0",
             "--out", "run", "--folds", "2", "--set", "preprocess.image_size=32", "--set", "adapt.baseline=false",
             "--quiet"],
            {"TRANSFUSE_FEATURE_CACHE": str(d / "afile" / "cache")})


def fit_text(d: Path, _: dict[str, Path]) -> tuple[list[str], dict[str, str]]:
    words = {"spam": "win money prize free offer cash click now".split(),
             "ham": "meeting lunch report project team schedule notes agenda".split()}
    rows = ["text,label"]
    for i in range(40):
        lab = "spam" if i % 2 else "ham"
        rows.append(" ".join(words[lab][(i * 7 + k) % 8] for k in range(8)) + f" item{i}," + lab)
    rows.append('"' + "free money now " * 20_000 + '",spam')  # line 42: a 300 KB field
    rows.append("meeting notes," + "x" * 10_000_000)  # line 43: a 10 MB label
    rows.append("  ,ham")  # line 44: empty text
    data = ("\n".join(rows) + "\n").encode() + b"caf\xe9 lunch,ham\n"  # line 45: invalid UTF-8
    (d / "texts.csv").write_bytes(data)
    return ["fit", "--data", "texts.csv", "--modality", "text", "--backbone", "tfidf", "--out", "run",
            "--folds", "2", "--quiet"], {}


def config(text: str, *extra: str) -> Build:
    def build(d: Path, _: dict[str, Path]) -> tuple[list[str], dict[str, str]]:
        (d / "data" / "a").mkdir(parents=True)
        (d / "exp.yaml").write_text(text)
        return ["run", "exp.yaml", "--out", "run", *extra], {}
    return build


def misspelt_option(d: Path, _: dict[str, Path]) -> tuple[list[str], dict[str, str]]:
    (d / "data" / "a").mkdir(parents=True)
    return ["fit", "--data", "data", "--backbone", "bundled:efficientnet_lite0", "--out", "run",
            "--set", "data.options.valdate=false"], {}


def merge_with(header: object, data: bytes = b"", length: int | None = None) -> Build:
    """Merge a good model with one whose header is ``header``."""
    def build(d: Path, _: dict[str, Path]) -> tuple[list[str], dict[str, str]]:
        raw_safetensors(d / "a.safetensors", GOOD_TENSORS, f32(1, 2, 3))
        raw_safetensors(d / "b.safetensors", header, data, length)
        (d / "merge.yaml").write_text("merge_method: linear\nmodels:\n  - model: a.safetensors\n"
                                      "  - model: b.safetensors\n")
        return ["merge", "merge.yaml", "--out", "out"], {}
    return build


def merge_pickle(d: Path, _: dict[str, Path]) -> tuple[list[str], dict[str, str]]:
    raw_safetensors(d / "a.safetensors", GOOD_TENSORS, f32(1, 2, 3))
    (d / "b.pt").write_bytes(b"\x80\x04\x95" + b"cos\nsystem\n(S'echo pwned'\ntR." )
    (d / "merge.yaml").write_text("merge_method: linear\nmodels:\n  - model: a.safetensors\n  - model: b.pt\n")
    return ["merge", "merge.yaml", "--out", "out"], {}


def merge_overwrite(out: str, foreign: bool = False) -> Build:
    """``merge --overwrite`` into a folder that holds the inputs, is their parent, or holds a
    file of the user's."""
    def build(d: Path, _: dict[str, Path]) -> tuple[list[str], dict[str, str]]:
        (d / "models").mkdir()
        raw_safetensors(d / "models" / "a.safetensors", GOOD_TENSORS, f32(1, 2, 3))
        raw_safetensors(d / "models" / "b.safetensors", GOOD_TENSORS, f32(4, 5, 6))
        (d / "models" / "notes.txt").write_text("the user's notes")
        (d / "merge.yaml").write_text("merge_method: linear\nmodels:\n  - model: models/a.safetensors\n"
                                      "  - model: models/b.safetensors\n")
        if foreign:
            (d / out).mkdir()
            (d / out / "model.safetensors").write_bytes(b"an older merge")
            (d / out / "thesis.pdf").write_bytes(b"%PDF the user's")
        return ["merge", "merge.yaml", "--out", out, "--overwrite"], {}
    return build


def fit_into(kind: str) -> Build:
    def build(d: Path, _: dict[str, Path]) -> tuple[list[str], dict[str, str]]:
        (d / "data" / "cat").mkdir(parents=True)
        (d / "data" / "cat" / "a.png").write_bytes(b"not read: the folder is refused first")
        out = {"data": "data", "inside": "data/runs/r1", "mine": "mine"}[kind]
        if kind == "mine":
            (d / "mine" / "model").mkdir(parents=True)
            (d / "mine" / "model" / "weights.bin").write_bytes(b"the user's weights")
            (d / "mine" / "report.html").write_text("the user's report")
        return ["fit", "--data", "data", "--backbone", "bundled:efficientnet_lite0", "--out", out], {}
    return build


def export_into(kind: str) -> Build:
    """``export RUN --out`` inside the run, or into a folder of the user's."""
    def build(d: Path, need: dict[str, Path]) -> tuple[list[str], dict[str, str]]:
        if kind == "mine":
            (d / "mine").mkdir()
            (d / "mine" / "deploy.sh").write_text("the user's script")
        return ["export", "../fit_images/run", "--out", "../fit_images/run/ship" if kind == "inside" else "mine"], {}
    return build


def data_into_foreign(d: Path, _: dict[str, Path]) -> tuple[list[str], dict[str, str]]:
    (d / "clips").mkdir()
    (d / "clips" / "interview.wav").write_bytes(b"the user's recording")
    return ["data", "speech", "--words", "one", "--out", "clips"], {}


def resume_foreign(d: Path, _: dict[str, Path]) -> tuple[list[str], dict[str, str]]:
    (d / "photos").mkdir()
    (d / "photos" / "a.jpg").write_bytes(b"the user's photo")
    return ["resume", "photos"], {}


def predict_batch(d: Path, need: dict[str, Path]) -> tuple[list[str], dict[str, str]]:
    (d / "zero.png").write_bytes(b"")
    (d / "notes.png").write_text("not an image")
    bomb_bmp(d / "bomb.bmp")
    good = sorted((need["fit_images"] / "digits" / "digit1").glob("[0-9]*.png"))[0]
    shutil.copyfile(good, d / "good.png")
    return ["predict", str(need["fit_images"] / "run"), "good.png", "zero.png", "notes.png", "bomb.bmp",
            "missing.png"], {}


def predict_damaged(what: str) -> Build:
    """``predict`` on a copy of the image run with its head deleted or its model.json damaged."""
    def build(d: Path, need: dict[str, Path]) -> tuple[list[str], dict[str, str]]:
        shutil.copytree(need["fit_images"] / "run", d / "run")
        model = d / "run" / "model"
        if what == "head":
            (model / "head.safetensors").unlink()
        elif what == "json":
            (model / "model.json").write_text('{"format_version": 2, "kind": ')
        elif what == "types":
            spec = json.loads((model / "model.json").read_text())
            (model / "model.json").write_text(json.dumps({**spec, "classes": "digit0"}))
        elif what == "wav":
            (d / "seven.wav").write_bytes(b"RIFF\x00\x00\x00\x00WAVE")
            return ["predict", "run", "seven.wav"], {}
        good = sorted((need["fit_images"] / "digits" / "digit1").glob("[0-9]*.png"))[0]
        return ["predict", "run", str(good)], {}
    return build


def fit_audio(d: Path, _: dict[str, Path]) -> tuple[list[str], dict[str, str]]:
    """An audio folder (tones: low / high) with every kind of bad WAV."""
    data = d / "tones"
    for k in range(6):
        for label, f0, step in (("low", 300, 20), ("high", 1200, 40)):
            (data / label).mkdir(parents=True, exist_ok=True)
            (data / label / f"{k}.wav").write_bytes(wav_bytes(tone(f0 + step * k, seed=k)))
    good = wav_bytes(tone(320, seed=9))
    bad = {
        "zero.wav": b"",
        "truncated_header.wav": good[:20],
        "no_samples.wav": patched(good[:44], 40, "<I", 0),
        "not_audio.wav": b"this is a text file, not audio\n",
        "bits0.wav": patched(good, 34, "<H", 0),  # 0 bits a sample
        "channels0.wav": patched(good, 22, "<H", 0),
        "silent.wav": wav_bytes([0.0] * 16000),
        "low_rate.wav": wav_bytes(tone(300, rate=2000), rate=2000),
        "long.wav": wav_bytes(tone(300, seconds=31, rate=4000), rate=4000, width=1),
        "nan.wav": float_wav([float("nan"), float("inf")] + tone(310)[2:]),
        # odd but readable: kept
        "pcm24.wav": wav_bytes(tone(330, seed=3), width=3),
        "cut_data.wav": good[: 44 + 4000],  # the data chunk claims more than the file holds
        "huge_size_field.wav": patched(good, 40, "<I", 0xFFFFFFF0),
        "stereo8.wav": wav_bytes([v for v in tone(340, seed=4) for _ in range(8)], channels=8),
    }
    for name, b in bad.items():
        (data / "low" / name).write_bytes(b)
    return (["fit", "--data", "tones", "--modality", "audio", "--backbone", "bundled:speech_embedding", "--out",
             "run", "--folds", "2", "--set", "fuse.enabled=false", "--quiet"], {})


def predict_audio(d: Path, need: dict[str, Path]) -> tuple[list[str], dict[str, str]]:
    """``predict`` on the audio run: a good clip among an hour of silence and broken files."""
    (d / "good.wav").write_bytes(wav_bytes(tone(1250, seed=7)))
    (d / "zero.wav").write_bytes(b"")
    (d / "truncated_header.wav").write_bytes(wav_bytes(tone(300))[:20])
    (d / "silent.wav").write_bytes(wav_bytes([0.0] * 16000))
    with (d / "silent_hour.wav").open("wb") as f:  # 8-bit 4 kHz: 14 MB, written in pieces
        head = wav_bytes([], rate=4000, width=1)
        n = 4000 * 3600
        f.write(patched(patched(head, 4, "<I", 36 + n), 40, "<I", n))
        for _ in range(60):
            f.write(b"\x80" * (n // 60))
    return ["predict", str(need["fit_audio"] / "run"), "good.wav", "silent_hour.wav", "zero.wav",
            "truncated_header.wav", "silent.wav"], {}


BOMB_CONFIG = "name: bomb\nbackbones: [tfidf]\ndata:\n  source: folder\n  path: data\n  options:\n  " + \
    "\n  ".join(alias_bomb()) + "\n"
TYPED_BOMB = "name: bomb\nbackbones: [tfidf]\ndata: {source: folder, path: data}\nseed:\n  " + \
    "\n  ".join(alias_bomb()) + "\n"

INVOCATIONS = [
    Invocation("fit_images", fit_images, 0, outputs=("run",), timeout=600, max_rss_mb=3000),
    Invocation("fit_text", fit_text, 0, outputs=("run",), timeout=300, max_rss_mb=2000),
    Invocation("fit_audio", fit_audio, 0, outputs=("run",), timeout=300, max_rss_mb=2000),
    Invocation("predict_audio", predict_audio, 1, needs=("fit_audio",), max_rss_mb=2000),
    Invocation("config_bomb_options", config(BOMB_CONFIG), 2),
    Invocation("config_bomb_typed", config(TYPED_BOMB), 2),
    Invocation("config_deep", config("name: deep\nbackbones: [tfidf]\nseed: " + "[" * 5000 + "]" * 5000 + "\n"), 2),
    Invocation("config_recursive", config("name: r\nbackbones: [tfidf]\nseed: &a [1, *a]\n"), 2),
    Invocation("config_huge_value", config("name: h\nbackbones: [tfidf]\nseed: " + "9" * 100_000 + "z\n"), 2),
    Invocation("config_typo", config("name: t\nbackbones: [tfidf]\ntrian: {}\n"), 2),
    Invocation("config_bad_yaml", config("name: [unclosed\n"), 2),
    Invocation("config_bomb_set", config("name: s\nbackbones: [tfidf]\ndata: {source: folder, path: data}\n",
                                         "--set", "seed={a: &a [1,1,1,1,1,1,1,1,1,1], b: &b [" + ",".join(["*a"] * 50)
                                         + "], c: [" + ",".join(["*b"] * 50) + "]}"), 2),
    Invocation("fit_misspelt_option", misspelt_option, 2),
    Invocation("merge_overlap", merge_with({"w": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]},
                                            "b": {"dtype": "F32", "shape": [1], "data_offsets": [4, 8]}},
                                           f32(1, 2)), 2),
    Invocation("merge_past_eof", merge_with({"w": {"dtype": "F32", "shape": [10_000_000_000],
                                                   "data_offsets": [0, 40_000_000_000]},
                                             "b": {"dtype": "F32", "shape": [1], "data_offsets": [0, 4]}},
                                            f32(1)), 2, max_rss_mb=1200),
    Invocation("merge_size_vs_shape", merge_with({"w": {"dtype": "F32", "shape": [3], "data_offsets": [0, 8]},
                                                  "b": {"dtype": "F32", "shape": [1], "data_offsets": [8, 12]}},
                                                 f32(1, 2, 3)), 2),
    Invocation("merge_not_object", merge_with([1, 2, 3]), 2),
    Invocation("merge_missing_key", merge_with({"w": {"dtype": "F32", "shape": [2]}}, f32(1, 2)), 2),
    Invocation("merge_negative_range", merge_with({"w": {"dtype": "F32", "shape": [1], "data_offsets": [8, 4]}},
                                                  f32(1, 2, 3)), 2),
    Invocation("merge_header_length", merge_with({}, b"", length=1 << 40), 2, max_rss_mb=1200),
    Invocation("merge_shape_mismatch", merge_with({"w": {"dtype": "F32", "shape": [1, 2], "data_offsets": [0, 8]},
                                                   "b": {"dtype": "F32", "shape": [1], "data_offsets": [8, 12]}},
                                                  f32(1, 2, 3)), 2),
    Invocation("merge_pickle", merge_pickle, 2),
    Invocation("merge_out_holds_inputs", merge_overwrite("models"), 2),
    Invocation("merge_out_is_parent", merge_overwrite("."), 2),
    Invocation("merge_out_foreign_files", merge_overwrite("old", foreign=True), 2),
    Invocation("fit_out_is_data", fit_into("data"), 2),
    Invocation("fit_out_inside_data", fit_into("inside"), 2),
    Invocation("fit_out_foreign_folder", fit_into("mine"), 2),
    Invocation("resume_foreign_folder", resume_foreign, 2),
    Invocation("export_out_inside_run", export_into("inside"), 2, needs=("fit_images",)),
    Invocation("export_out_foreign", export_into("mine"), 2, needs=("fit_images",)),
    Invocation("data_out_foreign", data_into_foreign, 2),
    Invocation("predict_batch", predict_batch, 1, needs=("fit_images",), max_rss_mb=2000),
    Invocation("predict_no_head", predict_damaged("head"), 2, outputs=("run",), needs=("fit_images",),
               max_rss_mb=2000),
    Invocation("predict_bad_json", predict_damaged("json"), 2, outputs=("run",), needs=("fit_images",)),
    Invocation("predict_bad_types", predict_damaged("types"), 2, outputs=("run",), needs=("fit_images",)),
    Invocation("predict_wrong_modality", predict_damaged("wav"), 2, outputs=("run",), needs=("fit_images",)),
]

FIX = "re-save it with safetensors.torch.save_file or download it again"
BOMB = "its aliases (*name) expand to more than 20000 values (an alias bomb?); write the values out or use fewer aliases"
NOT_RUN = "give a new or empty folder (--out), so that none of its files are replaced"

CASES = [
    # data source (folder) and manifest (external test set): quarantined with the reason, run finishes
    Case("image_zero_bytes", "data source", "zero-byte image", "quarantined", "empty file (0 bytes)",
         "fit_images", item="zero.png"),
    Case("image_text_file", "data source", "a text file named .png", "quarantined",
         "not an image: the file holds text", "fit_images", item="notes.png"),
    Case("image_decompression_bomb", "data source", "a 54-byte BMP claiming 20000 x 20000 pixels",
         "quarantined", "too large to decode safely: Image size (400000000 pixels) exceeds limit of "
         "178956970 pixels, could be decompression bomb DOS attack.", "fit_images", item="bomb.bmp"),
    Case("image_truncated", "data source", "a PNG cut in half", "quarantined", "truncated image: ...",
         "fit_images", item="truncated.png"),
    Case("image_corrupt_jpeg", "data source", "JPEG magic then garbage", "quarantined", "corrupt image...",
         "fit_images", item="corrupt.jpg"),
    Case("image_empty_class", "data source", "an empty class folder", "quarantined",
         "empty class folder: class 'empty_class' has no files; class dropped", "fit_images", item="empty_class"),
    Case("image_symlink_loop", "data source", "two symlinks pointing at each other", "kept",
         "skipped: not a file (no hang, not an item)", "fit_images", item="loop_a.png"),
    Case("cache_unwritable", "feature cache", "the cache folder cannot be created or written", "warning",
         "warning: feature cache {d}/afile/cache: cannot write to it (Not a directory); computing features "
         "in memory for this run (set TRANSFUSE_FEATURE_CACHE to a writable folder to keep them)",
         "fit_images", new=True),
    Case("outside_symlink", "data source", "a symlink out of the data folder", "listed", "{d}/elsewhere/far.png",
         "fit_images", new=True, item="linked_out.png"),
    Case("outside_manifest_parent", "manifest", "a manifest row with ../", "listed", "{d}/elsewhere/near.png",
         "fit_images", new=True, item="near.png"),
    Case("outside_manifest_absolute", "manifest", "a manifest row with an absolute path", "listed",
         "{d}/elsewhere/abs.png", "fit_images", new=True, item="abs.png"),
    Case("manifest_missing_file", "manifest", "a row naming a file that does not exist", "quarantined",
         "file not found (row 11 of test.csv)", "fit_images", item="missing.png"),
    Case("manifest_giant_line", "manifest", "a 10 MB path field (over csv's 128 KiB field limit)",
         "quarantined", "path field has 10000016 characters (limit 4096); check the row's columns",
         "fit_images", new=True, item="test.csv:12"),
    # audio data source: quarantined with the reason, odd but readable files kept
    Case("audio_zero_bytes", "audio data source", "a zero-byte WAV", "quarantined", "zero-length file (0 bytes)",
         "fit_audio", item="zero.wav"),
    Case("audio_truncated_header", "audio data source", "a WAV cut inside its header (20 bytes)", "quarantined",
         "corrupt or unsupported audio header (Error opening '.../tones/low/truncated_header.wav': Error in "
         "WAV/W64/RF64 file. Malformed 'fmt ' chunk.)", "fit_audio", item="truncated_header.wav"),
    Case("audio_no_samples", "audio data source", "a WAV header with an empty data chunk", "quarantined",
         "zero-length audio (no samples)", "fit_audio", item="no_samples.wav"),
    Case("audio_text_file", "audio data source", "a text file named .wav", "quarantined",
         "corrupt or unsupported audio header (Error opening '.../tones/low/not_audio.wav': Format not recognised.)",
         "fit_audio", item="not_audio.wav"),
    Case("audio_zero_sample_width", "audio data source", "0 bits a sample in the header", "quarantined",
         "corrupt or unsupported audio header (Error opening '.../tones/low/bits0.wav': File contains data in an "
         "unimplemented format.)", "fit_audio", item="bits0.wav"),
    Case("audio_zero_channels", "audio data source", "0 channels in the header", "quarantined",
         "corrupt or unsupported audio header (Error opening '.../tones/low/channels0.wav': Channel count is zero.)",
         "fit_audio", item="channels0.wav"),
    Case("audio_silent", "audio data source", "one second of digital silence", "quarantined",
         "all-silent (peak 0.0e+00 <= silence_threshold=0.0001)", "fit_audio", item="silent.wav"),
    Case("audio_low_rate", "audio data source", "a 2 kHz sample rate", "quarantined",
         "sample rate 2000 Hz is below min_sample_rate=4000", "fit_audio", item="low_rate.wav"),
    Case("audio_over_long", "audio data source", "a 31 s clip (limit 30 s)", "quarantined",
         "over-long clip: 31.0 s > max_seconds=30", "fit_audio", item="long.wav"),
    Case("audio_nan_samples", "audio data source", "a float WAV holding NaN and inf", "quarantined",
         "NaN/inf samples (2 of 8000)", "fit_audio", item="nan.wav"),
    Case("audio_24_bit", "audio data source", "24-bit samples (an unusual sample width)", "kept",
         "decoded and used", "fit_audio", item="pcm24.wav"),
    Case("audio_cut_data", "audio data source", "a data chunk that claims more bytes than the file holds",
         "kept", "the samples present are used", "fit_audio", item="cut_data.wav"),
    Case("audio_huge_size_field", "audio data source", "a data chunk size of 4 GB in a 16 KB file", "kept",
         "the samples present are used (no 4 GB allocation)", "fit_audio", item="huge_size_field.wav"),
    Case("audio_eight_channels", "audio data source", "8 channels", "kept", "mixed down and used", "fit_audio",
         item="stereo8.wav"),
    # text table
    Case("text_long_field", "text table", "a 300 KB text field (over csv's 128 KiB limit)", "kept",
         "truncated to max_chars, not dropped", "fit_text", new=True, item="texts.csv:42"),
    Case("text_giant_label", "text table", "a 10 MB label field", "quarantined",
         "label field has 10000000 characters (limit 1000); check the row's columns", "fit_text", new=True,
         item="texts.csv:43"),
    Case("text_empty", "text table", "an empty text", "quarantined", "empty text", "fit_text", item="texts.csv:44"),
    Case("text_bad_utf8", "text table", "an invalid UTF-8 byte", "quarantined",
         "invalid UTF-8 byte 0xe9 at character 3", "fit_text", item="texts.csv:45"),
    # configs
    Case("config_alias_bomb_options", "config", "a 0.5 KB alias bomb (9 levels) in data.options", "error",
         f"config file 'exp.yaml': {BOMB}", "config_bomb_options", new=True),
    Case("config_alias_bomb_typed_key", "config", "an alias bomb on a wrongly typed key", "error",
         f"config file 'exp.yaml': {BOMB}", "config_bomb_typed", new=True),
    Case("config_alias_bomb_set", "config", "an alias bomb in a --set value", "error",
         f"--set seed: {BOMB}", "config_bomb_set", new=True),
    Case("config_deep_nesting", "config", "5,000 levels of nesting", "error",
         "config file 'exp.yaml' line 3: nested more than 50 levels deep; a config needs a few levels, "
         "flatten the value", "config_deep", new=True),
    Case("config_recursive_alias", "config", "an alias inside its own anchor", "error",
         "config file 'exp.yaml': an alias refers to a collection that contains it (recursive); write the "
         "value out instead of the alias", "config_recursive", new=True),
    Case("config_huge_value", "config", "a 100 KB value on a number key", "error",
         "exp.yaml: key 'seed' has invalid value '999999999999999999999999999...999999999999999999999999999z': "
         "Unable to parse input string as an integer, exceeded maximum size", "config_huge_value"),
    Case("config_unknown_key", "config", "a misspelt top-level key", "error",
         "exp.yaml: unknown key 'trian'; did you mean 'train'? valid keys here: name, seed, data, split, "
         "preprocess, augment, backbones, adapt, train, evaluate, fuse, search, calibration, export, output, budget",
         "config_typo"),
    Case("config_bad_yaml", "config", "unclosed bracket", "error", "config file 'exp.yaml' line 2: not valid "
         "YAML (...", "config_bad_yaml"),
    Case("data_option_typo", "config", "--set data.options.valdate=false", "error",
         "data.options.valdate: data source 'folder' has no such option; did you mean 'validate'? valid "
         "options: validate", "fit_misspelt_option", new=True),
    # merge inputs
    Case("safetensors_overlap", "merge input", "two tensors' data_offsets overlap", "error",
         f"{{d}}/b.safetensors: tensor 'b' overlaps tensor 'w' (their data_offsets share bytes); {FIX}",
         "merge_overlap", new=True),
    Case("safetensors_past_eof", "merge input", "offsets 40 GB past the end of a 93-byte file", "error",
         f"{{d}}/b.safetensors: the bytes of tensor 'w' end at byte 40000000150 but the file has only 154 "
         f"bytes (truncated); {FIX}", "merge_past_eof", new=True),
    Case("safetensors_size_vs_shape", "merge input", "byte range disagrees with dtype x shape", "error",
         f"{{d}}/b.safetensors: tensor 'w' holds 8 bytes but dtype F32 x shape [3] needs 12; {FIX}",
         "merge_size_vs_shape", new=True),
    Case("safetensors_not_object", "merge input", "the header is a JSON list", "error",
         f"{{d}}/b.safetensors: not a safetensors file (the header is a JSON list, not an object); {FIX}",
         "merge_not_object", new=True),
    Case("safetensors_missing_key", "merge input", "an entry without data_offsets", "error",
         f"{{d}}/b.safetensors: tensor 'w' has no data_offsets in the header; {FIX}", "merge_missing_key",
         new=True),
    Case("safetensors_negative_range", "merge input", "data_offsets [8, 4]", "error",
         f"{{d}}/b.safetensors: tensor 'w' has invalid data_offsets (need [begin, end] with 0 <= begin <= "
         f"end); {FIX}", "merge_negative_range", new=True),
    Case("safetensors_header_length", "merge input", "a header length of 1 TB", "error",
         f"{{d}}/b.safetensors: not a safetensors file (header length 1099511627776 bytes, file 10 bytes, "
         f"limit 100000000); {FIX}", "merge_header_length", new=True),
    Case("safetensors_shape_mismatch", "merge input", "same names, different shapes", "error",
         "...w [2] vs [1, 2]...", "merge_shape_mismatch"),
    Case("pickle_checkpoint", "merge input", "a pickle that would run a shell command", "error",
         "{d}/b.pt: pickle checkpoints are refused (loading them can execute code); convert it to safetensors "
         "(safetensors.torch.save_file(torch.load(p, weights_only=True), out))", "merge_pickle"),
    # output folders
    Case("merge_overwrite_holds_inputs", "run folder", "merge --out DIR --overwrite, DIR holds the inputs",
         "refused", "--out models holds the merge input {d}/models/a.safetensors; writing there would replace "
         "it: give an output folder outside the inputs", "merge_out_holds_inputs", new=True),
    Case("merge_overwrite_parent", "run folder", "merge --out . --overwrite, the inputs' parent",
         "refused", "--out . holds the merge input merge.yaml; writing there would replace it: give an "
         "output folder outside the inputs", "merge_out_is_parent", new=True),
    Case("merge_overwrite_foreign", "run folder", "merge --overwrite on a folder with the user's file",
         "refused", "--out old holds 'model.safetensors', 'thesis.pdf', which transfuse merge did not write; --overwrite only "
         "replaces a previous merge's output: move them or give another folder", "merge_out_foreign_files",
         new=True),
    Case("fit_out_foreign", "run folder", "fit --out an existing folder of the user's", "refused",
         f"output folder 'mine' exists and is not a transfuse run folder (it holds 'model' and no "
         f"config.yaml); {NOT_RUN}", "fit_out_foreign_folder", new=True),
    Case("fit_out_is_data", "run folder", "fit --out the data folder", "refused",
         # the data path is stored absolute (run folders work from any directory): the message names it so
         "...fit_out_is_data/data' (data.path); its files would be read as data: "
         "give an output folder outside the data (--out)...", "fit_out_is_data", new=True),
    Case("fit_out_inside_data", "run folder", "fit --out a folder inside the data folder", "refused",
         "...fit_out_inside_data/data' (data.path); its files would be "
         "read as data: give an output folder outside the data (--out)...", "fit_out_inside_data", new=True),
    Case("export_out_inside_run", "run folder", "export --out a folder inside the run", "refused",
         "--out ../fit_images/run/ship is inside the input folder ../fit_images/run of transfuse export; its "
         "files would mix with the input's: give an output folder outside the inputs", "export_out_inside_run",
         new=True),
    Case("export_out_foreign", "run folder", "export --out a folder holding the user's file", "refused",
         "--out mine exists and is not empty; give a new or empty folder, so that none of its files are replaced",
         "export_out_foreign", new=True),
    Case("data_out_foreign", "run folder", "data speech --out a folder holding the user's recording", "refused",
         "--out clips exists and is not empty; give a new or empty folder, so that none of its files are replaced",
         "data_out_foreign", new=True),
    Case("resume_foreign", "run folder", "resume on a folder that is not a run", "error",
         "'photos' is not a transfuse run folder (no config.yaml); give the folder a 'transfuse run' or "
         "'transfuse fit' wrote", "resume_foreign_folder"),
    # predict inputs
    Case("predict_zero_bytes", "predict input", "a zero-byte image in a batch", "record",
         "empty file (0 bytes)", "predict_batch", new=True, item="zero.png"),
    Case("predict_not_image", "predict input", "a text file named .png in a batch", "record",
         "not an image: the file holds text", "predict_batch", new=True, item="notes.png"),
    Case("predict_bomb", "predict input", "a decompression bomb in a batch", "record",
         "too large to decode safely: Image size (400000000 pixels) exceeds limit of 178956970 pixels, could "
         "be decompression bomb DOS attack.", "predict_batch", new=True, item="bomb.bmp"),
    Case("predict_missing", "predict input", "a file that does not exist in a batch", "record",
         "file not found", "predict_batch", new=True, item="missing.png"),
    Case("predict_audio_silent_hour", "predict input", "a silent one-hour WAV in a batch", "record",
         "over-long clip: 3600.0 s > max_seconds=30", "predict_audio", new=True, item="silent_hour.wav"),
    Case("predict_audio_zero_bytes", "predict input", "a zero-byte WAV in a batch", "record",
         "zero-length file (0 bytes)", "predict_audio", new=True, item="zero.wav"),
    Case("predict_audio_truncated_header", "predict input", "a WAV cut inside its header in a batch", "record",
         "corrupt or unsupported audio header (Error opening 'truncated_header.wav': Error in WAV/W64/RF64 "
         "file. Malformed 'fmt ' chunk.)", "predict_audio", new=True, item="truncated_header.wav"),
    Case("predict_audio_silent", "predict input", "one second of digital silence in a batch", "record",
         "all-silent (peak 0.0e+00 <= silence_threshold=0.0001)", "predict_audio", new=True, item="silent.wav"),
    Case("predict_deleted_head", "run folder", "head.safetensors deleted", "error",
         "'run/model/head.safetensors' is missing; rerun the candidate ('transfuse resume' after deleting its "
         "folder) or restore the file", "predict_no_head", new=True),
    Case("predict_model_json_not_json", "run folder", "model.json cut short", "error",
         "'run/model/model.json' is not readable JSON (JSONDecodeError); rerun the candidate",
         "predict_bad_json", new=True),
    Case("predict_model_json_types", "run folder", "model.json with a wrongly typed key", "error",
         "'run/model/model.json': key 'classes': Input should be a valid list; the file is damaged, rerun the "
         "candidate", "predict_bad_types"),
    Case("predict_wrong_modality", "predict input", "a .wav given to an image model", "error",
         "input 'seven.wav' is an audio file but this model takes image inputs; give image files (png, jpg, ...)",
         "predict_wrong_modality"),
]


# -- the table in docs/reliability.md -------------------------------------------------------------

DOC = TESTS.parent / "docs" / "reliability.md"
BEGIN, END = "<!-- corpus table: generated by `python tests/faults/corpus.py`; do not edit -->", "<!-- end of corpus table -->"
OUTCOMES = {"error": "one-line error, exit 2", "refused": "refused: one-line error, exit 2, nothing written",
            "quarantined": "quarantined with the reason", "record": "error record, the other inputs answered",
            "warning": "one warning, the run goes on", "kept": "the run finishes; used (or skipped) as stated",
            "listed": "used, listed in the report"}


def corpus_table() -> str:
    """The corpus as a Markdown table: case, input path, fault, outcome, the expected message."""
    def cell(text: str) -> str:
        text = text.replace("{d}/", "").replace("|", "\\|")
        return text if len(text) <= 120 else text[:117] + "..."

    rows = ["| case | input | fault | outcome | expected | issue 13 |", "|---|---|---|---|---|---|"]
    rows += [f"| `{c.name}` | {c.path} | {cell(c.fault)} | {OUTCOMES[c.outcome]} | {cell(c.expect)} | "
             f"{'new' if c.new else ''} |" for c in CASES]
    return "\n".join([BEGIN, f"{len(CASES)} cases, {sum(c.new for c in CASES)} of them faults of issue 13.", "",
                      *rows, END])


def doc_with_table(doc: str) -> str:
    """``doc`` with the text between the table's markers replaced by :func:`corpus_table`."""
    head, _, rest = doc.partition(BEGIN)
    _, _, tail = rest.partition(END)
    return head + corpus_table() + tail


if __name__ == "__main__":
    DOC.write_text(doc_with_table(DOC.read_text()))
    print(f"{DOC}: {len(CASES)} cases")
