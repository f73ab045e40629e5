"""Model soups of one backbone's fine-tuned candidates, as fusion candidates (Wortsman et al. 2022,
https://arxiv.org/abs/2203.05482): one network, one backbone's inference cost.

Ingredients are the fine-tuned candidates of one backbone (``finetune``, ``lp_ft`` and their
``adapt.variants``, which keep the run's inner split): every one starts from the same pretrained
weights, which is what a soup needs (their heads start from a fresh seeded init or from a probe; a
head is linear in the features, so averaging heads over a shared backbone is benign). Weights are averaged by the merge engine's ``linear`` method; BatchNorm
running statistics are averaged too (the engine's ``bn_stats: average``; with ``freeze_bn``, the
default, they are the pretrained ones in every ingredient, so the average is exact).

- ``uniform``: the mean of all ingredients' weights.
- ``greedy``: ingredients sorted by their score on the inner validation rows, each added to the
  uniform average and kept only if that score does not drop (:func:`~transfuse.fuse.merge.tune.greedy_soup`).

Honest CV: for outer fold ``k`` the soup is made of the ingredients' fold-``k`` models (trained on
the inner-training part of fold ``k``'s training rows, their epoch chosen on the inner validation
part, ``work/<candidate>/fold<k>``), greedy's order and acceptance use that inner validation part
only, and the soup predicts fold ``k``'s validation rows once. What ships is the soup of the
refitted models (``candidates/<name>/model.safetensors``); the greedy soup ships the ingredients
kept by at least half of the folds (the same "folds choose, the refit follows" rule as the
fine-tunes' epochs).
"""

from __future__ import annotations

import copy
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from transfuse.adapt.cross_fit import inner_split, score
from transfuse.adapt.result import CandidateResult

SOUP_METHODS = ("uniform", "greedy")
#: Strategies whose models are whole fine-tuned networks of one backbone (soup ingredients).
FINETUNED = ("finetune", "lp_ft")
WEIGHTS = "model.safetensors"


@dataclass
class Ingredient:
    """A fine-tuned candidate: its result, each fold's weights and the shipped (refitted) weights."""

    result: CandidateResult
    folds: list[Path]
    final: Path

    @property
    def name(self) -> str:
        return self.result.name


def soup_name(backbone: str, method: str) -> str:
    return f"soup/{backbone}/{method}"


def find_ingredients(results: list[CandidateResult], n_folds: int, work_dir: Callable[[str], Path],
                     candidate_dir: Callable[[str], Path]) -> tuple[dict[str, list[Ingredient]], dict[str, str]]:
    """``{backbone spec: ingredients}`` for every backbone with at least 2 fine-tuned candidates
    whose fold and final weights are on disk, and ``{name: reason}`` for fine-tuned candidates
    left out (searched ones: their folds trained with per-fold settings; missing weights)."""
    groups: dict[str, list[Ingredient]] = {}
    excluded: dict[str, str] = {}
    for r in results:
        if r.kind != "single" or r.strategy not in FINETUNED or r.backbone is None:
            continue
        chosen = (r.selected or {}).get("folds") or [{}] * n_folds
        if any(set(c) - {"epochs"} for c in chosen):
            excluded[f"{r.name} (soup ingredient)"] = "searched: its folds trained with their own settings"
            continue
        folds = [work_dir(r.name) / f"fold{k}" / WEIGHTS for k in range(n_folds)]
        final = candidate_dir(r.name) / WEIGHTS
        missing = [p for p in [*folds, final] if not p.is_file()]
        if missing:
            excluded[f"{r.name} (soup ingredient)"] = f"weights missing ({missing[0]}); rerun the candidate"
            continue
        groups.setdefault(r.backbone, []).append(Ingredient(r, folds, final))
    return {b: g for b, g in groups.items() if len(g) >= 2}, excluded


