"""Random-label test: with the training labels randomly permuted, every candidate's CV is at chance.

A CV score that reuses the rows it is scored on (to stop training, to keep a checkpoint, to pick
one setting of a grid or one trial of a search) is optimistic. With labels that carry no
information, the optimism is all there is: an honest estimate cannot beat chance in expectation,
a biased one does. So every kind of candidate the pipeline makes (probe, fine-tuning, LP-FT, the
uniform and greedy soups of the two fine-tunes, the TF-IDF baseline, the four ensembles, the
feature fusion, the distilled student and a searched candidate) is run on data whose labels are a seeded random permutation, and its mean CV accuracy
must stay below chance + Z_MAX standard errors. One-sided: a bias only ever inflates.

Statistics
----------
Classes are balanced (the chance rate ``p`` is taken as the largest class share of the
cross-validated rows: 1/C). Labels independent of the inputs make every prediction right with
probability ``p``; k-fold CV scores each of the ``n`` training rows once, so a CV accuracy has mean
at most ``p`` and, as a binomial proportion, standard error ``sqrt(p(1-p)/n)``. ``R`` independent
permutations (seeds) pool to ``SE = sqrt(p(1-p)/n) / sqrt(R)``; candidates that share a run (the
two MiniLM probes) are averaged and counted once. With ``R >= MIN_RUNS_FOR_SPREAD`` runs the SE
is the larger of that and the runs' own spread (SD of the per-run CVs / sqrt(R)). The threshold
is ``p + 3 SE``: an honest estimate exceeds it with probability ~0.13 %.

- images, fine-tuning: p = 1/2, n = 60, R = 2: SE = sqrt(0.25/120) = 0.0456, threshold 0.637
- texts (TF-IDF, probes, fusions): p = 1/3, n = 57, R = 24: binomial SE 0.0127; the distilled
  student (R = 10) and search (R = 10): binomial SE 0.0197, threshold 0.393

Two effects move honest estimates away from that binomial model:

- Anti-correlation (pushes down). A permutation fixes the class totals, and stratified folds fix
  them per fold, so whatever a model learnt from a fold's training labels is slightly
  anti-correlated with that fold's validation labels: honest CVs land at or below chance
  (measured on these texts, 10 permutations: TF-IDF 0.314, probes 0.315, mean/weighted/greedy
  ensembles 0.312-0.321, feature fusion 0.311, against 0.333).
- Chance associations between a group of similar inputs and a label (widen the spread). They are
  in the training and the validation rows alike, so an honest CV follows them and varies more than
  binomially across permutations. Measured standard deviation of a probe's CV over 30 permutations
  (36 rows, 3 classes, 5 folds; binomial 0.082): WordNet glosses of all noun supersenses 0.126
  (MiniLM-L3), of artifacts only 0.092 (MiniLM-L3) and 0.087 (TF-IDF). Hence the texts are
  glosses of one supersense. The images are all ten digits: on one digit's near-identical features
  a fine-tuned head more often predicts one class for every row, which leaves a per-fold checkpoint
  choice less to exploit. With fewer images per fold-set the clusters matter more: at 32 images
  (10 folds of 3) the Lite0 probe's CV over 8 permutations spread 0.17 (binomial 0.09; one
  permutation scored 0.833); at 62 images (20 folds) 0.055 (binomial 0.065), hence 62.
- Stacking spreads wider still (SD 0.091 over 16 permutations, binomial 0.062; per permutation
  from 0.14 to 0.51): its logistic regression can learn to invert its members' anti-correlated
  out-of-fold rows, which helps on some permutations and hurts on others. Its mean over 16
  permutations was 0.354 (z +0.9 on that spread), over the first 10 alone 0.398: hence 24
  permutations for the ensembles and the spread-widened SE.

Measured on the code before the pipeline rewrite (which kept each fold's checkpoint, the
distillation setting and the search trial by the scored folds; commit 0ce4682's parent), with
these settings, mean CV against the threshold:

- ``finetune`` 0.692 and ``lp_ft`` 0.758 > 0.637 (z +4.2, +5.7): each fold keeps its best epoch
  by accuracy on the fold's own 3 rows (2 of one class, 1 of the other) and stops 8 epochs after
  it. One batch of 8 rows per epoch moves the head a lot, so predictions change from epoch to
  epoch: a fold scores 2/3 as soon as any epoch predicts its majority class for all three rows,
  1 when one epoch gets all three right. The rewrite: 0.450 and 0.433.
- ``fusion/*`` of the image runs: mean 0.692, weighted 0.742, greedy 0.750 (z +4.2 to +5.5),
  stacking 0.633 (z +2.9, just inside): ensembles inherit their fine-tuned members' optimistic
  out-of-fold rows. The rewrite: 0.467-0.500.
- ``distill/*`` 0.405 > 0.393 (z +3.6): its CV was the best of the 48 settings' CVs. The
  rewrite: 0.339.
- searched 0.402 > 0.393 (z +3.5): the best of 16 head trials (MLP heads of random widths, 2 to
  20 iterations: diverse predictions), rerun on the folds it was searched on. The rewrite: 0.333.

The soups (added later: uniform 0.467, greedy 0.517 over the two image seeds, z -0.7 and +0.4
against the 0.637 threshold) cost about 11 s per image run: each of the 20 folds souped from its
own two models.

Runtime: the runs share two single-threaded worker processes, one per core (the first runs the
two fine-tuning runs, one at a time, then helps with the rest): 12.6 minutes at load 5-8 (benchmarks
sharing the 2 cores), 520 s of CPU (475 user, 45 system).
"""

