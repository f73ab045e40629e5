"""Export a run's chosen model to ONNX, with the temperature folded in and a parity check.

Every kind of served model is one graph: single models (probe, fine-tuned, LP-FT, distilled
students), fold bags (one input, the fold networks' probabilities averaged), feature fusions (the
backbones, the standardisers and the fusion net) and prediction-level ensembles (members, then
their mean, weights or stacking meta-learner).

The graph takes the *collated* tensors each backbone's ``make_transform`` + ``collate`` produce
(images: ``input`` (B, 3, H, W); audio: ``input`` (B, ...) features; text: ``input_ids`` and
``attention_mask`` (B, T)); with several backbones, backbone ``i``'s inputs are prefixed ``m{i}.``.
It returns calibrated probabilities ``proba`` (B, C). Batch (and text length) are dynamic.
Parity: on real inputs of the run, the ONNX probabilities must match those the torch serving path
(:mod:`transfuse.export.predict`) returns within ``tolerance`` (max abs difference), or the export
fails and leaves no model behind.
"""

from __future__ import annotations

import copy
import math
import re
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from transfuse.errors import UserError
from transfuse.io import atomic_write_json, read_json

ONNX_FILE = "model.onnx"
INT8_FILE = "model.int8.onnx"
META_FILE = "onnx.json"
INT8_MAX_DROP = 0.01  # accuracy an int8 model may lose before the export warns
CALIBRATION_SAMPLES = 256  # training inputs that calibrate static int8 activation ranges
CHECK_SAMPLES = 512  # other training inputs on which the int8 variant is chosen and checked
EPS = 1e-15  # probabilities are clipped here before a log (as transfuse.evaluate.metrics)


class ExportError(UserError):
    """The exported graph does not reproduce the torch model (parity above tolerance)."""


@dataclass
class Part:
    """One backbone's slice of the graph inputs: its preprocessing and input names."""

    backbone: Any
    spec: dict[str, Any]  # {"name", "options"}: rebuilds the backbone for preprocessing
    keys: list[str] = field(default_factory=list)  # the collated batch's keys (["input"] for a tensor)
    prefix: str = ""

    @property
    def names(self) -> list[str]:
        return [self.prefix + k for k in self.keys]

    def batch(self, tensors: tuple) -> Any:
        return dict(zip(self.keys, tensors, strict=True)) if self.keys != ["input"] else tensors[0]


def input_names(batch: Any) -> list[str]:
    """Names of the inputs for a collated batch: its keys, or ``input`` for one tensor."""
    import torch

    if isinstance(batch, dict):
        return list(batch)
    if isinstance(batch, torch.Tensor):
        return ["input"]
    raise UserError(f"export: backbone batches of type {type(batch).__name__} are not supported; "
                    "export needs a tensor or a dict of tensors")


def as_tensors(batch: Any, names: list[str]) -> tuple:
    return tuple(batch[n] for n in names) if isinstance(batch, dict) else (batch,)


def _view(dataset: Any, part: Part) -> Any:
    from transfuse.data.multimodal import dataset_for

    return dataset_for(dataset, part.backbone.modality)


def collate_examples(backbone: Any, dataset: Any, indices: Any) -> Any:
    """Decoded, transformed (eval) and collated inputs, exactly as the torch path feeds them."""
    tf = backbone.make_transform(train=False)
    return backbone.collate([tf(dataset.load(int(i))) for i in indices])


def collate_parts(parts: list[Part], dataset: Any, indices: Any) -> list[Any]:
    """All graph inputs for ``dataset[indices]``, in graph-input order (sets each part's keys)."""
    out = []
    for p in parts:
        batch = collate_examples(p.backbone, _view(dataset, p), indices)
        p.keys = p.keys or input_names(batch)
        out.extend(as_tensors(batch, p.keys))
    return out


def feeds(parts: list[Part], tensors: list[Any]) -> dict[str, np.ndarray]:
    names = [n for p in parts for n in p.names]
    return {n: np.ascontiguousarray(t.numpy()) for n, t in zip(names, tensors, strict=True)}


# ---------------------------------------------------------------------------------- the graph

