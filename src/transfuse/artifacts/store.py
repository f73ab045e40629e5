"""The run folder: one experiment, one folder, resumable.

``config.yaml`` (resolved), ``splits.json``, ``candidates/<name>/`` (``result.json``, ``proba.npz``,
``model.json`` and its tensors), ``work/<name>/`` (fine-tuning checkpoints and logs), ``model/``
(a copy of the chosen candidate's folder plus ``test_proba.npy``), ``report.json``/``report.html``.
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from transfuse.adapt.result import CandidateResult, safe_name
from transfuse.artifacts.save import set_temperature
from transfuse.data.base import Dataset, Quarantined
from transfuse.errors import UserError
from transfuse.io import atomic_save_npy, atomic_write_text, copy_folder

CONFIG_FILE = "config.yaml"
#: Written into a run folder before anything else: the folder is transfuse's to write in.
MARKER_FILE = ".transfuse-run"
SPLITS_FILE = "splits.json"
TEST_PROBA = "test_proba.npy"


@dataclass
class Prepared:
    """The data of a run: training part, test part, CV folds over the training part (indices
    into ``train``), and the inputs set aside."""

    train: Dataset
    test: Dataset
    folds: list[tuple[np.ndarray, np.ndarray]]
    quarantined: list[Quarantined] = field(default_factory=list)
    #: inputs read from outside their data root (see :func:`outside_data_root`)
    outside: list[dict[str, str]] = field(default_factory=list)


def outside_data_root(data: Dataset, path: str | None, key: str) -> list[dict[str, str]]:
    """The inputs of ``data`` whose file lies outside its data root once links are followed: a
    symlink out of the folder, a manifest row with ``../`` or an absolute path. They are read (a
    CLI may follow a link) but listed in the report, so that no file is used unnoticed. The root
    is ``path`` for a folder, the manifest's folder for a manifest file; in-memory items and
    sources without a path have none."""
    if not path or data.modality == "text":
        return []
    root = Path(path).expanduser()
    if not root.exists():
        return []
    root = (root if root.is_dir() else root.parent).resolve()
    out = []
    for item in data.items:
        if not isinstance(item, str):
            continue
        real = Path(item).resolve()
        if real != root and root not in real.parents:
            out.append({"path": item, "resolved": str(real), "root": str(root), "key": key})
    return out


def check_data_options(cfg: Any) -> None:
    """``data.options`` / ``data.test_options`` against their sources' own options (a one-line
    did-you-mean): checked before a run folder is written."""
    from transfuse.data.registry import check_options

    d = cfg.data
    check_options(d.source, d.options, "data.options")
    if d.test_path is not None or d.test_source is not None:
        check_options(d.test_source or d.source, d.test_options, "data.test_options")


def load_sources(cfg: Any) -> tuple[Dataset, Dataset | None]:
    """The data of ``cfg`` (an ExperimentConfig) and its external test data (or None), loaded and
    validated (bad inputs quarantined), not yet split."""
    from transfuse.data.registry import load_dataset

    d = cfg.data
    # text cleaning: only when the user set it (sources such as spamassassin have own defaults)
    cleaning = cfg.preprocess.text if cfg.preprocess.text.model_fields_set else None

    def load(source: str, path: str | None, options: dict[str, Any]) -> Dataset:
        opts = dict(options)
        if d.modality == "text" and cleaning is not None:
            opts.setdefault("cleaning", cleaning)
        return load_dataset(source, path, **opts)

    data = load(d.source, d.path, d.options)
    test_data = None
    if d.test_path is not None or d.test_source is not None:
        test_data = load(d.test_source or d.source, d.test_path, d.test_options)
    if data.modality != d.modality:
        raise UserError(f"data.source {d.source!r} gives {data.modality} data but data.modality is "
                        f"{d.modality!r}; set data.modality: {data.modality}")
    return data, test_data


class RunFolder:
    def __init__(self, path: str | Path):
        self.path = Path(path)

    @property
    def config_file(self) -> Path:
        return self.path / CONFIG_FILE

    @property
    def model_dir(self) -> Path:
        return self.path / "model"

    def candidate_dir(self, name: str) -> Path:
        return self.path / "candidates" / safe_name(name)

    def work_dir(self, name: str) -> Path:
        return self.path / "work" / safe_name(name)

    def claim(self, cfg: Any = None) -> None:
        """Make sure the folder is ours to write in, then mark it: a new or empty folder, or a run
        folder (its marker, or ``config.yaml`` for runs made before the marker). A folder holding
        anything else, a file, or a folder inside (or equal to) the data folder is refused: the
        run would replace the user's files, or read its own files as data on resume."""
        p = self.path
        if p.exists() and not p.is_dir():
            raise UserError(f"output folder {str(p)!r} is an existing file; give a folder (--out)")
        if cfg is not None:
            target = p.resolve()
            for key, data in (("data.path", cfg.data.path), ("data.test_path", cfg.data.test_path)):
                if data and Path(data).expanduser().is_dir():
                    root = Path(data).expanduser().resolve()
                    if target == root or root in target.parents:
                        where = "is the" if target == root else "is inside the"
                        raise UserError(f"output folder {str(p)!r} {where} data folder {data!r} ({key}); "
                                        "its files would be read as data: give an output folder outside "
                                        "the data (--out)")
        if (p / MARKER_FILE).is_file():
            return
        if p.is_dir() and not (p / CONFIG_FILE).is_file():
            try:
                first = next(iter(sorted(p.iterdir())), None)
            except OSError as e:
                raise UserError(f"output folder {str(p)!r} cannot be read ({e.strerror}); give another "
                                "folder (--out)") from None
            if first is not None:
                raise UserError(f"output folder {str(p)!r} exists and is not a transfuse run folder "
                                f"(it holds {first.name!r} and no {CONFIG_FILE}); give a new or empty "
                                "folder (--out), so that none of its files are replaced")
        p.mkdir(parents=True, exist_ok=True)
        atomic_write_text(p / MARKER_FILE, "transfuse run folder: transfuse writes and replaces files here\n")

    def finished_candidates(self) -> list[str]:
        return sorted(p.name for p in (self.path / "candidates").glob("*") if (p / "result.json").is_file())

    def start(self, config_yaml: str, overwrite: bool = False) -> None:
        """Create the folder, or check that an existing one holds the same experiment. A different
        experiment replaces it when ``overwrite`` is set, or when it holds nothing finished (a run that
        failed before its first candidate: the fixed rerun goes ahead, saying so in one line)."""
        if self.config_file.exists() and self.config_file.read_text(encoding="utf-8") != config_yaml:
            done = self.finished_candidates()
            if done and not overwrite:
                raise UserError(f"run folder {str(self.path)!r} holds a different experiment with {len(done)} "
                                f"finished candidate(s); continue it with 'transfuse resume {self.path}', replace "
                                "it with --overwrite, or give another output folder (--out)")
            from transfuse.progress import console

            self.clear()
            console.print(f"note: run folder {str(self.path)!r} " + (
                f"replaced (--overwrite; {len(done)} finished candidate(s) deleted)" if done else
                "held a run that stopped before its first candidate; starting it again with this config"),
                soft_wrap=True)
        self.path.mkdir(parents=True, exist_ok=True)
        atomic_write_text(self.config_file, config_yaml)

    def clear(self) -> None:
        """Delete everything a run wrote (its config, splits, candidates, work, model, reports); data
        the Python API wrote for it (``inputs/``) and the run-folder marker stay."""
        for p in self.path.iterdir():
            if p.name in ("inputs", MARKER_FILE):
                continue
            if p.is_dir():
                shutil.rmtree(p)
            else:
                p.unlink()

    def release_work(self, name: str) -> None:
        """Delete a finished candidate's fine-tuning checkpoints (they exist to resume a fit midway;
        two per fold at about 4x the weights' size). Logs, curves and fold weights stay."""
        for ckpt in self.work_dir(name).glob("*/checkpoints"):
            shutil.rmtree(ckpt, ignore_errors=True)

    def discard_work(self, name: str) -> None:
        """Delete the whole scratch folder of a candidate that will not finish (stopped by the time
        limit): its partial folds would not match a later plan's epochs."""
        shutil.rmtree(self.work_dir(name), ignore_errors=True)

    def done(self, name: str) -> CandidateResult | None:
        """A finished candidate (resume), or None."""
        return CandidateResult.load(self.candidate_dir(name))

    def candidate(self, name: str) -> Path:
        """The folder of candidate ``name``; one-line error naming the valid names if absent."""
        folder = self.candidate_dir(name)
        if not (folder / "result.json").is_file():
            from transfuse.io import read_json

            names = sorted(read_json(p / "result.json")["name"] for p in (self.path / "candidates").glob("*")
                           if (p / "result.json").is_file())
            raise UserError(f"run {str(self.path)!r} has no candidate {name!r}; valid: {', '.join(names) or 'none'}")
        return folder

    def promote(self, name: str, test_proba: np.ndarray, temperature: float | None) -> None:
        """Make candidate ``name`` the run's model: copy its whole folder to ``model/`` (atomic
        swap), with its test probabilities and the calibration temperature."""
        src = self.candidate(name)
        tmp = self.path / ".model.tmp"
        shutil.rmtree(tmp, ignore_errors=True)
        copy_folder(src, tmp)
        atomic_save_npy(tmp / TEST_PROBA, np.asarray(test_proba, np.float32))
        if temperature is not None:
            set_temperature(tmp, temperature)
        old = self.path / ".model.old"
        shutil.rmtree(old, ignore_errors=True)
        if self.model_dir.exists():
            self.model_dir.rename(old)
        tmp.rename(self.model_dir)
        shutil.rmtree(old, ignore_errors=True)

    def prepare_data(self, cfg: Any, write: bool = True) -> Prepared:
        """Load, validate (quarantine) and split the data of ``cfg`` (an ExperimentConfig); the split
        is saved and reused on resume. ``write=False`` (a follower rank of a distributed run): the
        saved split when there is one, else the same split made in memory; nothing is written."""
        from transfuse.data.splits import Splits, make_splits
        from transfuse.progress import console

        check_data_options(cfg)
        if write:
            self.claim(cfg)

        d = cfg.data
        data, test_data = load_sources(cfg)
        split_file = self.path / SPLITS_FILE
        if split_file.exists():
            splits = Splits.load(split_file)
            splits.check_matches(data)
        else:
            splits = make_splits(data, folds=cfg.split.folds, test_size=cfg.split.test_size,
                                 seed=cfg.seed, test_dataset=test_data)
            if write:
                splits.save(split_file)
        for w in splits.warnings if write else ():
            console.print(f"[yellow]warning:[/yellow] {w}")
        quarantined = list(data.quarantined) + (list(test_data.quarantined) if test_data else [])
        quarantined += list(splits.quarantined) + list(splits.test_quarantined)
        train = data.subset(splits.train_idx)
        test = (test_data if test_data is not None else data).subset(splits.test_idx)
        outside = outside_data_root(train, d.path, "data.path") + outside_data_root(
            test, d.test_path if test_data is not None else d.path, "data.test_path" if test_data else "data.path")
        # the Python API lists the files it was given by path in RUN/inputs/: chosen, not stumbled on
        api_inputs = (self.path / "inputs").resolve()
        outside = [o for o in outside if api_inputs not in Path(o["root"]).parents]
        # fold indices are absolute in ``data``; the candidates index the training part
        pos = {int(a): i for i, a in enumerate(splits.train_idx)}
        folds = [(np.array([pos[int(a)] for a in tr]), np.array([pos[int(a)] for a in va]))
                 for tr, va in splits.folds]
        return Prepared(train=train, test=test, folds=folds, quarantined=quarantined, outside=outside)
