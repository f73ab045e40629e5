"""Image data sources: validation/quarantine, odd modes, manifests, IDX, sample sets."""

from __future__ import annotations

import gzip
import io
import json
import struct
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from transfuse.data import images, samples
from transfuse.data.registry import DATA_SOURCES, load_dataset
from transfuse.errors import UserError


def _png_bytes(img: Image.Image) -> bytes:
    buf = io.BytesIO()
    img.save(buf, "PNG")
    return buf.getvalue()


def _noise(h: int, w: int, seed: int = 0) -> Image.Image:
    return Image.fromarray(np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8))


# 16-bit values and the 8-bit values they must become: round(v / 257), computed independently
SIXTEEN = np.array([[0, 32896, 65535, 1000, 300]], dtype=np.uint16)
PALETTE = [(255, 0, 0), (0, 255, 0), (0, 0, 255), (10, 20, 30)]


@pytest.fixture(scope="module")
def messy(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("messy")
    cats, odd, empty, allbad = (root / n for n in ("cats", "odd", "empty_class", "allbad"))
    for d in (cats, odd, empty, allbad):
        d.mkdir()
    _noise(16, 16, 1).save(cats / "good.png")
    _noise(32, 24, 2).save(cats / "good.jpg", quality=90)
    jpeg = io.BytesIO()
    _noise(64, 64, 3).save(jpeg, "JPEG")
    j = jpeg.getvalue()
    sos = j.index(b"\xff\xda") + 14  # start of the entropy-coded scan data
    rnd = np.random.default_rng(0).integers(0, 256, len(j) - sos, dtype=np.uint8).tobytes()
    (cats / "corrupt.jpg").write_bytes(j[:sos] + rnd)  # valid header, garbage scan data
    (cats / "bad_header.jpg").write_bytes(j[:4] + b"\x00" * 64)  # JPEG magic, then nonsense
    p = _png_bytes(_noise(64, 64, 4))
    (cats / "truncated.png").write_bytes(p[: len(p) // 2])
    (cats / "notes.png").write_text("this is not an image\n")
    (cats / "zero.png").write_bytes(b"")
    (cats / ".DS_Store").write_bytes(b"\x00\x01junk")  # hidden: skipped silently
    # odd modes, all valid
    Image.fromarray(SIXTEEN).save(odd / "sixteen.png")
    pal = Image.new("P", (4, 1))
    pal.putpalette([v for rgb in PALETTE for v in rgb])
    pal.putdata([0, 1, 2, 3])
    pal.save(odd / "palette.png")
    palt = pal.copy()
    palt.save(odd / "palette_transparent.png", transparency=1)
    Image.new("RGBA", (2, 2), (255, 0, 0, 128)).save(odd / "rgba.png")
    Image.new("LA", (2, 2), (0, 0)).save(odd / "la.png")
    Image.new("L", (3, 3), 77).save(odd / "grey.png")
    Image.new("CMYK", (8, 8), (0, 0, 0, 0)).save(odd / "cmyk.jpg")
    Image.new("1", (3, 3), 1).save(odd / "bilevel.png")
    (allbad / "broken.png").write_text("nope")
    _noise(4, 4).save(root / "stray.png")
    return root


@pytest.fixture(scope="module")
def messy_ds(messy):
    return load_dataset("folder", str(messy))


def _reasons(ds) -> dict[str, str]:
    return {q.path: q.reason for q in ds.quarantined}


def test_sources_registered():
    assert {"folder", "manifest", "fashion_mnist", "emoji"} <= set(DATA_SOURCES.names())


def test_folder_quarantines_each_bad_input_with_its_reason(messy, messy_ds):
    r = _reasons(messy_ds)
    assert r[str(messy / "cats" / "corrupt.jpg")].startswith(("corrupt image", "truncated image"))
    assert (
        r[str(messy / "cats" / "bad_header.jpg")]
        == "corrupt image: a JPEG file whose header cannot be parsed"
    )
    assert r[str(messy / "cats" / "truncated.png")].startswith("truncated image")
    assert r[str(messy / "cats" / "notes.png")] == "not an image: the file holds text"
    assert r[str(messy / "cats" / "zero.png")] == "empty file (0 bytes)"
    assert r[str(messy / "empty_class")].startswith("empty class folder")
    assert r[str(messy / "allbad" / "broken.png")] == "not an image: the file holds text"
    assert "has no valid images (1 quarantined); class dropped" in r[str(messy / "allbad")]
    assert r[str(messy / "stray.png")].startswith("file outside a class folder")
    assert len(r) == 9  # nothing else: odd modes and the hidden file are not quarantined


def test_folder_keeps_valid_files_and_classes(messy_ds):
    assert messy_ds.classes == ["cats", "odd"]
    assert sorted(messy_ds.ids) == sorted(
        ["cats/good.png", "cats/good.jpg"]
        + [f"odd/{n}" for n in ("sixteen.png", "palette.png", "palette_transparent.png", "rgba.png",
                                "la.png", "grey.png", "cmyk.jpg", "bilevel.png")]
    )  # fmt: skip
    for i, id_ in enumerate(messy_ds.ids):
        assert messy_ds.classes[messy_ds.labels[i]] == id_.split("/")[0]
        img = messy_ds.load(i)
        assert img.mode == "RGB"


def _load(ds, id_: str) -> np.ndarray:
    return np.asarray(ds.load(ds.ids.index(id_)))


def test_sixteen_bit_is_scaled_not_clipped(messy_ds):
    got = _load(messy_ds, "odd/sixteen.png")
    expected = np.rint(SIXTEEN.astype(np.float64) / 257.0).astype(np.uint8)  # [0, 128, 255, 4, 1]
    assert got.shape == (1, 5, 3)
    np.testing.assert_array_equal(got[..., 0], expected)
    np.testing.assert_array_equal(got[..., 0], got[..., 2])


def test_palette_rgba_la_grey_converted(messy_ds):
    np.testing.assert_array_equal(_load(messy_ds, "odd/palette.png")[0], np.array(PALETTE, dtype=np.uint8))
    # palette index 1 is transparent -> white
    expected = np.array([PALETTE[0], (255, 255, 255), PALETTE[2], PALETTE[3]], dtype=np.uint8)
    np.testing.assert_array_equal(_load(messy_ds, "odd/palette_transparent.png")[0], expected)
    # red at alpha 128/255 over white: c*a + 255*(1-a)
    a = 128 / 255
    want = np.array([255 * a + 255 * (1 - a), 0 * a + 255 * (1 - a), 0 * a + 255 * (1 - a)])
    assert np.abs(_load(messy_ds, "odd/rgba.png")[0, 0] - want).max() <= 1.0
    np.testing.assert_array_equal(_load(messy_ds, "odd/la.png"), np.full((2, 2, 3), 255, np.uint8))
    np.testing.assert_array_equal(_load(messy_ds, "odd/grey.png"), np.full((3, 3, 3), 77, np.uint8))
    np.testing.assert_array_equal(_load(messy_ds, "odd/bilevel.png"), np.full((3, 3, 3), 255, np.uint8))


def test_to_rgb_mode_i_and_f():
    eight = Image.fromarray(np.array([[0, 100, 255]], dtype=np.int32), "I")
    np.testing.assert_array_equal(np.asarray(images.to_rgb(eight))[0, :, 0], [0, 100, 255])
    sixteen = Image.fromarray(np.array([[0, 25700, 65535]], dtype=np.int32), "I")
    np.testing.assert_array_equal(np.asarray(images.to_rgb(sixteen))[0, :, 0], [0, 100, 255])
    unit = Image.fromarray(np.array([[0.0, 0.5, 1.0]], dtype=np.float32), "F")
    np.testing.assert_array_equal(np.asarray(images.to_rgb(unit))[0, :, 0], [0, 128, 255])


def test_folder_errors(tmp_path):
    with pytest.raises(UserError, match="is not a folder"):
        load_dataset("folder", str(tmp_path / "nope"))
    with pytest.raises(UserError, match="holds no image files"):
        load_dataset("folder", str(tmp_path))
    with pytest.raises(UserError, match="data.path is missing"):
        load_dataset("folder", None)


def test_hashes_distinguish_files(messy_ds):
    hashes = messy_ds.item_hashes()
    assert len(set(hashes)) == len(hashes)


# --------------------------------------------------------------------------------- manifest


@pytest.fixture
def manifest_dir(tmp_path) -> Path:
    (tmp_path / "imgs").mkdir()
    for i, color in enumerate([(255, 0, 0), (0, 255, 0), (0, 0, 255)]):
        Image.new("RGB", (4, 4), color).save(tmp_path / "imgs" / f"{i}.png")
    (tmp_path / "imgs" / "bad.png").write_text("text")
    return tmp_path


def test_manifest_csv(manifest_dir):
    absolute = str(manifest_dir / "imgs" / "2.png")
    (manifest_dir / "m.csv").write_text(
        "path,label\nimgs/0.png,red\nimgs/1.png,green\n" + absolute + ",blue\n"
        "imgs/missing.png,red\nimgs/bad.png,red\nimgs/0.png,\n"
    )
    ds = load_dataset("manifest", str(manifest_dir / "m.csv"))
    assert ds.classes == ["blue", "green", "red"]
    assert ds.ids == ["imgs/0.png", "imgs/1.png", absolute]
    assert [ds.classes[k] for k in ds.labels] == ["red", "green", "blue"]
    assert tuple(np.asarray(ds.load(2))[0, 0]) == (0, 0, 255)
    r = _reasons(ds)
    assert r[str(manifest_dir / "imgs" / "missing.png")] == "file not found (row 5 of m.csv)"
    assert r[str(manifest_dir / "imgs" / "bad.png")] == "not an image: the file holds text"
    assert r[str(manifest_dir / "imgs" / "0.png")] == "row 7 of m.csv has an empty 'label'"


def test_manifest_jsonl_custom_columns(manifest_dir):
    rows = [{"file": "imgs/0.png", "cls": "warm"}, {"file": "imgs/2.png", "cls": "cold"}]
    (manifest_dir / "m.jsonl").write_text("\n".join(json.dumps(r) for r in rows) + "\n\n")
    ds = load_dataset("manifest", str(manifest_dir / "m.jsonl"), path_column="file", label_column="cls")
    assert ds.classes == ["cold", "warm"] and ds.ids == ["imgs/0.png", "imgs/2.png"]
    assert tuple(np.asarray(ds.load(0))[0, 0]) == (255, 0, 0)
    with pytest.raises(
        UserError, match=r"has no column 'path'; its columns are 'file', 'cls'; set data.options.path_column"
    ):
        load_dataset("manifest", str(manifest_dir / "m.jsonl"))


def test_manifest_errors(manifest_dir):
    (manifest_dir / "m.txt").write_text("x")
    with pytest.raises(UserError, match="format '.txt' for m.txt is not supported; valid: csv, jsonl"):
        load_dataset("manifest", str(manifest_dir / "m.txt"))
    (manifest_dir / "b.jsonl").write_text('{"path": "imgs/0.png", "label": "a"}\n{oops\n')
    with pytest.raises(UserError, match=r"b.jsonl:2: not valid JSON"):
        load_dataset("manifest", str(manifest_dir / "b.jsonl"))


# --------------------------------------------------------------------------------- IDX


def _write_idx(path: Path, arr: np.ndarray, gz: bool = True) -> None:
    header = bytes([0, 0, 0x08, arr.ndim]) + struct.pack(f">{arr.ndim}I", *arr.shape)
    data = header + arr.astype(np.uint8).tobytes()
    path.write_bytes(gzip.compress(data) if gz else data)


@pytest.fixture
def tiny_fmnist(tmp_path) -> tuple[Path, np.ndarray, np.ndarray]:
    rng = np.random.default_rng(0)
    x = rng.integers(0, 256, (40, 28, 28), dtype=np.uint8)
    y = np.tile(np.arange(10, dtype=np.uint8), 4)
    _write_idx(tmp_path / "train-images-idx3-ubyte.gz", x)
    _write_idx(tmp_path / "train-labels-idx1-ubyte.gz", y)
    _write_idx(tmp_path / "t10k-images-idx3-ubyte", x[:10], gz=False)
    _write_idx(tmp_path / "t10k-labels-idx1-ubyte", y[:10], gz=False)
    return tmp_path, x, y


def test_read_idx_roundtrip_and_corruption(tmp_path):
    arr = np.arange(24, dtype=np.uint8).reshape(2, 3, 4)
    _write_idx(tmp_path / "a.gz", arr)
    np.testing.assert_array_equal(images.read_idx(tmp_path / "a.gz"), arr)
    (tmp_path / "b").write_bytes((tmp_path / "a.gz").read_bytes())
    with pytest.raises(UserError, match="not an IDX file"):
        images.read_idx(tmp_path / "b")
    _write_idx(tmp_path / "c", arr, gz=False)
    (tmp_path / "c").write_bytes((tmp_path / "c").read_bytes()[:-5])
    with pytest.raises(UserError, match=r"truncated or corrupt \(header says \(2, 3, 4\)\)"):
        images.read_idx(tmp_path / "c")


def test_fashion_mnist_subset_classes_and_ids(tiny_fmnist):
    d, x, y = tiny_fmnist
    ds = load_dataset("fashion_mnist", str(d), max_per_class=2, seed=3, classes=["bag", "Trouser"])
    assert ds.classes == ["Trouser", "Bag"]  # canonical order, case-insensitive names
    assert len(ds) == 4 and sorted(ds.labels.tolist()) == [0, 0, 1, 1]
    for i, id_ in enumerate(ds.ids):
        split, k = id_.split(":")
        assert split == "train"
        np.testing.assert_array_equal(ds.items[i], x[int(k)])
        assert images.FASHION_MNIST_CLASSES[y[int(k)]] == ds.classes[ds.labels[i]]
        np.testing.assert_array_equal(np.asarray(ds.load(i))[..., 1], x[int(k)])
    again = load_dataset("fashion_mnist", str(d), max_per_class=2, seed=3, classes=["bag", "Trouser"])
    assert again.ids == ds.ids
    test = load_dataset("fashion_mnist", str(d), split="test")
    assert len(test) == 10 and test.ids[0] == "test:0"


def test_fashion_mnist_errors(tiny_fmnist, tmp_path):
    d, _, _ = tiny_fmnist
    with pytest.raises(UserError, match="unknown class 'Hat'; valid: T-shirt/top, Trouser"):
        load_dataset("fashion_mnist", str(d), classes=["Hat"])
    with pytest.raises(UserError, match="split 'val' is not valid; valid: train, test"):
        load_dataset("fashion_mnist", str(d), split="val")
    with pytest.raises(UserError, match=r"install them with `sudo apt-get install -y dataset-fashion-mnist`"):
        load_dataset("fashion_mnist", str(tmp_path / "empty"))


def test_emoji_missing_names_install_command(tmp_path, monkeypatch):
    monkeypatch.setenv("TRANSFUSE_HOME", str(tmp_path))
    cmd = f"npm install --prefix {tmp_path / 'npm'} emoji-datasource-google@16.0.0"
    with pytest.raises(UserError, match=f"install it with `{cmd}`"):
        load_dataset("emoji")
    with pytest.raises(UserError, match="emoji data not found"):
        samples.ensure_emoji(install=False)


# --------------------------------------------------------------------------------- real data


def _have_emoji() -> bool:
    try:
        images.locate_emoji()
        return True
    except UserError:
        return False


def _have_fmnist() -> bool:
    try:
        images.locate_fashion_mnist()
        return True
    except UserError:
        return False


@pytest.mark.real
@pytest.mark.skipif(not _have_emoji(), reason="emoji-datasource-google not installed")
def test_emoji_real_8_categories():
    t = time.perf_counter()
    ds = load_dataset("emoji", categories=list(images.EMOJI_8_CATEGORIES))
    elapsed = time.perf_counter() - t
    print(f"emoji 8 categories: {len(ds)} images loaded and validated in {elapsed:.2f} s")
    assert len(ds) == 1520 and ds.quarantined == []
    assert ds.classes == sorted(images.EMOJI_8_CATEGORIES)
    assert ds.class_counts()["Flags"] == 270
    meta = json.loads((images.locate_emoji() / "emoji.json").read_text())
    cat = {e["image"]: e["category"] for e in meta}
    assert all(cat[i] == ds.classes[k] for i, k in zip(ds.ids, ds.labels))
    img = ds.load(0)
    assert img.mode == "RGB" and img.size == (64, 64)
    assert img.getpixel((0, 0)) == (255, 255, 255)  # transparent corner on white
    all_ds = load_dataset("emoji")
    assert "People & Body" in all_ds.classes and "Component" not in all_ds.classes
    assert any("Component" in q.path and "min_per_class=10" in q.reason for q in all_ds.quarantined)
    with pytest.raises(UserError, match="unknown class 'Faces'; valid: Activities"):
        load_dataset("emoji", categories=["Faces"])


@pytest.mark.real
@pytest.mark.skipif(not _have_emoji(), reason="emoji-datasource-google not installed")
def test_emoji_skin_tones_and_export(tmp_path):
    base = load_dataset("emoji", categories=["People & Body"], validate=False)
    tones = load_dataset("emoji", categories=["People & Body"], include_skin_tones=True, validate=False)
    assert len(tones) > 3 * len(base)
    assert set(base.ids) < set(tones.ids)
    out = samples.export_emoji_folder(tmp_path / "emo", categories=["Flags", "Activities"], per_class=3)
    folder = load_dataset("folder", str(out))
    assert folder.classes == ["Activities", "Flags"] and len(folder) == 6 and folder.quarantined == []
    assert samples.ensure_emoji(install=False) == images.locate_emoji()
    with pytest.raises(UserError, match="exists and is not empty; it holds an earlier 'transfuse data' output"):
        samples.export_emoji_folder(out, per_class=1)


@pytest.mark.real
@pytest.mark.skipif(not _have_fmnist(), reason="dataset-fashion-mnist not installed")
def test_fashion_mnist_real_2k_subset(tmp_path):
    t = time.perf_counter()
    ds = load_dataset("fashion_mnist", max_per_class=200, seed=0)
    elapsed = time.perf_counter() - t
    print(f"fashion-mnist 2k subset loaded in {elapsed:.2f} s")
    assert len(ds) == 2000 and set(ds.class_counts().values()) == {200}
    d = images.locate_fashion_mnist()
    with gzip.open(d / "train-images-idx3-ubyte.gz") as f:
        raw = np.frombuffer(f.read(), np.uint8, offset=16).reshape(-1, 28, 28)
    with gzip.open(d / "train-labels-idx1-ubyte.gz") as f:
        raw_y = np.frombuffer(f.read(), np.uint8, offset=8)
    for i in (0, 777, 1999):
        k = int(ds.ids[i].split(":")[1])
        np.testing.assert_array_equal(ds.items[i], raw[k])
        assert ds.classes[ds.labels[i]] == images.FASHION_MNIST_CLASSES[raw_y[k]]
    out = samples.export_fashion_mnist_folder(tmp_path / "fm", per_class=2, seed=1)
    folder = load_dataset("folder", str(out))
    assert len(folder) == 20 and "T-shirt_top" in folder.classes
    for i in range(len(folder)):  # each exported file holds the original pixels, under its class
        k = int(Path(folder.ids[i]).stem.split("_")[1])  # "Bag/train_123.png" -> 123
        np.testing.assert_array_equal(np.asarray(folder.load(i))[..., 0], raw[k])
        assert folder.classes[folder.labels[i]] == images.FASHION_MNIST_CLASSES[raw_y[k]].replace("/", "_")
    assert samples.ensure_fashion_mnist(install=False) == d


def test_manifest_giant_line_is_quarantined_not_a_crash(manifest_dir):
    """A 10 MB manifest line (over the csv module's 128 KiB field limit, and over any file name's
    length) is one quarantined row; the other rows load."""
    giant = "imgs/" + "a" * 10_000_000
    (manifest_dir / "m.csv").write_text(f"path,label\nimgs/0.png,red\n{giant},red\nimgs/1.png,green\n"
                                        f"imgs/2.png,{'b' * 2000}\n")
    ds = load_dataset("manifest", str(manifest_dir / "m.csv"))
    assert ds.ids == ["imgs/0.png", "imgs/1.png"]
    assert [(q.path, q.reason) for q in ds.quarantined] == [
        (f"{manifest_dir / 'm.csv'}:3", "path field has 10000005 characters (limit 4096); check the row's columns"),
        (f"{manifest_dir / 'm.csv'}:5", "label field has 2000 characters (limit 1000); check the row's columns")]
    name_too_long = "imgs/" + "c" * 300 + ".png"  # under PATH_MAX, over NAME_MAX: the OS refuses it
    (manifest_dir / "n.jsonl").write_text(json.dumps({"path": name_too_long, "label": "red"}) + "\n"
                                          + json.dumps({"path": "imgs/0.png", "label": "red"}) + "\n")
    ds = load_dataset("manifest", str(manifest_dir / "n.jsonl"))
    assert ds.ids == ["imgs/0.png"] and ds.quarantined[0].reason == "file not found (row 1 of n.jsonl)"
