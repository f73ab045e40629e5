"""The time-limit planner (``budget.time_limit``): what a run does with the seconds it has.

Measured, then chosen: the cheap candidates (probes on cached features, raw baselines) run first
for every backbone, their embedding stopped early if its measured pace cannot finish in time. Each
fine-tuning candidate is then planned from one real training step and one inference batch
(:func:`~transfuse.train.finetune.measure_step`) times the steps its folds and refit take: it runs
with the most epochs (up to ``train.finetune.epochs``) that fit the time left, after a reserve for
the fusions, or is skipped with the estimate as the reason. With fold bags (``adapt.bag``) the
refit is optional: when dropping it fits more epochs (or fewer than :data:`MIN_EPOCHS` fit with
it), the most epochs that fit without it run and the fold bag ships in its place; when that is still
fewer than :data:`MIN_EPOCHS`, the first m of the k folds run (the most folds that fit that many
epochs): the candidate is scored on those folds' rows only, and the run's choice compares it with
the others on the same rows (:func:`~transfuse.pipeline.report.choose`). Whatever still runs past
the deadline is stopped (:class:`~transfuse.budget.TimeLimitReached`) and left out (a refit stopped
with its folds done: the bag ships); the report is written with what finished. Every decision is
kept for ``report.json["plan"]``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

from transfuse.budget import Budget, TimeLimitReached

#: Estimates are multiplied by this before they are compared with the time left: a fit's
#: fixed costs (trainer set-up, checkpoints) and a shared machine's noise.
SAFETY = 1.25
#: Seconds per fit for what is not a step: trainer set-up, checkpoint writes, the LP-FT probe.
FIT_OVERHEAD = 2.0
#: Fewer epochs are planned only where no plan (refit, fold bag, fewer folds) fits this many: one
#: epoch of LP-FT lowered CV below the probe's on Fashion-MNIST (docs/decisions.md, "Time limit").
MIN_EPOCHS = 2


def finetune_seconds(step: float, infer: float, batch_size: int, n: int, n_test: int, folds: int,
                     inner_val: float, epochs: int, *, refit: bool = True, bag: bool = False,
                     run_folds: int | None = None) -> float:
    """Estimated seconds of one fine-tuning candidate under :func:`~transfuse.adapt.cross_fit.cross_fit`:
    per outer fold (of ``folds``; ``run_folds`` of them run, default all), ``epochs`` epochs on the
    inner training part, a validation pass over the inner validation part per epoch (plus the
    sanity pass and the final one), the outer fold predicted once (``bag``: and the test part);
    then (``refit``) the refit on all ``n`` rows for ``epochs`` epochs and the test part predicted."""
    def batches(rows: float) -> int:
        return math.ceil(rows / batch_size) if rows > 0 else 0

    n_fold_train = n - n / folds
    n_inner_val = n_fold_train * inner_val
    per_fold = (batches(n_fold_train - n_inner_val) * epochs * step
                + (batches(n_inner_val) * (epochs + 2) if inner_val > 0 else 0) * infer
                + batches(n / folds) * infer + FIT_OVERHEAD + (batches(n_test) * infer if bag else 0))
    final = batches(n) * epochs * step + batches(n_test) * infer + FIT_OVERHEAD
    return (folds if run_folds is None else run_folds) * per_fold + (final if refit else 0)


@dataclass
class Planner:
    """Decisions of one budgeted run (``budget``: None plans nothing and keeps everything)."""

    budget: Budget | None
    preset: str | None = None
    decisions: list[dict[str, Any]] = field(default_factory=list)

    def left(self) -> float:
        return math.inf if self.budget is None else self.budget.left()

    def note(self, name: str, action: str, reason: str, **extra: Any) -> None:
        self.decisions.append({"name": name, "action": action, "reason": reason, **extra})

    def too_late(self, name: str, folds: int, reserve: float = 0.0, bag: bool = False) -> bool:
        """True (and a skip recorded) when the time left minus ``reserve`` cannot hold even the
        fixed costs of the fewest fits the plan could run: the ``folds`` + 1 (the refit), or with
        ``bag`` one fold (its bag ships), so measuring a step would only waste time."""
        fits, what = (1, f"1 of {folds} folds") if bag else (folds + 1, f"{folds} folds + refit")
        need = SAFETY * FIT_OVERHEAD * fits
        avail = self.left() - reserve
        if avail >= need:
            return False
        self.note(name, "skip", f"needs at least {need:.0f} s ({what}), {max(avail, 0):.0f} s left")
        return True

    def plan_finetune(self, name: str, cost: Any, n: int, n_test: int, folds: int, inner_val: float,
                      max_epochs: int, reserve: float = 0.0, bag: bool = False) -> tuple[int, bool, int] | None:
        """``(epochs, refit, run_folds)`` of the first of these that fits the time left minus
        ``reserve`` with at least :data:`MIN_EPOCHS` epochs (or ``max_epochs`` if fewer), most
        epochs first: every fold and the refit; with ``bag``, every fold without the refit (the
        fold bag ships), then the first ``m < folds`` folds without it (the most folds at which that
        many epochs fit, then the most epochs; scored on those folds' rows only). When none does, the
        first that fits 1 epoch. With ``bag``, every fold without the refit is also chosen over the
        refit when it fits more epochs: the bag is what the folds scored, and the refit's time is
        better spent on them. None: nothing fits. Recorded as a decision either way."""
        if self.budget is None:
            return max_epochs, True, folds
        avail = self.left() - reserve

        def est(e: int, refit: bool = True, m: int | None = None) -> float:
            return SAFETY * finetune_seconds(cost.train_step, cost.infer_batch, cost.batch_size, n, n_test,
                                             folds, inner_val, e, refit=refit, bag=bag, run_folds=m)
        epochs, enough = range(1, max_epochs + 1), min(MIN_EPOCHS, max_epochs)
        tiers = [max(((e, True, folds) for e in epochs if est(e) <= avail), default=None)]
        if bag:  # fewer folds: the most at which `enough` epochs fit, then the most epochs there
            tiers.append(max(((e, False, folds) for e in epochs if est(e, False) <= avail), default=None))
            tiers.append(max(((e, False, m) for e in epochs for m in range(1, folds) if est(e, False, m) <= avail),
                             key=lambda t: (t[0] >= enough, t[2], t[0]), default=None))
        pick = next((t for t in tiers if t and t[0] >= enough), None) or next((t for t in tiers if t), None)
        if bag and pick is tiers[0] and tiers[1] and tiers[1][0] > pick[0]:  # the refit's time buys epochs
            pick = tiers[1]
        unit = {"train_step_s": round(cost.train_step, 4), "infer_batch_s": round(cost.infer_batch, 4),
                "batch_size": cost.batch_size}
        left = f"{max(avail, 0):.0f} s left"
        if pick is None:
            one = est(1, False, 1) if bag else est(1)
            self.note(name, "skip", f"needs about {one:.0f} s for 1 epoch ({'1 of ' if bag else ''}{folds} folds"
                      f"{'' if bag else ' + refit'}), {left}", estimate_s=round(one, 1), **unit)
            return None
        e, refit, m = pick
        tier = tiers.index(pick)
        seconds = est(e, refit, m)
        if tier == 0:
            why = "as configured" if e == max_epochs else f"{max_epochs} would need about {est(max_epochs):.0f} s"
            reason = f"{e} epoch(s): about {seconds:.0f} s of {left} ({why})"
        else:
            above = tiers[tier - 1]
            short = (f"{'with the refit' if tier == 1 else f'on all {folds} folds'} only {above[0]} epoch(s) fit; "
                     + ("the refit's time goes to epochs" if above[0] >= enough else
                        f"fewer than {enough} are planned only where no plan fits more")) if above else \
                (f"1 epoch with the refit would need about {est(1):.0f} s" if tier == 1 else
                 f"1 epoch on all {folds} folds would need about {est(1, False):.0f} s")
            where = "" if m == folds else f" on {m} of {folds} folds"
            rows = "" if m == folds else \
                "; scored on those folds' rows only, against the other candidates on the same rows"
            reason = (f"{e} epoch(s){where} without the refit: about {seconds:.0f} s of {left} ({short}){rows}; "
                      "the fold bag ships instead")
        self.note(name, "run", reason, estimate_s=round(seconds, 1), epochs=e, refit=refit, folds=m, **unit)
        return pick

    def summary(self) -> dict[str, Any] | None:
        if self.budget is None:
            return None
        return {"time_limit": self.budget.limit, "preset": self.preset, "reserve_s": round(self.budget.reserve, 1),
                "work_seconds": round(self.budget.elapsed(), 1), "decisions": self.decisions}


#: Image sizes the planner falls back to, largest first, when embedding at the configured size
#: would not leave time for the fits.
FALLBACK_SIZES = (192, 160, 128, 96)
#: The share of the time left that embedding (every image backbone, train and test items) may take:
#: the rest is for the probes' folds, the raw baselines and the fusions.
EMBED_SHARE = 0.5
#: Items embedded to measure the pace (after a first batch that warms the backbone up); they are
#: cached, so nothing is lost when the size stays.
PACE_ITEMS, PACE_BATCH = 32, 16


def view_scales(cfg: Any, backbone: Any) -> list[int]:
    """The input sizes (px) ``multilayer_probe``'s view of timm image ``backbone`` adds:
    ``adapt.scales`` times its own size; none when it has its own ``scales`` (it keeps them)."""
    from transfuse.backbones.timm_source import scale_sizes

    if backbone.scales:
        return []
    return scale_sizes(cfg.adapt.scales, int(backbone.preprocess_config()["input_size"][-1]))


def multiscale_cost(cfg: Any, backbone: Any) -> float:
    """How many times ``backbone``'s embedding at the run's size the run's embedding of it costs:
    ``1 + sum((s / size) ** 2)`` (pixels) when ``multilayer_probe``'s view adds sizes ``s``, else 1."""
    if "multilayer_probe" not in cfg.adapt.strategies or not hasattr(backbone, "tapped"):
        return 1.0
    size = int(backbone.preprocess_config()["input_size"][-1])
    return 1.0 + sum((s / size) ** 2 for s in view_scales(cfg, backbone))


def plan_image_size(cfg: Any, data: Any, planner: Planner, cache: Any, create: Any) -> tuple[Any, dict[str, Any]]:
    """Under a time limit, the run's image size: the configured one, or the largest of
    :data:`FALLBACK_SIZES` at which embedding every image backbone that follows
    ``preprocess.image_size`` fits :data:`EMBED_SHARE` of the time left (forward cost taken as
    proportional to the pixel count, from the pace measured at the configured size). Before the
    size shrinks, ``adapt.scales`` goes (``multilayer_probe`` at the run's size only) when its
    extra sizes do not fit. Returns the config (``preprocess.image_size`` or ``adapt.scales``
    changed) and ``{backbone name: (backbone, options)}`` already built at the size kept
    (``create(bcfg, cfg)`` builds one)."""
    import time

    from transfuse.backbones.registry import is_raw_estimator
    from transfuse.backbones.timm_source import scale_sizes
    from transfuse.data.multimodal import dataset_for

    if planner.budget is None or cfg.data.modality != "image":
        return cfg, {}
    follows = [b for b in cfg.backbones if not is_raw_estimator(b.name) and "image_size" not in (b.options or {})]
    built: dict[str, Any] = {}
    seconds, scaled, size = 0.0, 0.0, None
    for bcfg in follows:
        bb, _ = built[bcfg.name] = create(bcfg, cfg)
        size = size or int(bb.preprocess_config()["input_size"][-1])
        items = [dataset_for(d, bb.modality) for d in (data.train, data.test)]
        todo = sum(cache.missing(bb, d) for d in items)
        train = items[0]
        if size <= FALLBACK_SIZES[-1] or todo <= PACE_ITEMS + PACE_BATCH or len(train) < PACE_ITEMS + PACE_BATCH:
            continue
        try:
            cache.embed(bb, train.subset(range(PACE_BATCH)), PACE_BATCH)  # warm-up
            t = time.perf_counter()
            cache.embed(bb, train.subset(range(PACE_BATCH, PACE_BATCH + PACE_ITEMS)), PACE_BATCH)
        except TimeLimitReached:  # not even the measurement fits: the candidates say so
            return cfg, built
        est = (time.perf_counter() - t) / PACE_ITEMS * (todo - PACE_ITEMS - PACE_BATCH)
        seconds, scaled = seconds + est, scaled + est * multiscale_cost(cfg, bb)
    if not seconds or size is None:
        return cfg, built
    share = EMBED_SHARE * planner.left()
    if scaled > seconds:
        sizes = ", ".join(map(str, scale_sizes(cfg.adapt.scales, size)))  # the followers share ``size``
        what = (f"multilayer_probe's embedding at {sizes} and {size} px would take about {scaled:.0f} s of "
                f"{max(planner.left(), 0):.0f} s left")
        if scaled <= share:
            planner.note("adapt.scales", "keep", what, estimate_s=round(scaled, 1))
            seconds = scaled
        else:
            planner.note("adapt.scales", "drop", f"{what} (at most {EMBED_SHARE:.0%} for embedding); it embeds at "
                         f"{size} px only, about {seconds:.0f} s", estimate_s=round(seconds, 1))
            cfg = cfg.model_copy(update={"adapt": cfg.adapt.model_copy(update={"scales": []})})
    fits = [s for s in FALLBACK_SIZES if s < size and seconds * (s / size) ** 2 <= share]
    if seconds <= share or size <= FALLBACK_SIZES[-1]:
        planner.note("preprocess.image_size", "keep", f"{size} px: embedding takes about {seconds:.0f} s of "
                     f"{max(planner.left(), 0):.0f} s left", estimate_s=round(seconds, 1), image_size=size)
        return cfg, built
    new = fits[0] if fits else FALLBACK_SIZES[-1]
    planner.note("preprocess.image_size", "shrink",
                 f"{size} -> {new} px: embedding at {size} px would take about {seconds:.0f} s of "
                 f"{max(planner.left(), 0):.0f} s left (at most {EMBED_SHARE:.0%} for it); at {new} px about "
                 f"{seconds * (new / size) ** 2:.0f} s", estimate_s=round(seconds * (new / size) ** 2, 1),
                 image_size=new)
    cfg = cfg.model_copy(update={"preprocess": cfg.preprocess.model_copy(update={"image_size": new})})
    return cfg, {}
