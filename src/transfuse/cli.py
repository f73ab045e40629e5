"""The ``transfuse`` command. User errors print one line and exit 2; no traceback."""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Annotated, Any, Optional

import typer

from transfuse.errors import UserError


def _flags_without_type() -> None:
    """Typer prints a type beside every option, ``<bool>`` beside a flag too (``--quiet <bool>``
    reads as if it took a value); a flag shows no type. Other options keep theirs."""
    from typer.core import TyperOption

    shown = getattr(TyperOption, "display_type_rich", None)
    if shown is None or getattr(shown, "_transfuse", False):
        return

    def display_type_rich(self: Any, ctx: Any) -> Any:
        return None if getattr(self, "is_flag", False) else shown(self, ctx)

    display_type_rich._transfuse = True  # type: ignore[attr-defined]
    TyperOption.display_type_rich = display_type_rich  # type: ignore[method-assign]


_flags_without_type()
app = typer.Typer(help="transfuse: transfer learning, model fusion and optimization.",
                  no_args_is_help=True, add_completion=False, pretty_exceptions_enable=False)
data_app = typer.Typer(help="Install and convert sample data sets.", no_args_is_help=True)
app.add_typer(data_app, name="data")

DEMOS = Path(__file__).parent / "demos"
SetOpt = Annotated[Optional[list[str]], typer.Option("--set", help="Override a config key: KEY=VALUE (repeatable).")]


def _quiet(quiet: bool) -> None:
    if quiet:
        from transfuse.progress import quiet_libraries

        quiet_libraries()


def _echo_summary(report: dict[str, Any]) -> None:
    from rich.table import Table

    from transfuse.progress import console

    if "follower" in report:  # a rank > 0 of a distributed run: rank 0 wrote the run folder
        console.print(f"{report['follower']}: took part in {report['fits']} fine-tuning fit(s) of "
                      f"{report['run_dir']}; rank 0 wrote the run folder", soft_wrap=True, highlight=False)
        return
    table = Table(title=f"{report['name']}: candidates (chosen by CV {report['metric']})")
    for col in ("candidate", "kind", "CV mean ± std", "test acc", "test macro-F1"):
        table.add_column(col, no_wrap=True)
    for c in sorted(report["candidates"], key=lambda c: -c["cv_mean"]):
        t = c.get("test") or {}
        mark = " *" if c["name"] == report["chosen"] else ""
        part = (c.get("selected") or {}).get("folds_run")
        on = f" ({part[0]} of {part[1]} folds)" if part else ""
        table.add_row(c["name"] + mark, c["kind"], f"{c['cv_mean']:.4f} ± {c['cv_std']:.4f}{on}",
                      f"{t.get('accuracy', float('nan')):.4f}", f"{t.get('macro_f1', float('nan')):.4f}")
    # not a terminal (a log, a pipe): as wide as the table needs, never cut to 80 columns with "…"
    if console.is_terminal:
        console.print(table)
    else:
        from rich.console import Console

        Console(stderr=True, width=10_000, color_system=None).print(table)
    verdict = report.get("baseline") or {}
    if verdict.get("transfer_loses"):
        console.print(f"[yellow]note:[/yellow] {verdict['message']}", soft_wrap=True)
    if report.get("quarantined"):
        console.print(f"{len(report['quarantined'])} input(s) quarantined (listed in the report)")
    if report.get("outside_data_root"):
        console.print(f"{len(report['outside_data_root'])} input(s) read from outside the data folder (links, "
                      "../ or absolute manifest paths; listed in the report)")
    console.print(f"report: {Path(report['run_dir']) / 'report.html'}")