from __future__ import annotations

import csv
import os
import shutil
from collections import deque
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest

pytestmark = pytest.mark.real


# ------------------------------------------------------------------------------ entry points
# The only two places that name the pipeline's modules.

def run_pipeline(raw: dict[str, Any]) -> dict[str, Any]:
    """Validate a config dict and run it; returns the report (``report["candidates"]``)."""
    from transfuse.config import validate_config

    try:
        from transfuse.pipeline import run_experiment
    except ImportError:  # before the pipeline rewrite
        from transfuse.run import run_experiment
    return run_experiment(validate_config(raw), progress=False)


def run_searched(raw: dict[str, Any], n_trials: int) -> dict[str, Any]:
    """``transfuse fit --search N``: search, then run the pipeline with the best parameters."""
    from transfuse.config import validate_config

    try:
        from transfuse.pipeline.search import fit_with_search
    except ImportError:  # before the pipeline rewrite
        from transfuse.evaluate.search import fit_with_search
    return fit_with_search(validate_config(raw), Path(raw["output"]["dir"]), n_trials=n_trials,
                           progress=False)


# ------------------------------------------------------------------------------ settings

#: Images (fine-tuning): 2 classes x 31 handwritten digits at 32 px; 2 go to the test split, 60
#: are cross-validated in 20 folds of 3 rows (2 of one class, 1 of the other).
IMG_CLASSES, IMG_PER_CLASS, IMG_FOLDS, IMG_SEEDS = 2, 31, 20, (0, 1)
#: Texts (baseline, fusions, distillation, search): 3 classes x 20 WordNet glosses of artifacts;
#: 3 go to the test split, 57 are cross-validated in 3 folds of 19 rows.
TXT_CLASSES, TXT_PER_CLASS, TXT_FOLDS, TXT_SEEDS = 3, 20, 3, tuple(range(24))
#: The seeds whose text runs also distil a student (the dearest part of a text run).
DISTILL_SEEDS = tuple(range(10))
SEARCH_SEEDS, SEARCH_TRIALS = tuple(range(10)), 16
#: One-sided threshold: mean CV <= chance + Z_MAX standard errors.
Z_MAX = 3.0
#: With at least this many runs, the SE is the larger of the binomial one and the runs' own
#: spread (standard deviation of the per-run CVs / sqrt(runs)).
MIN_RUNS_FOR_SPREAD = 8

#: Many short epochs (one batch of 8 rows each) and early stopping, the checkpoint kept by
#: validation accuracy.
FINETUNE = {"epochs": 16, "patience": 8, "monitor": "val_accuracy", "batch_size": 8,
            "max_train_batches": 1, "lr": 1e-4, "head_lr": 0.01, "schedule": "constant",
            "warmup": 0.0, "num_workers": 0}