def _modules() -> dict[str, type]:
    """The torch wrappers (defined lazily: torch is imported on use only)."""
    import torch

    class Graph(torch.nn.Module):
        """Flat input tensors -> per-backbone batches -> core -> calibrated probabilities."""

        def __init__(self, core: torch.nn.Module, parts: list[Part], temperature: float, logits: bool):
            super().__init__()
            self.core, self.parts, self.t, self.logits = core, parts, float(temperature), logits

        def forward(self, *xs: torch.Tensor) -> torch.Tensor:
            batches, i = [], 0
            for p in self.parts:
                batches.append(p.batch(xs[i:i + len(p.keys)]))
                i += len(p.keys)
            out = self.core(batches).float()
            if self.t == 1.0:
                return torch.softmax(out, dim=-1) if self.logits else out
            # T rescales clipped log-probabilities, as the torch path (calibration.apply_temperature)
            # and the fit of T do: on logits alone a class below EPS would differ (7e-3 at T = 5.9)
            logp = torch.log_softmax(out, dim=-1) if self.logits else torch.log(out.clamp(EPS, 1.0))
            return torch.softmax(logp.clamp(min=math.log(EPS)) / self.t, dim=-1)

    class Single(torch.nn.Module):
        def __init__(self, model: torch.nn.Module):
            super().__init__()
            self.model = model

        def forward(self, batches: list[Any]) -> torch.Tensor:
            return self.model(batches[0])

    class Features(torch.nn.Module):
        """Backbones -> standardised features -> the fusion net (in float32) -> logits."""

        def __init__(self, backbones: list[torch.nn.Module], means: list, scales: list, net: torch.nn.Module):
            super().__init__()
            self.backbones = torch.nn.ModuleList(backbones)
            self.net = copy.deepcopy(net).float()  # the estimator keeps its own (float64) net
            for i, (m, s) in enumerate(zip(means, scales, strict=True)):
                self.register_buffer(f"mean{i}", torch.as_tensor(np.asarray(m), dtype=torch.float32))
                self.register_buffer(f"scale{i}", torch.as_tensor(np.asarray(s), dtype=torch.float32))

        def forward(self, batches: list[Any]) -> torch.Tensor:
            zs = [(b(x).float() - getattr(self, f"mean{i}")) / getattr(self, f"scale{i}")
                  for i, (b, x) in enumerate(zip(self.backbones, batches, strict=True))]
            return self.net(zs)

    class Ensemble(torch.nn.Module):
        """Members' probabilities combined as :class:`transfuse.artifacts.serve.EnsembleModel` does."""

        def __init__(self, members: list[torch.nn.Module], method: str, params: dict[str, Any],
                     tensors: dict[str, np.ndarray], n_classes: int):
            super().__init__()
            self.members, self.method, self.params = torch.nn.ModuleList(members), method, params

            def buf(name: str, v: Any) -> None:
                self.register_buffer(name, torch.as_tensor(np.asarray(v), dtype=torch.float32))

            if method in ("weighted", "greedy"):
                buf("weights", params["weights"])
            if method == "stacking":
                buf("coef", tensors["coef"])
                buf("intercept", tensors["intercept"])
                self.scaled = "scaler_mean" in tensors
                if self.scaled:
                    buf("scaler_mean", tensors["scaler_mean"])
                    buf("scaler_scale", tensors["scaler_scale"])
                place = np.zeros((len(params["meta_classes"]), n_classes), np.float32)
                place[np.arange(len(params["meta_classes"])), params["meta_classes"]] = 1.0
                buf("place", place)

        def forward(self, batches: list[Any]) -> torch.Tensor:
            ps = [torch.softmax(m(x).float(), dim=-1) for m, x in zip(self.members, batches, strict=True)]
            if self.method == "mean":
                return torch.stack(ps).mean(0)
            if self.method in ("weighted", "greedy"):
                return sum(w * p for w, p in zip(self.weights, ps, strict=True))
            xs = [torch.log(p.clamp(1e-12, 1.0)) for p in ps] if self.params["features"] == "log" else ps
            x = torch.cat(xs, dim=1)
            if self.scaled:
                x = (x - self.scaler_mean) / self.scaler_scale
            z = x @ self.coef.T + self.intercept
            q = torch.cat([1 - torch.sigmoid(z), torch.sigmoid(z)], 1) if z.shape[1] == 1 else torch.softmax(z, 1)
            return q @ self.place

    return {"Graph": Graph, "Single": Single, "Features": Features, "Ensemble": Ensemble}


