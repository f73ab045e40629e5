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