@app.command()
def run(config: Path = typer.Argument(..., help="Experiment YAML file."),
        set_: SetOpt = None,
        out: Optional[Path] = typer.Option(None, "--out", help="Run folder (default: output.dir or runs/NAME)."),
        quiet: bool = typer.Option(False, "--quiet", help="No progress bars, no library warnings."),
        overwrite: bool = typer.Option(False, "--overwrite",
                                       help="Replace a run folder that holds a different experiment.")) -> None:
    """Run a whole experiment from a YAML config."""
    from transfuse.config import load_config

    _quiet(quiet)
    cfg = load_config(config, set_ or [])
    from transfuse.pipeline import run_dir_for, run_experiment

    if cfg.search.enabled:
        from transfuse.pipeline.search import fit_with_search

        _echo_summary(fit_with_search(cfg, out or run_dir_for(cfg), cfg.search.n_trials, progress=not quiet))
        return
    from transfuse.budget import process_start

    _echo_summary(run_experiment(cfg, out, progress=not quiet, overwrite=overwrite, started=process_start()))


SOURCE_MODALITY = {"audio_folder": "audio", "audio_manifest": "audio", "speech": "audio", "text_table": "text",
                   "wordnet": "text", "spamassassin": "text", "emoji_multimodal": "multimodal",
                   "multimodal_manifest": "multimodal"}


def infer_modality(data: str) -> str:
    """The modality of ``--data`` when ``--modality`` is not given: a sample set's own; a folder
    of audio files -> audio (else image); a table with a ``path`` column -> audio or image by the
    files' extensions, with a ``text`` column -> text."""
    from transfuse.data.registry import DATA_SOURCES, load_builtin_sources
    from transfuse.export.batch import AUDIO_SUFFIXES, IMAGE_SUFFIXES, TABLE_FORMATS

    load_builtin_sources()
    head, sep, _ = data.partition(":")
    if data in DATA_SOURCES and not Path(data).exists():
        return SOURCE_MODALITY.get(data, "image")
    if sep and head in DATA_SOURCES and len(head) > 1:
        return SOURCE_MODALITY.get(head, "image")
    p = Path(data)
    if p.is_dir():
        sfx = {f.suffix.lower() for f in p.rglob("*") if f.is_file()}
        return "audio" if sfx & AUDIO_SUFFIXES and not sfx & IMAGE_SUFFIXES else "image"
    fmt = TABLE_FORMATS.get(p.suffix.lower())
    if p.is_file() and fmt is not None:
        from transfuse.data.text import _table_rows

        rows = []
        for _, row, _problem in _table_rows(p, fmt):
            if row is not None:
                rows.append(row)
            if len(rows) >= 6:
                break
        columns = set(rows[0]["__header__"]) if rows and "__header__" in rows[0] else set().union(*rows)
        values = [str(r.get("path", "")) for r in rows if "__header__" not in r]
        if "path" in columns:
            return "audio" if any(Path(v).suffix.lower() in AUDIO_SUFFIXES for v in values) else "image"
        if "text" in columns:
            return "text"
        raise UserError(f"--data {data!r}: cannot tell the modality from its columns ({', '.join(sorted(columns))}); "
                        "give --modality image|text|audio (a table of texts has a 'text' column, of files a "
                        "'path' column)")
    return "image"


def infer_source(data: str, modality: str) -> tuple[str, str | None]:
    """``--data`` value -> (data source, path): a registered source name, ``SOURCE:PATH``, a
    folder or a manifest file."""
    from transfuse.data.registry import DATA_SOURCES, load_builtin_sources

    load_builtin_sources()
    if data in DATA_SOURCES and not Path(data).exists():
        return data, None
    head, sep, rest = data.partition(":")
    if sep and head in DATA_SOURCES and len(head) > 1:
        return head, rest or None
    p = Path(data)
    if not p.exists():
        raise UserError(f"--data {data!r} is neither an existing path nor a data source; "
                        f"valid sources: {', '.join(DATA_SOURCES.names())}")
    if p.is_dir():
        return {"image": "folder", "audio": "audio_folder"}.get(modality, "folder"), data
    if modality == "text":
        return "text_table", data
    return ("audio_manifest" if modality == "audio" else "manifest"), data