def check_exportable(folder: Path) -> None:
    """Refuse, before loading anything, a model ONNX cannot hold: a joint fusion, a raw-input
    estimator (TF-IDF, raw pixels), or an ensemble with such a member."""
    from transfuse.artifacts.serve import run_root
    from transfuse.artifacts.spec import load_spec
    from transfuse.artifacts.store import RunFolder

    spec = load_spec(folder)
    raw_names = {"tfidf": "TF-IDF", "pixels": "logistic regression on raw pixels"}

    def what(s: Any) -> str | None:
        if s.kind == "joint":
            return "a jointly fine-tuned fusion (fusion/joint)"
        if s.kind == "raw":
            name = str((s.estimator or {}).get("name", ""))
            return f"a raw-input estimator ({raw_names.get(name, name or 'raw')})"
        return None

    culprit = what(spec)
    if spec.kind == "ensemble":
        run = RunFolder(run_root(folder))
        kinds = {m: what(load_spec(run.candidate(m))) for m in spec.members}
        bad = next((m for m, k in kinds.items() if k), None)
        if bad is not None:
            raise ExportError(f"{str(folder)!r}: ensemble member {bad!r} is {kinds[bad]}, which ONNX cannot "
                              "hold; serve this fusion with 'transfuse predict', or export another candidate "
                              "(transfuse export RUN --candidate NAME)")
    if culprit:
        raise ExportError(f"{str(folder)!r}: {culprit} cannot be exported to ONNX; serve it with "
                          "'transfuse predict', or export another candidate (transfuse export RUN --candidate NAME)")


def build_graph(model: Any, spec: Any, folder: Path) -> tuple[Any, list[Part]]:
    """The torch module the ONNX graph is traced from, and its input parts, for a served model that
    :func:`check_exportable` accepts."""
    from transfuse.artifacts.serve import EnsembleModel, FeatureFusionModel

    M = _modules()
    temperature = float(spec.temperature or 1.0)
    if isinstance(model, FeatureFusionModel):
        parts = [Part(b, {"name": r.name, "options": r.options}) for b, r in zip(model.backbones, spec.backbones,
                                                                               strict=True)]
        core = M["Features"](model.backbones, model.est.means_, model.est.scales_, model.est.net_)
        logits = True
    elif isinstance(model, EnsembleModel):
        parts = [Part(m.backbone, {"name": m.backbone.spec, "options": m.backbone_options}) for m in model.members]
        core = M["Ensemble"](model.members, model.method, model.params, model.tensors, len(spec.classes))
        logits = False
    else:
        parts = [Part(model.backbone, {"name": spec.backbone.name, "options": spec.backbone.options})]
        core, logits = M["Single"](model), True
    refused = next((p for p in parts if getattr(p.backbone, "onnx_refusal", None)), None)
    if refused is not None:  # said before a slow trace that would fail
        raise ExportError(f"export: backbone {refused.spec['name']} cannot be exported to ONNX: "
                          f"{refused.backbone.onnx_refusal}; serve this model with 'transfuse predict' "
                          "(--engine torch), or export another candidate (transfuse export RUN --candidate NAME)")
    if len(parts) > 1:
        for i, p in enumerate(parts):
            p.prefix = f"m{i}."
    return M["Graph"](core, parts, temperature, logits).eval(), parts


def export_onnx(graph: Any, parts: list[Part], example: list[Any], path: Path, opset: int = 18) -> None:
    """Write ``graph`` (flat collated tensors -> probabilities) as an ONNX file at ``path``."""
    import torch

    dyn = tuple({0: "batch", 1: f"seq{i}"} if p.keys != ["input"] else {0: "batch"}
                for i, p in enumerate(parts) for _ in p.keys)
    names = [n for p in parts for n in p.names]
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name("." + path.name + ".tmp")
    try:
        with warnings.catch_warnings(), torch.no_grad():
            warnings.simplefilter("ignore")
            torch.onnx.export(graph, tuple(example), str(tmp), dynamo=True, input_names=names,
                              output_names=["proba"], dynamic_shapes=(dyn,), opset_version=opset,
                              verbose=False, external_data=False)
    except Exception as e:  # noqa: BLE001 -- torch.export cannot trace this backbone (e.g. it calls onnxruntime)
        tmp.unlink(missing_ok=True)
        first = re.sub(r"\x1b\[[0-9;]*m", "", (str(e).strip().splitlines() or [""])[0])[:200]  # no ANSI colours
        specs = ", ".join(p.spec["name"] for p in parts)
        raise ExportError(f"export: torch.onnx.export cannot trace backbone(s) {specs} ({type(e).__name__}: "
                          f"{first}); use --engine torch for this model") from None
    tmp.replace(path)


