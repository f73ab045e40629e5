"""Safe output folders: a run writes only into a new or empty folder or a run folder of its own,
never into (or as) its data folder; a merge's --overwrite never removes an input or a file it did
not write."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from transfuse.artifacts.store import MARKER_FILE, RunFolder
from transfuse.config import validate_config
from transfuse.errors import UserError


def _cfg(data: Path):
    return validate_config({"backbones": ["bundled:efficientnet_lite0"], "adapt": {"baseline": False},
                            "data": {"source": "folder", "path": str(data)}})


def test_a_foreign_folder_is_refused_and_left_as_it_was(tmp_path):
    data = tmp_path / "data"
    data.mkdir()
    mine = tmp_path / "mine"
    (mine / "model").mkdir(parents=True)
    (mine / "model" / "weights.bin").write_text("the user's")
    (mine / "report.html").write_text("the user's")
    with pytest.raises(UserError) as e:
        RunFolder(mine).claim(_cfg(data))
    assert str(e.value) == (f"output folder {str(mine)!r} exists and is not a transfuse run folder (it holds "
                            "'model' and no config.yaml); give a new or empty folder (--out), so that none "
                            "of its files are replaced")
    assert sorted(p.name for p in mine.rglob("*")) == ["model", "report.html", "weights.bin"]


def test_new_empty_and_own_folders_are_accepted(tmp_path):
    data = tmp_path / "data"
    data.mkdir()
    for name in ("new/deeper", "empty"):
        (tmp_path / "empty").mkdir(exist_ok=True)
        RunFolder(tmp_path / name).claim(_cfg(data))
        assert (tmp_path / name / MARKER_FILE).is_file()
    RunFolder(tmp_path / "empty").claim(_cfg(data))  # again: its own (marker), even with files in it
    old = tmp_path / "old_run"  # a run made before the marker: recognised by its config.yaml
    old.mkdir()
    (old / "config.yaml").write_text("name: old\n")
    RunFolder(old).claim(_cfg(data))


def test_output_in_or_as_the_data_folder_or_a_file_is_refused(tmp_path):
    data = tmp_path / "data"
    (data / "cat").mkdir(parents=True)
    with pytest.raises(UserError, match=rf"^output folder '{data}' is the data folder '{data}' \(data.path\); "
                                        "its files would be read as data"):
        RunFolder(data).claim(_cfg(data))
    with pytest.raises(UserError, match=rf"^output folder '{data}/runs/a' is inside the data folder"):
        RunFolder(data / "runs" / "a").claim(_cfg(data))
    assert not (data / "runs").exists() and not (data / MARKER_FILE).exists()
    (tmp_path / "f").write_text("x")
    with pytest.raises(UserError, match="is an existing file; give a folder"):
        RunFolder(tmp_path / "f").claim(_cfg(data))


def _model(path: Path, seed: int) -> str:
    g = torch.Generator().manual_seed(seed)
    save_file({"w": torch.randn(3, 2, generator=g), "b": torch.randn(3, generator=g)}, path)
    return str(path)


def test_merge_overwrite_never_deletes_inputs_or_foreign_files(tmp_path):
    from transfuse.fuse.merge import merge

    models = tmp_path / "models"
    models.mkdir()
    cfg = {"merge_method": "linear", "models": [{"model": _model(models / "a.safetensors", 0)},
                                                {"model": _model(models / "b.safetensors", 1)}]}
    before = {p: p.read_bytes() for p in models.iterdir()}
    for out in (models, tmp_path, models / "a.safetensors"):
        with pytest.raises(UserError) as e:
            merge(cfg, out, overwrite=True)
        assert "\n" not in str(e.value)
    assert str(e.value) == f"{models / 'a.safetensors'}: --out is an existing file, not a folder; give a new folder"
    with pytest.raises(UserError, match=rf"^--out {tmp_path} holds the merge input {models}/a.safetensors; "
                                        "writing there would replace it: give an output folder outside"):
        merge(cfg, tmp_path, overwrite=True)
    assert {p: p.read_bytes() for p in models.iterdir()} == before
    out = tmp_path / "out"
    merge(cfg, out)
    assert (out / ".transfuse-merge.json").is_file()
    merge(cfg, out, overwrite=True)  # a previous merge's output: replaced
    (out / "notes.txt").write_text("the user's")
    with pytest.raises(UserError, match=rf"^--out {out} holds 'notes.txt', which transfuse merge did not "
                                        "write; --overwrite only replaces a previous merge's output"):
        merge(cfg, out, overwrite=True)
    assert (out / "notes.txt").read_text() == "the user's" and (out / "model.safetensors").is_file()
    other = tmp_path / "other"
    other.mkdir()
    (other / "x.bin").write_text("y")
    with pytest.raises(UserError, match="holds 'x.bin', which transfuse merge did not write"):
        merge(cfg, other, overwrite=True)


def _tiny_set(root: Path):
    """A two-class image set whose items are files in ``root`` (what an export reads)."""
    import numpy as np
    from PIL import Image

    from transfuse.data.base import Dataset

    root.mkdir(parents=True)
    items = []
    for i in range(4):
        Image.fromarray(np.full((8, 8), 40 * i, np.uint8)).save(root / f"{i}.png")
        items.append(str(root / f"{i}.png"))
    return Dataset("image", items, np.array([0, 0, 1, 1]), ["a", "b"], [f"{i}.png" for i in range(4)])


def test_data_out_is_a_new_folder_its_own_with_overwrite_and_never_an_input(tmp_path):
    """``transfuse data ... --out``: the rules of run and merge folders (the emoji and Fashion-MNIST
    exports and ``data speech`` share this writer)."""
    from transfuse.data.samples import _copy_file, _export, _file_folders
    from transfuse.outputs import OUTPUT_MARKER

    src = tmp_path / "cache" / "emoji"
    ds = _tiny_set(src)

    def export(out: Path, overwrite: bool = False) -> Path:
        return _export(ds, out, _copy_file, _file_folders(ds), overwrite)

    out = export(tmp_path / "faces")
    assert sorted(str(p.relative_to(out)) for p in out.rglob("*")) == [
        OUTPUT_MARKER, "a", "a/0.png", "a/1.png", "b", "b/2.png", "b/3.png"]
    with pytest.raises(UserError) as e:  # its own output: replaced only with --overwrite
        export(out)
    assert str(e.value) == (f"--out {out} exists and is not empty; it holds an earlier 'transfuse data' output: "
                            "pass --overwrite to replace it, or give another folder")
    (out / "a" / "0.png").unlink()
    export(out, overwrite=True)
    assert (out / "a" / "0.png").is_file()
    (out / "thesis.pdf").write_text("the user's")  # a file it did not write: never removed
    with pytest.raises(UserError) as e:
        export(out, overwrite=True)
    assert str(e.value) == (f"--out {out} holds 'thesis.pdf', which transfuse data did not write; --overwrite "
                            "only replaces a previous 'transfuse data' output: move them or give another folder")
    assert (out / "thesis.pdf").read_text() == "the user's"
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "notes.txt").write_text("the user's")
    with pytest.raises(UserError, match=r"exists and is not empty; give a new or empty folder, so that none"):
        export(mine, overwrite=False)
    with pytest.raises(UserError, match=r"holds 'notes.txt', which transfuse data did not write"):
        export(mine, overwrite=True)
    for bad, what in ((tmp_path / "cache", "holds the input"), (src, "holds the input"),
                      (src / "copy", "is inside the input folder")):
        with pytest.raises(UserError, match=f"^--out {bad} {what} {src} of transfuse data"):
            export(bad, overwrite=True)
    assert sorted(p.name for p in src.iterdir()) == ["0.png", "1.png", "2.png", "3.png"]
    assert not list(tmp_path.glob(".*.tmp"))  # no temporary folder left behind


def test_a_full_disk_while_promoting_keeps_the_old_model_and_is_one_line(tmp_path, monkeypatch):
    import errno
    import json
    import shutil

    import numpy as np

    from transfuse.io import disk_full_message

    run = RunFolder(tmp_path / "run")
    for name in ("a", "b"):
        (run.candidate_dir(name)).mkdir(parents=True)
        (run.candidate_dir(name) / "result.json").write_text(json.dumps({"name": name}))
        (run.candidate_dir(name) / "head.safetensors").write_bytes(name.encode() * 100)
    run.promote("a", np.zeros((2, 2)), None)
    copy2 = shutil.copy2

    def full(src, dst, **kw):
        if Path(src).name == "head.safetensors":
            raise OSError(errno.ENOSPC, "No space left on device", str(dst))
        return copy2(src, dst, **kw)

    monkeypatch.setattr(shutil, "copy2", full)
    with pytest.raises(OSError) as e:
        run.promote("b", np.zeros((2, 2)), None)
    assert disk_full_message(e.value) == (
        f"out of disk space writing '{run.path}/.model.tmp/head.safetensors' (No space left on device); free "
        "some space (or raise the file-size limit), then continue with 'transfuse resume RUN_DIR': finished "
        "steps are kept")
    assert (run.model_dir / "head.safetensors").read_bytes() == b"a" * 100  # the old model, whole