@app.command()
def fit(data: str = typer.Option(..., "--data",
                                 help="Folder, manifest, SOURCE:PATH or a sample set name (emoji, fashion_mnist, "
                                      "wordnet, ...)."),
        modality: Optional[str] = typer.Option(None, "--modality",
                                               help="image | text | audio (default: from the data: a table's text "
                                                    "column, audio files, else image)."),
        backbone: Optional[list[str]] = typer.Option(None, "--backbone",
                                                     help="Backbone name (repeatable), e.g. "
                                                          "bundled:efficientnet_lite0 (default: the modality's "
                                                          "bundled ones)."),
        strategy: Optional[list[str]] = typer.Option(None, "--strategy",
                                                     help="linear_probe | multilayer_probe | finetune | lp_ft | "
                                                          "partial_ft (repeatable; default: the preset's, else "
                                                          "linear_probe)."),
        time_limit: Optional[float] = typer.Option(None, "--time-limit",
                                                   help="Seconds for the whole command: the planner measures costs "
                                                        "and keeps what fits (default preset: medium)."),
        preset: Optional[str] = typer.Option(None, "--preset",
                                             help="fast (probes; images: + multilayer_probe at 3 sizes) | medium (+ "
                                                  "LP-FT) | best (+ full fine-tuning): the strategies tried."),
        out: Path = typer.Option(..., "--out", help="Run folder."),
        test_data: Optional[str] = typer.Option(None, "--test-data", help="External test set (same forms as --data)."),
        folds: int = typer.Option(5, "--folds", help="Cross-validation folds."),
        seed: int = typer.Option(0, "--seed"),
        set_: SetOpt = None,
        search_trials: Optional[int] = typer.Option(None, "--search",
                                                    help="First search the head's hyperparameters with N trials "
                                                         "(Optuna)."),
        storage: Optional[str] = typer.Option(None, "--storage",
                                              help="Optuna RDB URL for --search (default: sqlite in the run folder)."),
        quiet: bool = typer.Option(False, "--quiet", help="No progress bars, no library warnings."),
        overwrite: bool = typer.Option(False, "--overwrite",
                                       help="Replace a run folder that holds a different experiment.")) -> None:
    """The same pipeline with defaults, for the common case and for scripts."""
    _quiet(quiet)
    from transfuse.api.fit import DEFAULT_BACKBONES
    from transfuse.config import apply_overrides, validate_config

    modality = modality or infer_modality(data)
    if not backbone and modality not in DEFAULT_BACKBONES:
        raise UserError(f"--backbone: no default backbone for modality {modality!r}; give --backbone NAME "
                        "(e.g. for multimodal data one image and one text backbone)")
    source, path = infer_source(data, modality)
    raw: dict[str, Any] = {
        "name": out.name, "seed": seed,
        "data": {"source": source, "path": path, "modality": modality},
        "split": {"folds": folds},
        "backbones": list(backbone or DEFAULT_BACKBONES[modality]),
        "output": {"dir": str(out)},
    }
    if strategy or not (time_limit or preset):
        raw["adapt"] = {"strategies": list(strategy or ["linear_probe"])}
    if time_limit is not None or preset is not None:
        raw["budget"] = {k: v for k, v in (("time_limit", time_limit), ("preset", preset)) if v is not None}
    if test_data:
        tsource, tpath = infer_source(test_data, modality)
        raw["data"].update({"test_source": tsource, "test_path": tpath})
    if search_trials and time_limit is not None:
        raise UserError("--time-limit does not bound --search yet; give one of them (search: --search N trials)")
    cfg = validate_config(apply_overrides(raw, set_ or []), source="fit")
    if search_trials:
        from transfuse.pipeline.search import fit_with_search

        _echo_summary(fit_with_search(cfg, out, search_trials, storage, progress=not quiet))
        return
    from transfuse.budget import process_start
    from transfuse.pipeline import run_experiment

    _echo_summary(run_experiment(cfg, out, progress=not quiet, overwrite=overwrite, started=process_start()))


@app.command()
def resume(run_dir: Path = typer.Argument(..., help="A run folder."),
           quiet: bool = typer.Option(False, "--quiet", help="No progress bars, no library warnings.")) -> None:
    """Continue an interrupted run without redoing finished candidates."""
    _quiet(quiet)
    from transfuse.budget import process_start
    from transfuse.pipeline.resume import resume as _resume

    _echo_summary(_resume(run_dir, progress=not quiet, started=process_start()))