def session(path: Path, threads: int | None = None) -> Any:
    import onnxruntime as ort

    opts = ort.SessionOptions()
    if threads:
        opts.intra_op_num_threads = threads
    opts.log_severity_level = 3
    return ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])


def batched_proba(sess: Any, parts: list[Part], dataset: Any, batch_size: int = 32) -> np.ndarray:
    """ONNX probabilities over a whole dataset, in order."""
    out = [sess.run(["proba"], feeds(parts, collate_parts(parts, dataset, range(i, min(i + batch_size, len(dataset))))))[0]
           for i in range(0, len(dataset), batch_size)]
    return np.concatenate(out) if out else np.zeros((0, 0), np.float32)


def parts_from_meta(meta: dict[str, Any]) -> list[Part]:
    """The input parts of an exported graph, their backbones rebuilt for preprocessing."""
    from transfuse.backbones.registry import create_backbone

    out = []
    for s in meta["parts"]:
        b = s["backbone"]
        prefix = s.get("prefix", "")
        out.append(Part(create_backbone(b["name"], **b.get("options", {})), b,
                        [n[len(prefix):] for n in s["inputs"]], prefix))
    return out


# ----------------------------------------------------------------------------------- exporting

def run_datasets(run_dir: Path) -> tuple[Any, Any]:
    """The run's training and test parts (rebuilt from its saved config and splits)."""
    from transfuse.artifacts.store import RunFolder
    from transfuse.config import load_config

    run = RunFolder(run_dir)
    data = run.prepare_data(load_config(run.config_file))
    return data.train, data.test


def export_run(run_dir: str | Path, int8: bool = False, tolerance: float = 1e-4, opset: int = 18,
               parity_samples: int = 32, int8_method: str = "auto", candidate: str | None = None
               ) -> dict[str, Any]:
    """``transfuse export RUN_DIR --format onnx [--int8]``: write ``model/model.onnx`` (and
    ``model.int8.onnx``) and ``model/onnx.json``; returns the export report (parity, sizes,
    accuracies). ``candidate`` (e.g. ``fusion/features``) exports that candidate's folder instead
    of the chosen model, into the same folder."""
    from transfuse.artifacts.serve import load_model, predict_proba, run_root
    from transfuse.artifacts.store import RunFolder

    folder = Path(run_dir) / "model" if candidate is None else RunFolder(run_dir).candidate(candidate)
    check_exportable(folder)
    model, spec = load_model(folder)
    graph, parts = build_graph(model, spec, folder)
    train, test = run_datasets(run_root(folder))
    ref = test if len(test) else train
    idx = np.arange(min(parity_samples, len(ref)))
    example = collate_parts(parts, ref, idx)
    t0 = time.perf_counter()
    export_onnx(graph, parts, example, folder / ONNX_FILE, opset)
    seconds = time.perf_counter() - t0
    p_torch = predict_proba(model, spec, ref.subset(idx))
    p_onnx = session(folder / ONNX_FILE).run(["proba"], feeds(parts, example))[0]
    diff = float(np.abs(p_onnx - p_torch).max())
    if not diff <= tolerance:
        (folder / ONNX_FILE).unlink(missing_ok=True)
        raise ExportError(f"export: ONNX probabilities differ from torch by {diff:.2e} on {len(idx)} real "
                          f"inputs (tolerance {tolerance:g}); raise export.tolerance or report the backbone")
    names = [n for p in parts for n in p.names]
    recipes = [part_recipe(p) for p in parts]
    write_metadata(folder / ONNX_FILE, spec, parts, recipes)
    out: dict[str, Any] = {"format": "onnx", "file": ONNX_FILE, "inputs": names, "opset": opset,
                           "kind": spec.kind, "temperature": float(spec.temperature or 1.0),
                           "parity_max_abs_diff": diff, "parity_samples": len(idx), "tolerance": tolerance,
                           "export_seconds": seconds, "size_bytes": (folder / ONNX_FILE).stat().st_size,
                           "classes": list(spec.classes),
                           "parts": [{"backbone": p.spec, "inputs": p.names, "prefix": p.prefix,
                                      **({"preprocess": r} if r else {})} for p, r in zip(parts, recipes)]}
    if int8:
        out.update(_int8(folder, parts, train, test, int8_method))
        if out["int8"]["shipped"]:
            write_metadata(folder / INT8_FILE, spec, parts, recipes)
            out["int8"]["size_bytes"] = (folder / INT8_FILE).stat().st_size
    atomic_write_json(folder / META_FILE, out)
    return out


