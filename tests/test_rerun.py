"""A run that failed before its first candidate does not block the fixed rerun in the same folder;
a folder with finished candidates is kept unless ``--overwrite`` is given (one line naming both
ways out). Through the ``transfuse`` command, on a small CSV of texts with the TF-IDF baseline."""

from __future__ import annotations

import csv
from pathlib import Path

from conftest import cli

ROWS = [("the dog barked at the cat", "animal"), ("a cat sat on the mat", "animal"),
        ("the horse ran across the field", "animal"), ("a cow gave milk in the barn", "animal"),
        ("the sheep grazed on the hill", "animal"), ("a bird sang in the tree", "animal"),
        ("the puppy wagged its tail", "animal"), ("a cat caught a mouse", "animal"),
        ("bread baked with flour and yeast", "food"), ("a bowl of rice with beans", "food"),
        ("fresh apples and pears", "food"), ("cheese made from milk and salt", "food"),
        ("a pot of soup with carrots", "food"), ("pasta with tomato sauce", "food"),
        ("a slice of bread with butter", "food"), ("cake made with sugar and eggs", "food")]


def test_failed_run_then_fixed_rerun_then_overwrite(tmp_path: Path) -> None:
    data = tmp_path / "texts.csv"
    with open(data, "w", newline="") as f:
        csv.writer(f).writerows([("text", "label"), *ROWS])
    out = tmp_path / "run"
    base = ["fit", "--data", str(data), "--modality", "text", "--out", str(out), "--folds", "2", "--quiet"]
    p = cli(*base, "--backbone", "bundled:efficientnet_lite0", check=False)  # an image backbone on texts
    assert p.returncode == 2 and "image backbone cannot read text data" in p.stderr
    assert (out / "config.yaml").is_file() and not list(out.glob("candidates/*/result.json"))
    p = cli(*base, "--backbone", "tfidf")  # the fixed config goes ahead, saying so in one line
    note = [line for line in p.stdout.splitlines() + p.stderr.splitlines() if line.startswith("note:")]
    assert len(note) == 1 and "stopped before its first candidate; starting it again with this config" in note[0]
    assert (out / "model" / "model.json").is_file()
    p = cli(*base[:-3], "--folds", "3", "--backbone", "tfidf", check=False)  # finished candidates: kept
    err = p.stderr.strip()
    assert p.returncode == 2 and "\n" not in err and "--overwrite" in err and "transfuse resume" in err
    p = cli(*base[:-3], "--folds", "3", "--backbone", "tfidf", "--overwrite")
    assert "--overwrite" in p.stdout + p.stderr
    assert "folds: 3" in (out / "config.yaml").read_text()
    assert len(cli("predict", str(out), "--text", "a cat and a dog", "--json").stdout.splitlines()) == 1


def test_run_folder_works_from_any_directory_and_the_modality_comes_from_the_data(tmp_path: Path,
                                                                                   monkeypatch) -> None:
    """``fit --data texts.csv`` (relative, no --modality): a text run (the table has a ``text``
    column) whose config holds the data path absolute; ``resume`` and ``predict`` from another
    directory work; a run written before (relative path) is fixed in place by ``resume``."""
    import yaml
    from typer.testing import CliRunner

    from transfuse.cli import app
    from transfuse.pipeline.resume import resume

    with open(tmp_path / "texts.csv", "w", newline="") as f:
        csv.writer(f).writerows([("text", "label"), *ROWS])
    (tmp_path / "elsewhere").mkdir()
    monkeypatch.chdir(tmp_path)  # the command in this process (a fresh one costs seconds of imports)
    r = CliRunner().invoke(app, ["fit", "--data", "texts.csv", "--backbone", "tfidf", "--out", "run", "--folds", "2",
                                 "--quiet"])
    assert r.exit_code == 0, r.output
    cfg = yaml.safe_load((tmp_path / "run" / "config.yaml").read_text())
    assert cfg["data"]["path"] == str(tmp_path / "texts.csv") and cfg["data"]["modality"] == "text"
    assert cfg["data"]["source"] == "text_table"
    monkeypatch.chdir(tmp_path / "elsewhere")
    r = CliRunner().invoke(app, ["resume", "../run", "--quiet"])
    assert r.exit_code == 0, r.output
    r = CliRunner().invoke(app, ["predict", "../run", "--text", "a puppy and a cat"])
    assert r.exit_code == 0 and r.output.splitlines()[1].startswith("a puppy and a cat\tanimal\t"), r.output
    cfg["data"]["path"] = "texts.csv"  # as runs before this change stored it
    (tmp_path / "run" / "config.yaml").write_text(yaml.safe_dump(cfg, sort_keys=False))
    monkeypatch.chdir(tmp_path)
    resume("run", progress=False)
    assert yaml.safe_load((tmp_path / "run" / "config.yaml").read_text())["data"]["path"] == str(tmp_path / "texts.csv")


def test_modality_is_inferred_from_the_data(tmp_path: Path) -> None:
    import pytest

    from transfuse.cli import infer_modality
    from transfuse.errors import UserError

    (tmp_path / "texts.csv").write_text("text,label\na dog,animal\n")
    (tmp_path / "clips.csv").write_text("path,label\nclips/a.wav,yes\n")
    (tmp_path / "images.jsonl").write_text('{"path": "a.png", "label": "x"}\n')
    (tmp_path / "odd.csv").write_text("body,label\nhello,x\n")
    (tmp_path / "audio" / "yes").mkdir(parents=True)
    (tmp_path / "audio" / "yes" / "1.wav").write_bytes(b"RIFF")
    (tmp_path / "imgs" / "cat").mkdir(parents=True)
    (tmp_path / "imgs" / "cat" / "1.png").write_bytes(b"")
    got = {n: infer_modality(str(tmp_path / n)) for n in ("texts.csv", "clips.csv", "images.jsonl", "audio", "imgs")}
    assert got == {"texts.csv": "text", "clips.csv": "audio", "images.jsonl": "image", "audio": "audio",
                   "imgs": "image"}
    assert [infer_modality(s) for s in ("wordnet", "speech", "emoji")] == ["text", "audio", "image"]
    with pytest.raises(UserError, match=r"odd.csv': cannot tell the modality from its columns \(body, label\); "
                                        r"give --modality image\|text\|audio"):
        infer_modality(str(tmp_path / "odd.csv"))