@app.command()
def predict(run_dir: Path = typer.Argument(..., help="A finished run folder."),
            inputs: Optional[list[str]] = typer.Argument(None,
                                                         help="Files or folders (a folder: its image/audio/.txt "
                                                              "files); for a text model a text file is one text per "
                                                              "line."),
            text: Optional[list[str]] = typer.Option(None, "--text",
                                                     help="A literal text to classify (repeatable; text models)."),
            table: Optional[Path] = typer.Option(None, "--csv",
                                                 help="A .csv/.tsv/.jsonl table of inputs (its --column: texts, or "
                                                      "file paths relative to the table; a multimodal model reads "
                                                      "its own columns)."),
            column: Optional[str] = typer.Option(None, "--column",
                                                 help="The --csv column to read (default: text for text models, path "
                                                      "for image/audio)."),
            out: Optional[Path] = typer.Option(None, "--out",
                                               help="Write the predictions here: .csv, .tsv or .jsonl (with a header "
                                                    "/ all probabilities)."),
            as_json: bool = typer.Option(False, "--json", help="Print JSON lines with all probabilities."),
            engine: str = typer.Option("auto", "--engine",
                                       help="onnx | onnx-int8 | torch | auto (onnx when exported)."),
            candidate: Optional[str] = typer.Option(None, "--candidate",
                                                    help="Predict with this candidate (e.g. fusion/stacking) instead "
                                                         "of the chosen model.")) -> None:
    """Predict with a run's chosen model, or with one of its candidates. One record per input, in
    order, after a header line (TSV ``input label confidence``; ``--json``: JSON lines; ``--out``:
    a CSV/TSV/JSONL file chosen by its extension). An input that cannot be read gets an error record
    (``INPUT<tab>ERROR<tab>reason``, ``{"input", "error"}`` in JSON, the ``error`` column in CSV)
    and the others are answered. Exit code: 0 when every input was predicted, 1 when some got an
    error record, 2 for an error of the whole command."""
    import numpy as np

    from transfuse.artifacts.spec import load_spec
    from transfuse.export import batch
    from transfuse.export.predict import model_folder, multimodal_columns
    from transfuse.export.predict import predict as _predict

    fmt = batch.output_format(out, as_json)
    folder = model_folder(run_dir, candidate)
    modality = load_spec(folder).modality
    columns = multimodal_columns(folder) if modality == "multimodal" else None
    got = batch.gather(inputs or [], modality, text or [], table, column, columns)
    good = [i for i in range(len(got.names)) if i not in got.errors]
    res = _predict(run_dir, [got.items[i] for i in good], engine=engine, candidate=candidate)
    classes = res["classes"]
    proba = np.full((len(got.names), len(classes)), np.nan, res["proba"].dtype)
    proba[good] = res["proba"]
    errors = {**got.errors, **{good[j]: why for j, why in res["errors"].items()}}
    if out is None:
        batch.write_stdout(got.names, classes, proba, errors, fmt)
    else:
        batch.write_file(out, got.names, classes, proba, errors, fmt)
        print(f"{out}: {len(got.names) - len(errors)} predictions, {len(errors)} error records ({fmt})",
              file=sys.stderr)
    if errors:
        print(f"warning: {len(errors)} of {len(got.names)} inputs could not be read (error records"
              f"{' in ' + str(out) if out else ' above'}); fix or remove them", file=sys.stderr)
        raise typer.Exit(1)


@app.command()
def serve(run_dir: Path = typer.Argument(..., help="A finished run folder."),
          host: str = typer.Option("127.0.0.1", "--host", help="Address to listen on (0.0.0.0: every interface)."),
          port: int = typer.Option(8000, "--port"),
          candidate: Optional[str] = typer.Option(None, "--candidate",
                                                  help="Serve this candidate instead of the chosen model."),
          engine: str = typer.Option("auto", "--engine", help="onnx | onnx-int8 | torch | auto (onnx when exported)."),
          max_upload_mb: float = typer.Option(10.0, "--max-upload-mb", help="Largest accepted upload, in MB."),
          max_batch: int = typer.Option(64, "--max-batch",
                                        help="Most inputs run together from concurrent requests.")) -> None:
    """Serve a run's model over HTTP: GET /health, POST /predict (files or JSON texts)."""
    from transfuse.server import Limits
    from transfuse.server import serve as _serve

    _serve(run_dir, host, port, candidate, engine,
           Limits(max_upload_bytes=int(max_upload_mb * 1024 * 1024), max_batch=max_batch))


