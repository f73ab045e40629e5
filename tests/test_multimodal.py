"""Multimodal data: manifest loading with quarantine, per-backbone views, and image + text feature
fusion through the pipeline on real emoji data (image and its name)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from conftest import write_digits_folder

from transfuse.data.base import Dataset
from transfuse.data.multimodal import MultimodalDataset, dataset_for
from transfuse.data.registry import load_dataset
from transfuse.errors import UserError


@pytest.fixture(scope="module")
def manifest(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("mm")
    write_digits_folder(root, classes=(1, 7), per_class=3)
    rows = ["image,caption,extra,label"]
    for d in (1, 7):
        for f in sorted((root / f"digit{d}").glob("*.png")):
            rows.append(f"digit{d}/{f.name},a {'one' if d == 1 else 'seven'},handwritten,d{d}")
    rows.append("digit1/missing.png,a one,x,d1")
    rows.append("digit7/" + min((root / "digit7").glob("*.png")).name + ",a seven,x,")
    (root / "mm.csv").write_text("\n".join(rows) + "\n")
    return root / "mm.csv"


def test_manifest_rows_views_and_quarantine(manifest: Path):
    d = load_dataset("multimodal_manifest", str(manifest), image_column="image",
                     text_columns=["caption", "extra"])
    assert isinstance(d, MultimodalDataset) and d.modality == "multimodal"
    assert len(d) == 6 and d.classes == ["d1", "d7"] and d.modalities == ["image", "text"]
    reasons = sorted(q.reason for q in d.quarantined)
    assert reasons == ["image file 'digit1/missing.png' not found", "row has an empty 'label'"]
    img, txt = d.view("image"), d.view("text")
    assert img.modality == "image" and txt.modality == "text" and type(img) is Dataset
    assert txt.items[0] == "a one | handwritten" and img.load(0).size == (32, 32)
    assert (img.labels == d.labels).all() and txt.ids == d.ids
    s = d.subset([5, 0])
    assert isinstance(s, MultimodalDataset) and s.view("text").items == [txt.items[5], txt.items[0]]
    assert s.item_hashes() == [d.item_hashes()[5], d.item_hashes()[0]]
    # the content hash covers every modality: same image, other text -> other hash
    other = MultimodalDataset("multimodal", [{"image": d.items[0]["image"], "text": "x"}], [0],
                              d.classes, ["r"], loaders=d.loaders)
    assert other.item_hashes()[0] != d.item_hashes()[0]


def test_views_and_errors(manifest: Path):
    d = load_dataset("multimodal_manifest", str(manifest), image_column="image", text_columns="caption")
    with pytest.raises(UserError, match="has no 'audio' input; it has image, text"):
        dataset_for(d, "audio")
    with pytest.raises(UserError, match="a text backbone cannot read image data"):
        dataset_for(d.view("image"), "text")
    with pytest.raises(UserError, match="has no column 'caption2'"):
        load_dataset("multimodal_manifest", str(manifest), image_column="image", text_columns=["caption2"])
    with pytest.raises(UserError, match="needs at least one of"):
        load_dataset("multimodal_manifest", str(manifest))


def _emoji_available() -> bool:
    try:
        from transfuse.data.images import locate_emoji

        locate_emoji()
        return True
    except UserError:
        return False


def test_emoji_multimodal_source():
    if not _emoji_available():
        pytest.skip("emoji-datasource-google is not installed (transfuse data emoji)")
    d = load_dataset("emoji_multimodal", categories=["Flags", "Food & Drink"])
    assert d.classes == ["Flags", "Food & Drink"] and d.modalities == ["image", "text"]
    i = d.ids.index("1f34e.png")  # red apple
    assert d.items[i]["text"] == "red apple" and d.classes[d.labels[i]] == "Food & Drink"


@pytest.mark.real
def test_image_text_feature_fusion_through_run(tmp_path: Path):
    """emoji image + name -> category through run_experiment: each backbone embeds its own column,
    and feature fusion over both modalities is a candidate that serving reproduces."""
    from transfuse.config import validate_config

    if not _emoji_available():
        pytest.skip("emoji-datasource-google is not installed (transfuse data emoji)")
    from transfuse.artifacts.serve import load_model
    from transfuse.artifacts.store import RunFolder
    from transfuse.pipeline import run_experiment

    # a small balanced sample keeps this fast: 3 categories x 16 emoji
    full = load_dataset("emoji_multimodal", categories=["Flags", "Food & Drink", "Animals & Nature"])
    keep = np.concatenate([np.flatnonzero(full.labels == c)[:16] for c in range(3)])
    rows = [json.dumps({"image": full.items[i]["image"], "name": full.items[i]["text"],
                        "label": full.classes[full.labels[i]], "id": full.ids[i]}) for i in keep]
    (tmp_path / "m.jsonl").write_text("\n".join(rows) + "\n")
    cfg = validate_config({
        "name": "mm", "data": {"source": "multimodal_manifest", "path": str(tmp_path / "m.jsonl"),
                               "modality": "multimodal",
                               "options": {"image_column": "image", "text_columns": ["name"],
                                           "id_column": "id"}},
        "split": {"folds": 3, "test_size": 0.25},
        "backbones": [{"name": "bundled:efficientnet_lite0", "options": {"image_size": 64}},
                      "bundled:minilm_l3"],
        "fuse": {"ensembles": ["mean"]},
        "output": {"dir": str(tmp_path / "run")}})
    rep = run_experiment(cfg, progress=False)
    cands = {c["name"]: c for c in rep["candidates"]}
    assert {"efficientnet_lite0/linear_probe", "minilm_l3/linear_probe", "fusion/features"} <= set(cands)
    assert cands["fusion/features"]["members"] == ["efficientnet_lite0", "minilm_l3"]
    folder = tmp_path / "run" / "candidates" / "fusion_features"
    model, spec = load_model(folder)
    assert spec.kind == "features" and [b.modality for b in spec.backbones] == ["image", "text"]
    test = RunFolder(tmp_path / "run").prepare_data(cfg).test
    with np.load(folder / "proba.npz") as z:
        ref = z["test"]
    assert np.abs(model.predict_proba(test, batch_size=16) - ref).max() < 1e-4