#: 48 settings, one chosen by the student's CV.
DISTILL = {"enabled": True, "teacher": "features", "temperature": [1.0, 4.0], "alpha": [0.0, 0.5, 1.0],
           "weight_decay": [1e-4, 1e-3, 1e-2, 0.1, 1.0, 10.0, 100.0, 1000.0]}
#: The TF-IDF baseline with fewer character n-grams and a stronger L2 than its defaults: ~15x
#: faster on random labels (its CV is made as for any other setting).
TFIDF = {"name": "tfidf", "options": {"C": 1.0, "char_ngram_range": [3, 4]}}
#: MLP heads of random widths (each its own initialisation) stopped early: diverse trials.
SEARCH = {"sampler": "random", "pruner": "none",
          "space": {"kind": {"choices": ["mlp"]}, "hidden": {"type": "int", "low": 2, "high": 256},
                    "max_iter": {"choices": [2, 5, 20]},
                    "weight_decay": {"low": 1e-3, "high": 10.0, "log": True}}}


# ------------------------------------------------------------------------------ data

def permuted_labels(n_classes: int, per_class: int, seed: int) -> np.ndarray:
    """Balanced labels in a random order: ``per_class`` of each class, permuted with ``seed``."""
    return np.random.default_rng(seed).permutation(np.repeat(np.arange(n_classes), per_class))


def digit_images(n: int) -> list[np.ndarray]:
    """The first ``n`` distinct 8x8 handwritten digits of sklearn's ``load_digits`` (all ten)."""
    from sklearn.datasets import load_digits

    seen, out = set(), []
    for img in load_digits().images:
        img = (img * (255.0 / 16.0)).astype(np.uint8)
        if img.tobytes() not in seen:
            seen.add(img.tobytes())
            out.append(img)
    assert len(out) >= n
    return out[:n]


def write_image_folder(root: Path, images: list[np.ndarray], labels: np.ndarray, size: int = 32) -> Path:
    from PIL import Image

    for j, (img, c) in enumerate(zip(images, labels, strict=True)):
        (root / f"class{c}").mkdir(parents=True, exist_ok=True)
        Image.fromarray(img).resize((size, size), Image.NEAREST).save(root / f"class{c}" / f"{j}.png")
    return root


def artifact_glosses(n: int) -> list[str]:
    """``n`` distinct WordNet glosses of one supersense (noun.artifact), a fixed sample."""
    from transfuse.data.registry import load_dataset

    texts = list(dict.fromkeys(load_dataset("wordnet", None, supersenses=["artifact"]).items))
    idx = np.random.default_rng(123).choice(len(texts), n, replace=False)
    return [texts[i] for i in sorted(idx)]


def write_text_table(path: Path, texts: list[str], labels: np.ndarray) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(["text", "label"])
        for t, c in zip(texts, labels, strict=True):
            w.writerow([t, f"class{c}"])
    return path


# ------------------------------------------------------------------------------ runs

def image_config(seed: int, data: Path, out: Path, n: int) -> dict[str, Any]:
    """Probe, fine-tuning, LP-FT and the four ensembles of them."""
    return {"name": f"random-images-{seed}", "seed": seed,
            "data": {"source": "folder", "path": str(data), "modality": "image"},
            "split": {"folds": IMG_FOLDS, "test_size": IMG_CLASSES / n},
            "preprocess": {"image_size": 32},
            "augment": {"image": {"enabled": False}},
            "backbones": ["bundled:efficientnet_lite0"],
            "adapt": {"strategies": ["linear_probe", "finetune", "lp_ft"], "baseline": False},
            "train": {"finetune": FINETUNE},
            "fuse": {"ensembles": ["mean", "weighted", "greedy", "stacking"], "features": {"enabled": False}},
            "calibration": {"enabled": False},
            "output": {"dir": str(out)}}


def text_config(seed: int, table: Path, out: Path, **sections: Any) -> dict[str, Any]:
    return {"name": f"random-texts-{seed}", "seed": seed,
            "data": {"source": "text_table", "path": str(table), "modality": "text"},
            "split": {"folds": TXT_FOLDS, "test_size": TXT_CLASSES / (TXT_CLASSES * TXT_PER_CLASS)},
            "calibration": {"enabled": False}, "output": {"dir": str(out)}, **sections}


def _worker_init() -> None:
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    import torch

    torch.set_num_threads(1)  # one process per core: more intra-op threads only contend