@app.command()
def demo(task: str = typer.Option("image", "--task", help="image | text | audio"),
         out: Optional[Path] = typer.Option(None, "--out", help="Run folder (default runs/demo-TASK)."),
         quiet: bool = typer.Option(False, "--quiet", help="No progress bars, no library warnings.")) -> None:
    """Run an embedded demo. image: emoji categories with EfficientNet-Lite0 (probe + LP-FT);
    text: WordNet supersenses, MiniLM vs TF-IDF; audio: spoken digits on held-out espeak voices."""
    _quiet(quiet)
    cfg_file = DEMOS / f"{task}.yaml"
    if not cfg_file.exists():
        names = sorted(p.stem for p in DEMOS.glob("*.yaml"))
        raise UserError(f"unknown demo task {task!r}; valid tasks: {', '.join(names)}")
    from transfuse.config import load_config
    from transfuse.pipeline import run_experiment

    cfg = load_config(cfg_file)
    _echo_summary(run_experiment(cfg, out or Path("runs") / f"demo-{task}", progress=not quiet))


@app.command()
def info() -> None:
    """Versions, registered backbones and data sources, cache location and size."""
    import importlib.metadata as md

    from transfuse import __version__
    from transfuse.backbones.registry import _load_builtin_modules, all_names
    from transfuse.data.registry import DATA_SOURCES, load_builtin_sources
    from transfuse.paths import dir_size, home

    _load_builtin_modules()
    load_builtin_sources()
    print(f"transfuse {__version__} (python {sys.version.split()[0]})")
    for pkg in ("torch", "torchvision", "timm", "transformers", "lightning", "optuna", "onnxruntime", "scikit-learn"):
        try:
            print(f"  {pkg} {md.version(pkg)}")
        except md.PackageNotFoundError:
            print(f"  {pkg} (not installed)")
    print("backbones: " + ", ".join(all_names()))
    print("data sources: " + ", ".join(DATA_SOURCES.names()))
    h = home()
    print(f"cache: {h} ({dir_size(h) / 1e6:.1f} MB)")


@data_app.command("emoji")
def data_emoji(out: Optional[Path] = typer.Option(None, "--out",
                                                  help="Also export as an image folder here (a new or empty folder)."),
               overwrite: bool = typer.Option(False, "--overwrite",
                                              help="Replace an earlier output of this command in --out (never other "
                                                   "files).")) -> None:
    """Install the emoji set (npm emoji-datasource-google) into the cache."""
    from transfuse.data import samples

    print(samples.ensure_emoji())
    if out:
        print(samples.export_emoji_folder(out, overwrite=overwrite))


@data_app.command("fashion-mnist")
def data_fashion(out: Optional[Path] = typer.Option(None, "--out",
                                                    help="Also export as an image folder here (a new or empty "
                                                         "folder)."),
                 per_class: int = typer.Option(200, "--per-class"),
                 overwrite: bool = typer.Option(False, "--overwrite",
                                                help="Replace an earlier output of this command in --out (never other"
                                                     " files).")) -> None:
    """Install Fashion-MNIST (Debian dataset-fashion-mnist)."""
    from transfuse.data import samples

    print(samples.ensure_fashion_mnist())
    if out:
        print(samples.export_fashion_mnist_folder(out, per_class=per_class, overwrite=overwrite))