def part_recipe(part: Part) -> dict[str, Any] | None:
    """The preprocessing of one graph input as data: the image recipe of
    :mod:`transfuse.export.preprocess` (what ``predict --engine onnx`` runs without torch), or the
    backbone's own ``preprocess_config()`` (text, audio: tokenizer, sample rate, ...)."""
    from transfuse.export.preprocess import image_recipe, text_recipe

    pre = part.backbone.preprocess_config() if hasattr(part.backbone, "preprocess_config") else {}
    modality = getattr(part.backbone, "modality", None)
    recipe = image_recipe(pre) if modality == "image" else text_recipe(part.backbone) if modality == "text" else None
    if recipe is not None and pre and recipe["type"] == "text":
        recipe = {**json_safe(pre), **recipe}
    if recipe is None and pre:
        recipe = {"type": getattr(part.backbone, "modality", "?"), **json_safe(pre)}
    return recipe


def json_safe(obj: Any) -> Any:
    import json

    return json.loads(json.dumps(obj, default=str))


def write_metadata(path: Path, spec: Any, parts: list[Part], recipes: list[dict[str, Any] | None]) -> None:
    """Class names, preprocessing and calibration in the ONNX file's ``metadata_props`` (JSON
    values under ``transfuse.*`` keys), so the file is usable without transfuse: any ONNX runtime
    reads them (``InferenceSession(...).get_modelmeta().custom_metadata_map``)."""
    import json

    import onnx

    from transfuse import __version__

    model = onnx.load(str(path))
    props = {
        "transfuse.version": __version__,
        "transfuse.candidate": str(spec.candidate),
        "transfuse.modality": str(spec.modality),
        "transfuse.classes": json.dumps(list(spec.classes)),
        "transfuse.output": "proba: (batch, classes) calibrated probabilities, columns in transfuse.classes order",
        "transfuse.temperature": json.dumps(float(spec.temperature or 1.0)),
        "transfuse.inputs": json.dumps([n for p in parts for n in p.names]),
        "transfuse.preprocessing": json.dumps([{"backbone": p.spec.get("name"), "inputs": p.names, **(r or {})}
                                               for p, r in zip(parts, recipes)]),
    }
    keep = [e for e in model.metadata_props if e.key not in props]
    del model.metadata_props[:]
    model.metadata_props.extend(keep)
    for k, v in props.items():
        entry = model.metadata_props.add()
        entry.key, entry.value = k, v
    tmp = path.with_name("." + path.name + ".meta.tmp")
    onnx.save(model, str(tmp))
    tmp.replace(path)