def _run(raw: dict[str, Any], search_trials: int | None = None) -> dict[str, Any]:
    """One run (searched when ``search_trials``); its folder is deleted afterwards: fine-tuning
    leaves about 100 MB of checkpoints per fold, and the report is all the tests read."""
    try:
        return run_pipeline(raw) if search_trials is None else run_searched(raw, search_trials)
    finally:
        shutil.rmtree(raw["output"]["dir"], ignore_errors=True)


def _drain(pool: Any, own: list, shared: deque, done: list) -> None:
    """Run ``own`` jobs, then shared ones until none is left, one at a time on ``pool``; a failed
    run empties ``shared``, so the other worker stops too."""
    while True:
        if own:
            job = own.pop(0)
        else:
            try:
                job = shared.popleft()
            except IndexError:
                return
        i, group, args = job
        try:
            done.append((i, group, pool.submit(_run, *args).result()))
        except BaseException:
            shared.clear()
            raise


@pytest.fixture(scope="module")
def reports(tmp_path_factory) -> dict[str, list[dict[str, Any]]]:
    """Every run's report, from two single-threaded worker processes (one per core): the first
    fine-tunes (one image run at a time: each holds ~4 GB of checkpoints at its peak), then both
    share the rest.

    - ``images``: :func:`image_config` per image seed;
    - ``texts``: TF-IDF, MiniLM-L3 and -L6 probes, the four ensembles of the probes, the feature
      fusion and a student distilled from it (``DISTILL``), per text seed;
    - ``search``: ``fit --search`` (``SEARCH``, heads on MiniLM-L3 features), then the pipeline
      with the best head, per search seed (the permuted tables of ``texts``).
    """
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor, ThreadPoolExecutor

    root = tmp_path_factory.mktemp("random_labels")
    n_img = IMG_CLASSES * IMG_PER_CLASS
    images = digit_images(n_img)
    texts = artifact_glosses(TXT_CLASSES * TXT_PER_CLASS)
    tables = {seed: write_text_table(root / f"texts{seed}.csv", texts,
                                     permuted_labels(TXT_CLASSES, TXT_PER_CLASS, seed))
              for seed in sorted(set(TXT_SEEDS) | set(SEARCH_SEEDS))}
    finetuning, rest = [], deque()
    for seed in IMG_SEEDS:
        data = write_image_folder(root / f"images{seed}", images,
                                  permuted_labels(IMG_CLASSES, IMG_PER_CLASS, seed))
        finetuning.append(("images", (image_config(seed, data, root / f"image-run{seed}", n_img),)))
    for seed in TXT_SEEDS:
        distill = {"distill": DISTILL} if seed in DISTILL_SEEDS else {}
        rest.append(("texts", (text_config(
            seed, tables[seed], root / f"text-run{seed}",
            backbones=[TFIDF, "bundled:minilm_l3", "bundled:minilm_l6"],
            fuse={"ensembles": ["mean", "weighted", "greedy", "stacking"], **distill}),)))
    for seed in SEARCH_SEEDS:
        rest.append(("search", (text_config(
            seed, tables[seed], root / f"search-run{seed}", backbones=["bundled:minilm_l3"],
            fuse={"enabled": False}, search=SEARCH), SEARCH_TRIALS)))
    finetuning = [(i, *job) for i, job in enumerate(finetuning)]
    rest = deque((len(finetuning) + i, *job) for i, job in enumerate(rest))
    spawn, done = multiprocessing.get_context("spawn"), []
    with ProcessPoolExecutor(1, mp_context=spawn, initializer=_worker_init) as a, \
            ProcessPoolExecutor(1, mp_context=spawn, initializer=_worker_init) as b, \
            ThreadPoolExecutor(2) as threads:
        for f in [threads.submit(_drain, a, finetuning, rest, done), threads.submit(_drain, b, [], rest, done)]:
            f.result()
    out: dict[str, list[dict[str, Any]]] = {}
    for _, group, report in sorted(done, key=lambda d: d[0]):
        out.setdefault(group, []).append(report)
    return out


# ------------------------------------------------------------------------------ statistics