@app.command()
def search(config: Path = typer.Argument(..., help="Experiment YAML file (its search: section)."),
           set_: SetOpt = None,
           storage: Optional[str] = typer.Option(None, "--storage",
                                                 help="Optuna RDB URL (default: sqlite file in the run folder)."),
           trials: Optional[int] = typer.Option(None, "--trials",
                                                help="Trials in the study, over all workers (default "
                                                     "search.n_trials)."),
           worker: bool = typer.Option(False, "--worker", help="Join an existing study instead of creating it."),
           quiet: bool = typer.Option(False, "--quiet", help="No progress bars, no library warnings.")) -> None:
    """Hyperparameter search: heads on cached features, then (optionally) fine-tuning trials."""
    _quiet(quiet)
    from transfuse.progress import console
    from transfuse.search.run import search_cli

    res = search_cli(config, set_ or [], storage, trials, worker, progress=not quiet)
    for s in res["stages"]:
        finished = s["n_complete"] + s["n_pruned"]
        failed = s["n_trials"] - finished  # killed workers' trials (retried), running ones, overflows
        counts = f"{s['n_pruned']} pruned; {s['n_here']} run by this process" + (f"; {failed} failed" if failed else "")
        console.print(f"{s['stage']}: {finished} finished trials ({counts}), best CV {s['best_value']:.4f} with "
                      f"{s['best_params']}" if s["best_value"] is not None
                      else f"{s['stage']}: no complete trial ({counts})", soft_wrap=True)
    console.print(f"search report: {res['html']}")


@app.command()
def embed(config: Path = typer.Argument(..., help="Experiment YAML file."),
          set_: SetOpt = None,
          shard: Optional[str] = typer.Option(None, "--shard",
                                              help="I/N: embed shard I of N (0 <= I < N), one process per shard on "
                                                   "any machines sharing TRANSFUSE_FEATURE_CACHE (default: "
                                                   "everything)."),
          quiet: bool = typer.Option(False, "--quiet", help="No progress bars, no library warnings.")) -> None:
    """Fill the feature cache with the features of a config's data, for every backbone: a later
    run or search of the config reads them instead of computing them."""
    from transfuse.pipeline.embed import embed_config, parse_shard

    part = parse_shard(shard)  # a bad --shard fails before the config and the data are read
    _quiet(quiet)
    from transfuse.config import load_config

    for r in embed_config(load_config(config, set_ or []), part, progress=not quiet):
        if "skipped" in r:
            print(f"{r['backbone']}: skipped, {r['skipped']}")
        else:
            where = f" (shard {part})" if shard else ""
            print(f"{r['backbone']}{where}: {r['items']} items, {r['computed']} computed, {r['cached']} "
                  f"already cached ({r['seconds']:.1f} s) -> {r['folder']}")


@app.command()
def export(run_dir: Path = typer.Argument(..., help="A finished run folder."),
           format: str = typer.Option("onnx", "--format", help="onnx"),
           int8: bool = typer.Option(False, "--int8",
                                     help="Also write an int8 model (method chosen per model family; accuracy "
                                          "re-measured)."),
           candidate: Optional[str] = typer.Option(None, "--candidate",
                                                   help="Export this candidate (e.g. fusion/features) instead of the "
                                                        "chosen model."),
           out: Optional[Path] = typer.Option(None, "--out",
                                              help="Also copy the exported model to OUT/model/ (a new or empty "
                                                   "folder), to ship or serve on its own."),
           overwrite: bool = typer.Option(False, "--overwrite",
                                          help="Replace an earlier output of transfuse export in --out (never other "
                                               "files).")) -> None:
    """Export a run's chosen model, or one candidate (ONNX, parity-checked, temperature folded in)."""
    from transfuse.artifacts.store import RunFolder
    from transfuse.export.onnx import export_cli

    if out is not None:  # refused before the export's work, checked again when written
        from transfuse.outputs import check_output

        check_output(out, "export", [run_dir], overwrite)
    res = export_cli(run_dir, format, int8, candidate)
    folder = RunFolder(run_dir).candidate(candidate) if candidate else run_dir / "model"
    if out is not None:
        from transfuse.export.onnx import copy_export

        folder = copy_export(folder, out, run_dir, overwrite) / "model"
    print(f"{folder / res['file']}: parity max |p_onnx - p_torch| = {res['parity_max_abs_diff']:.2e} "
          f"on {res['parity_samples']} inputs")
    if "int8" in res:
        acc = res.get("test_accuracy") or {}
        if res["int8"].get("file"):
            print(f"{folder / res['int8']['file']}: calibration {res['int8'].get('calibration', 'none')}; test "
                  f"accuracy fp32 {acc.get('fp32', float('nan')):.4f}, int8 {acc.get('int8', float('nan')):.4f}")
        else:
            print(f"no int8 model: {res['int8']['reason']}")