def average(paths: list[Path], names: list[str], out: Path) -> dict[str, Any]:
    """The uniform average of the state dicts in ``paths`` (the merge engine's ``linear`` method,
    BatchNorm statistics averaged), written to ``out`` and returned."""
    from transfuse.fuse.merge import load_state_dict, merge

    config = {"merge_method": "linear", "device": "cpu", "bn_stats": "average",
              "models": [{"model": str(p), "name": n} for p, n in zip(paths, names, strict=True)]}
    merge(config, out, overwrite=True)
    return load_state_dict(str(out))


def final_kept(fold_kept: list[list[str]], names: list[str]) -> list[str]:
    """The ingredients the shipped greedy soup keeps: those kept by at least half of the folds
    (in ``names`` order); none such: the one kept most often (ties: the earlier in ``names``)."""
    counts = {n: sum(n in k for k in fold_kept) for n in names}
    kept = [n for n in names if 2 * counts[n] >= len(fold_kept)]
    return kept or [max(names, key=lambda n: counts[n])]


class SoupBuilder:
    """Builds, predicts and caches the soups of one backbone's ingredients.

    ``backbone``: the (pretrained) backbone the ingredients were fine-tuned from; ``train``/``test``:
    the run's training and test parts in the backbone's modality. Soups predict on the CPU, as
    the fine-tuned candidates do (their fitted models are moved back to it) and as ``predict``
    serves them."""

    def __init__(self, backbone: Any, train: Any, test: Any, n_classes: int, workdir: Path, batch_size: int = 64):
        self.backbone, self.train, self.test, self.n_classes = backbone, train, test, n_classes
        self.workdir, self.batch_size = workdir, batch_size
        self._net: Any = None

    def network(self, state: dict[str, Any]) -> Any:
        """One :class:`~transfuse.train.finetune.Classifier` (built once) holding ``state``."""
        from transfuse.train.finetune import Classifier

        if self._net is None:
            self._net = Classifier(copy.deepcopy(self.backbone), self.n_classes)
            self._net.backbone._weights_hash = None
        self._net.load_state_dict(state, strict=True)
        return self._net.eval()

    def proba(self, state: dict[str, Any], rows: np.ndarray | None) -> np.ndarray:
        """Probabilities of ``state`` on training ``rows`` (``None``: the test part)."""
        ds = self.test if rows is None else self.train.subset(rows)
        if not len(ds):
            return np.zeros((0, self.n_classes), np.float32)
        return self.network(state).predict_proba(ds, batch_size=self.batch_size, num_workers=0)


def _inner_score(ingredient: Ingredient, k: int, y_iva: np.ndarray, metric: str) -> float | None:
    """The score of ingredient's fold-``k`` model on the inner validation rows, from the
    probabilities its fine-tuning saved on them (``val_proba.npz``); None if unreadable."""
    from transfuse.train.finetune import VAL_PROBA

    try:
        with np.load(ingredient.folds[k].parent / VAL_PROBA, allow_pickle=False) as z:
            p = z["val_proba"]
    except (OSError, KeyError, ValueError):
        return None
    return score(y_iva, p, metric) if p.ndim == 2 and len(p) == len(y_iva) else None