@dataclass
class Pooled:
    """Mean CV of one candidate kind over runs, against chance and its standard error."""

    kind: str
    cv: float
    chance: float
    se: float
    runs: int
    n_scored: int

    @property
    def threshold(self) -> float:
        return self.chance + Z_MAX * self.se

    @property
    def z(self) -> float:
        return (self.cv - self.chance) / self.se

    def __str__(self) -> str:
        return (f"{self.kind}: mean CV {self.cv:.3f} over {self.runs} run(s), chance {self.chance:.3f}, "
                f"SE {self.se:.4f} ({self.n_scored} scored rows), threshold {self.threshold:.3f}, "
                f"z {self.z:+.2f}")


def pooled(kind: str, reports: list[dict[str, Any]], pick) -> Pooled:
    """Pool the ``pick(candidate)`` candidates of every report. Per run: chance ``p`` is the largest
    class share of the ``n`` cross-validated rows, the CV is the mean of the picked candidates'
    (several, e.g. one probe per backbone, count once: they share the labels) and its binomial
    variance is ``p(1-p)/n``; the mean over ``R`` runs has variance ``sum(p(1-p)/n) / R^2``."""
    cvs, chances, variances, n_total = [], [], [], 0
    for rep in reports:
        found = [c for c in rep["candidates"] if pick(c)]
        assert found, f"{kind}: no such candidate in {[c['name'] for c in rep['candidates']]}"
        assert all(len(c["cv_scores"]) >= 2 for c in found)
        counts = np.array(list(rep["task"]["class_counts"].values()), float)
        n = int(counts.sum())
        p = float(counts.max() / n)
        cvs.append(float(np.mean([c["cv_mean"] for c in found])))
        chances.append(p)
        variances.append(p * (1 - p) / n)
        n_total += n
    r = len(cvs)
    se = float(np.sqrt(np.sum(variances)) / r)
    if r >= MIN_RUNS_FOR_SPREAD:  # a spread wider than binomial across permutations widens the SE
        se = max(se, float(np.std(cvs, ddof=1) / np.sqrt(r)))
    return Pooled(kind, float(np.mean(cvs)), float(np.mean(chances)), se, r, n_total)


def check(stat: Pooled) -> None:
    print(stat)
    assert stat.cv <= stat.threshold, (
        f"{stat}: a CV this far above chance on random labels means the estimate saw the labels "
        "it is scored on")


# ------------------------------------------------------------------------------ tests

@pytest.mark.parametrize("strategy", ["linear_probe", "finetune", "lp_ft"])
def test_single_candidates(reports, strategy):
    check(pooled(strategy, reports["images"], lambda c: c["name"].endswith("/" + strategy)))


@pytest.mark.parametrize("method", ["mean", "weighted", "greedy", "stacking"])
def test_ensembles_of_probe_and_finetuned(reports, method):
    check(pooled(f"fusion/{method} (images)", reports["images"], lambda c: c["name"] == f"fusion/{method}"))


@pytest.mark.parametrize("method", ["uniform", "greedy"])
def test_soups_of_the_finetunes(reports, method):
    """Each fold's soup is made of that fold's models; greedy picks its ingredients on the fold's
    inner validation rows: choosing on the scored rows would show here."""
    check(pooled(f"soup/{method} (images)", reports["images"],
                 lambda c: c["name"].startswith("soup/") and c["name"].endswith("/" + method)))


def test_tfidf_baseline(reports):
    check(pooled("tfidf", reports["texts"], lambda c: c["name"] == "tfidf"))


def test_text_probes(reports):
    check(pooled("linear_probe (texts)", reports["texts"], lambda c: c["name"].endswith("/linear_probe")))


@pytest.mark.parametrize("method", ["mean", "weighted", "greedy", "stacking", "features"])
def test_fusions(reports, method):
    check(pooled(f"fusion/{method} (texts)", reports["texts"], lambda c: c["name"] == f"fusion/{method}"))


def test_distilled_student(reports):
    distilled = [r for r in reports["texts"] if any(c["name"].startswith("distill/") for c in r["candidates"])]
    assert len(distilled) == len(DISTILL_SEEDS)
    check(pooled("distill", distilled, lambda c: c["name"].startswith("distill/")))


def test_searched_candidate(reports):
    """Every candidate of a searched run uses the searched head (one backbone, probe only)."""
    check(pooled("searched", reports["search"], lambda c: True))