@data_app.command("speech")
def data_speech(words: list[str] = typer.Option(..., "--words",
                                                help="Words to say (repeatable); 'digits' and 'commands' expand to "
                                                     "word lists."),
                out: Path = typer.Option(..., "--out",
                                         help="Output folder (train/, test/, manifest.csv); a new or empty folder."),
                voices: Optional[list[str]] = typer.Option(None, "--voices",
                                                           help="espeak-ng voices, e.g. en-us+f3 (default: 8 accents "
                                                                "x 20 variants)."),
                pitches: Optional[list[int]] = typer.Option(None, "--pitches"),
                speeds: Optional[list[int]] = typer.Option(None, "--speeds"),
                seed: int = typer.Option(0, "--seed"),
                test_fraction: float = typer.Option(0.25, "--test-fraction"),
                split_by: str = typer.Option("variant", "--split-by",
                                             help="variant | voice | accent | accent_and_variant: what the test split"
                                                  " holds out."),
                overwrite: bool = typer.Option(False, "--overwrite",
                                               help="Replace an earlier output of this command in --out (never other "
                                                    "files).")) -> None:
    """Synthesise spoken words with espeak-ng into a voice-disjoint audio folder (synthetic data)."""
    from transfuse.data.speech import speech_cli

    speech_cli(words, str(out), voices, pitches, speeds, seed, test_fraction, split_by, overwrite=overwrite)


@app.command()
def merge(config: Path = typer.Argument(..., help="Merge YAML (mergekit format plus transfuse extras)."),
          out: Path = typer.Option(..., "--out", help="Output folder (sharded safetensors + card)."),
          overwrite: bool = typer.Option(False, "--overwrite", help="Replace an existing output folder.")) -> None:
    """Merge models in weight space (soups, task arithmetic, TIES, DARE, SLERP, ...)."""
    from transfuse.fuse.merge import run_merge_cli

    run_merge_cli(config, out, overwrite=overwrite)


def _end(code: Any) -> None:
    """End the process with ``code`` (a ``SystemExit`` code) without the interpreter's teardown.

    By now every file the command wrote is closed (atomic writes), the threads it started are
    joined and the exit handlers run. The teardown that is skipped frees each extension module's
    objects one by one and pages in code the command never ran: about 1 s on a quiet machine and
    9 s with a cold, slow disk (measured), time that ``--time-limit`` cannot plan for."""
    import atexit
    import threading

    if isinstance(code, str):
        print(code, file=sys.stderr)
    code = code if isinstance(code, int) else (0 if code is None else 1)
    for t in threading.enumerate():
        if t is not threading.main_thread() and not t.daemon:
            t.join()
    run_exit_handlers = getattr(atexit, "_run_exitfuncs", None)
    if run_exit_handlers is None:  # not CPython: the normal exit
        sys.exit(code)
    run_exit_handlers()
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):  # a closed pipe or stream: nothing more to write to it
            pass
    os._exit(code)


def main() -> None:
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    code: Any = 0
    try:
        app()
    except SystemExit as e:
        code = e.code
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        code = 2
    except OSError as e:
        from transfuse.io import disk_full_message

        if (msg := disk_full_message(e)) is None:
            raise
        print(f"error: {msg}", file=sys.stderr)
        code = 2
    except KeyboardInterrupt:
        print("interrupted; finished steps are saved: continue with 'transfuse resume RUN_DIR'", file=sys.stderr)
        code = 130
    _end(code)


if __name__ == "__main__":
    main()