def _int8(folder: Path, parts: list[Part], train: Any, test: Any, method: str) -> dict[str, Any]:
    """Quantise; for static int8 try each calibration and keep the one that flips the fewest
    decisions on training rows held out from calibration (never the test rows). If the kept int8
    model still loses more than :data:`INT8_MAX_DROP` accuracy on those rows, no int8 file ships
    (the record says why). Test accuracy of fp32 and int8 is then measured once, side by side."""
    from transfuse.export.quantize import CALIBRATIONS, choose_method, quantize_int8

    rng = np.random.default_rng(0)
    order = rng.permutation(len(train))
    calib_idx = np.sort(order[:CALIBRATION_SAMPLES])
    check_idx = np.sort(order[CALIBRATION_SAMPLES:CALIBRATION_SAMPLES + CHECK_SAMPLES])
    if not len(check_idx):  # a small training part: check on the calibration rows themselves
        check_idx = calib_idx
    calib = [feeds(parts, collate_parts(parts, train, calib_idx[i:i + 32])) for i in range(0, len(calib_idx), 32)]
    check = train.subset(check_idx)
    p32 = batched_proba(session(folder / ONNX_FILE), parts, check)
    import onnx

    resolved = choose_method(onnx.load(str(folder / ONNX_FILE), load_external_data=False)) \
        if method == "auto" else method
    tried: list[dict[str, Any]] = []
    best: tuple[float, Path, dict[str, Any]] | None = None
    for name in CALIBRATIONS if resolved == "static" else ("none",):
        tmp = folder / f".int8-{name}.onnx"
        done = quantize_int8(folder / ONNX_FILE, tmp, method=resolved, calibration=calib,
                             **({"calibrate": name} if resolved == "static" else {}))
        p8 = batched_proba(session(tmp), parts, check)
        flips = float((p8.argmax(1) != p32.argmax(1)).mean())
        drop = float((p32.argmax(1) == check.labels).mean() - (p8.argmax(1) == check.labels).mean())
        tried.append({"calibration": name, "flipped": flips, "accuracy_drop": drop})
        if best is None or flips < best[0]:
            if best is not None:
                best[1].unlink(missing_ok=True)
            best = (flips, tmp, {**done, "check_accuracy_drop": drop})
        else:
            tmp.unlink(missing_ok=True)
    assert best is not None
    flips, tmp, done = best
    q: dict[str, Any] = {"file": INT8_FILE, "check_rows": len(check_idx), "tried": tried, **done}
    if resolved == "static":
        q["calibration_samples"] = len(calib_idx)
    out: dict[str, Any] = {"int8": q}
    if done["check_accuracy_drop"] > INT8_MAX_DROP:
        tmp.unlink(missing_ok=True)
        (folder / INT8_FILE).unlink(missing_ok=True)
        q.update(file=None, shipped=False, reason=(
            f"int8 loses {100 * done['check_accuracy_drop']:.1f} points on {len(check_idx)} training rows held out "
            f"from calibration (more than {100 * INT8_MAX_DROP:g}, best of {len(tried)} calibration(s)); "
            f"{ONNX_FILE} (fp32) ships"))
    else:
        tmp.replace(folder / INT8_FILE)
        q["shipped"] = True
        q["size_bytes"] = (folder / INT8_FILE).stat().st_size
    if len(test):
        acc = {"fp32": float((batched_proba(session(folder / ONNX_FILE), parts, test).argmax(1) == test.labels).mean())}
        if q["shipped"]:
            acc["int8"] = float((batched_proba(session(folder / INT8_FILE), parts, test).argmax(1)
                                 == test.labels).mean())
            q["accuracy_drop"] = acc["fp32"] - acc["int8"]
        out["test_accuracy"] = acc
    return out


def read_meta(folder: str | Path) -> dict[str, Any] | None:
    """The export record of a model folder (``onnx.json``), if its ONNX file is there."""
    p = Path(folder) / META_FILE
    return read_json(p) if p.exists() and (p.parent / ONNX_FILE).exists() else None


def export_cli(run_dir: str | Path, format: str = "onnx", int8: bool = False, candidate: str | None = None
               ) -> dict[str, Any]:
    """``transfuse export RUN_DIR --format onnx [--int8]`` (settings from the run's export: section);
    ``candidate`` exports that candidate of the run instead of its chosen model."""
    if format != "onnx":
        raise UserError(f"--format {format!r} is not supported; valid formats: onnx")
    run_dir = Path(run_dir)
    if candidate is None and not (run_dir / "model" / "model.json").exists():
        raise UserError(f"{str(run_dir)!r} has no chosen model (model/model.json); give a finished run "
                        "folder, or finish this one with 'transfuse resume'")
    tol, opset, n, method = 1e-4, 18, 32, "auto"
    if (run_dir / "config.yaml").exists():
        from transfuse.config import load_config

        e = load_config(run_dir / "config.yaml").export
        tol, opset, n = e.tolerance, e.opset, e.parity_samples
        method = getattr(e, "int8_method", "auto")
    return export_run(run_dir, int8=int8, tolerance=tol, opset=opset, parity_samples=n, int8_method=method,
                      candidate=candidate)


def copy_export(folder: Path, out: Path, run_dir: Path, overwrite: bool = False) -> Path:
    """``transfuse export RUN --out OUT``: copy the exported model folder to ``OUT/model/`` (a safe
    output folder, see :mod:`transfuse.outputs`: new or empty, or an earlier export with
    ``--overwrite``; never inside the run). ``transfuse predict OUT`` and ``serve OUT`` read it."""
    from transfuse.io import copy_folder
    from transfuse.outputs import abandon_output, finish_output, start_output

    tmp = start_output(Path(out), "export", [run_dir], overwrite)
    try:
        copy_folder(folder, tmp / "model")
        return finish_output(tmp, Path(out), "export", [run_dir], overwrite)
    except BaseException:
        abandon_output(tmp)
        raise
