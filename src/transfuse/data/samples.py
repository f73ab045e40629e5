"""The two sample image sets: install them when missing, and export them as class folders.

Wired to ``transfuse data emoji|fashion-mnist [--out DIR]``: ``ensure_*`` finds (or installs,
printing the command) the data and returns its path; ``export_*_folder`` writes a plain
``<out>/<class>/<image>.png`` folder, the format the ``folder`` source reads.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
from PIL import Image

from transfuse.data import images
from transfuse.data.base import Dataset
from transfuse.errors import UserError

Log = Callable[[str], None]


def _run(cmd: list[str], log: Log) -> None:
    log("running: " + " ".join(cmd))
    try:
        subprocess.run(cmd, check=True)
    except FileNotFoundError:
        raise UserError(f"{cmd[0]} is not installed; install it, then run `{' '.join(cmd)}`") from None
    except subprocess.CalledProcessError as e:
        raise UserError(
            f"`{' '.join(cmd)}` failed (exit code {e.returncode}); run it by hand to see why"
        ) from None


def ensure_emoji(install: bool = True, log: Log = print) -> Path:
    """The emoji-datasource-google package folder, installed with npm when missing."""
    try:
        return images.locate_emoji()
    except UserError:
        if not install:
            raise
    if shutil.which("npm") is None:
        raise UserError(
            "npm is not installed; install Node.js and npm (e.g. `sudo apt-get install -y npm`), "
            f"then run `{' '.join(images.emoji_install_command())}`"
        )
    images.emoji_npm_prefix().mkdir(parents=True, exist_ok=True)
    _run(images.emoji_install_command(), log)
    return images.locate_emoji()


def ensure_fashion_mnist(install: bool = True, log: Log = print) -> Path:
    """The folder of Fashion-MNIST's IDX files, installed with apt-get when missing."""
    try:
        return images.locate_fashion_mnist()
    except UserError:
        if not install:
            raise
    cmd = ["apt-get", "install", "-y", "dataset-fashion-mnist"]
    if hasattr(os, "geteuid") and os.geteuid() != 0:
        if shutil.which("sudo") is None:
            raise UserError(
                f"installing Fashion-MNIST needs root: run `{images.FASHION_MNIST_INSTALL}` as root"
            )
        cmd = ["sudo", *cmd]
    _run(cmd, log)
    return images.locate_fashion_mnist()


def _folder_name(label: str) -> str:
    """A class name usable as one folder name ("T-shirt/top" -> "T-shirt_top")."""
    name = label.replace("/", "_").replace("\\", "_").strip()
    return name if name not in ("", ".", "..") else f"_{name}"


def _export(ds: Dataset, out_dir: str | os.PathLike, write: Callable[[Dataset, int, Path], None],
            inputs: Sequence[str | os.PathLike] = (), overwrite: bool = False) -> Path:
    """Write ``ds`` as class folders into ``out_dir`` (a safe output folder: new or empty, or with
    ``overwrite`` a previous ``transfuse data`` output; never one that is or holds an input)."""
    from transfuse.outputs import abandon_output, finish_output, start_output

    out = Path(out_dir).expanduser()
    tmp = start_output(out, "data", inputs, overwrite)
    try:
        for c in ds.classes:
            (tmp / _folder_name(c)).mkdir()
        for i in range(len(ds)):
            write(ds, i, tmp / _folder_name(ds.classes[ds.labels[i]]))
        return finish_output(tmp, out, "data", inputs, overwrite)
    except BaseException:
        abandon_output(tmp)
        raise


def _file_folders(ds: Dataset) -> list[Path]:
    """The folders holding the files of ``ds`` (the inputs an export must not write into)."""
    return sorted({Path(item).parent for item in ds.items if isinstance(item, str)})


def _write_array_png(ds: Dataset, i: int, folder: Path) -> None:
    name = ds.ids[i].replace(":", "_") + ".png"  # "train:123" -> "train_123.png"
    Image.fromarray(np.asarray(ds.items[i], dtype=np.uint8)).save(folder / name)


def _copy_file(ds: Dataset, i: int, folder: Path) -> None:
    shutil.copyfile(ds.items[i], folder / Path(ds.ids[i]).name)


def export_fashion_mnist_folder(
    out_dir: str | os.PathLike,
    per_class: int | None = 100,
    split: str = "train",
    seed: int = 0,
    classes: Sequence[str] | None = None,
    overwrite: bool = False,
) -> Path:
    """Write a Fashion-MNIST subset as ``out_dir/<class>/<split>_<index>.png`` (28x28 grey).

    ``per_class=None`` writes the whole split. "T-shirt/top" is written as folder "T-shirt_top".
    """
    ds = images.fashion_mnist(None, split=split, max_per_class=per_class, seed=seed, classes=classes)
    return _export(ds, out_dir, _write_array_png, [images.locate_fashion_mnist()], overwrite)


def export_emoji_folder(
    out_dir: str | os.PathLike,
    categories: Sequence[str] | None = images.EMOJI_8_CATEGORIES,
    per_class: int | None = None,
    seed: int = 0,
    include_skin_tones: bool = False,
    overwrite: bool = False,
) -> Path:
    """Copy emoji PNGs (64 px RGBA) into ``out_dir/<category>/<file>.png``.

    ``per_class`` draws at most that many per category (by ``seed``); ``None`` copies all.
    """
    ds = images.emoji(None, categories=categories, include_skin_tones=include_skin_tones)
    if per_class is not None:
        ds = ds.subset(images.sample_per_class(ds.labels, per_class, seed))
    return _export(ds, out_dir, _copy_file, _file_folders(ds), overwrite)