def soup_candidates(ingredients: list[Ingredient], builder: SoupBuilder, methods: list[str], y: np.ndarray,
                    folds: list, inner_val: float, metric: str, seed: int, backbone_name: str
                    ) -> tuple[list[tuple[CandidateResult, dict[str, Any], dict[str, Any]]], dict[str, str]]:
    """The soups of ``ingredients`` as candidates: ``[(result, state dict that ships, details)]``
    and ``{name: reason}`` for soups that could not be made (``greedy`` needs ``inner_val > 0``).

    A soup of one ingredient is that ingredient's model: its saved out-of-fold and test
    probabilities are reused, and a soup made twice (greedy keeping every ingredient is the
    uniform soup) is predicted once."""
    from transfuse.fuse.merge import greedy_soup, load_state_dict

    names = [i.name for i in ingredients]
    skipped: dict[str, str] = {}
    methods = list(methods)
    if "greedy" in methods and inner_val <= 0:
        methods.remove("greedy")
        skipped[soup_name(backbone_name, "greedy")] = (
            "train.finetune.inner_val is 0: no rows inside a fold to choose ingredients on")
    if not methods:
        return [], skipped
    t0 = time.perf_counter()
    kept_by: dict[str, list[list[str]]] = {m: [] for m in methods}
    oof = {m: np.full((len(y), builder.n_classes), np.nan) for m in methods}
    history: list[dict[str, Any]] = []
    for k, (tr, va) in enumerate(folds):
        tr, va = np.asarray(tr), np.asarray(va)
        paths = dict(zip(names, (i.folds[k] for i in ingredients), strict=True))
        known = {(i.name,): i.result.oof[va] for i in ingredients}  # one ingredient: its own model

        def va_proba(kept: list[str], tag: str, k: int = k, va: np.ndarray = va, paths: dict = paths,
                     known: dict = known) -> np.ndarray:
            key = tuple(n for n in names if n in kept)
            if key not in known:
                state = average([paths[n] for n in key], list(key), builder.workdir / f"fold{k}" / tag)
                known[key] = builder.proba(state, va)
            return known[key]

        if "uniform" in methods:
            kept_by["uniform"].append(names)
            oof["uniform"][va] = va_proba(names, "uniform")
        if "greedy" in methods:
            # the rows the fold-k fine-tunes chose their epochs on (FinetuneStrategy.fit: seed + k)
            iva = tr[inner_split(y[tr], inner_val, seed + k)[1]]
            own = {i.name: s for i in ingredients if (s := _inner_score(i, k, y[iva], metric)) is not None}
            config = {"merge_method": "greedy_soup", "device": "cpu",
                      "models": [{"model": str(paths[n]), "name": n} for n in names]}
            soup = greedy_soup(config, lambda sd, iva=iva: score(y[iva], builder.proba(sd, iva), metric), scores=own)
            kept_by["greedy"].append(list(soup.kept))
            history += [{"fold": k, "added": n, "inner_val_score": s, "kept": bool(kept)}
                        for n, s, kept in soup.history]
            oof["greedy"][va] = va_proba(soup.kept, "greedy")
    out = []
    finals = dict(zip(names, (i.final for i in ingredients), strict=True))
    shipped: dict[tuple[str, ...], tuple[dict[str, Any], np.ndarray]] = {
        (i.name,): (load_state_dict(str(i.final)), i.result.test) for i in ingredients}
    per = (time.perf_counter() - t0) / len(methods)
    for m in methods:
        t = time.perf_counter()
        kept = names if m == "uniform" else final_kept(kept_by[m], names)
        key = tuple(kept)
        if key not in shipped:
            state = average([finals[n] for n in key], kept, builder.workdir / "final" / m)
            shipped[key] = (state, builder.proba(state, None))
        state, test = shipped[key]
        res = CandidateResult(
            name=soup_name(backbone_name, m), kind="fusion", oof=np.nan_to_num(oof[m]).astype(np.float32),
            test=np.asarray(test, np.float32), cv_scores=[score(y[va], oof[m][va], metric) for _, va in folds],
            backbone=ingredients[0].result.backbone, strategy="soup", method=f"{m}_soup", members=kept,
            history=history if m == "greedy" else [], fit_seconds=per + time.perf_counter() - t,
            params=ingredients[0].result.params,
            inference_ms_per_example=ingredients[0].result.inference_ms_per_example,
            selected={"folds": [{"kept": k} for k in kept_by[m]], "final": {"kept": kept}} if m == "greedy" else None)
        details = {"ingredients": names, "kept": kept, "bn_stats": "average"}
        if m == "greedy":
            details["fold_kept"] = kept_by[m]
        out.append((res, state, details))
    return out, skipped
