"""AutoGluon MultiModal side of benchmarks/peers.py: one fit + one test prediction, in AutoGluon's
own virtual environment (benchmarks/.venv-autogluon, made by benchmarks/setup_peers.sh).

    benchmarks/.venv-autogluon/bin/python benchmarks/peers_autogluon.py SPEC.json

SPEC.json (written by peers.py): ``train_csv``, ``test_csv`` (a ``text`` or ``image`` column, the
image column holding file paths, and a ``label`` column), ``column`` (text | image), ``model``
(hf_text | timm_image), ``checkpoint`` (a local folder: transformers format for hf_text,
config.json + pytorch_model.bin for timm_image), ``presets``, ``time_limit`` (seconds or null),
``hyperparameters`` (more overrides over the preset, optional),
``seed``, ``path`` (the predictor's folder, must not exist), ``out`` (the result JSON to write).

Writes ``out``: fit and predict wall seconds, the test predictions (in test_csv's row order) and
the versions of AutoGluon and its stack. Imports nothing of transfuse. Nothing here reaches a hub:
the caller sets HF_HUB_OFFLINE=1 and gives local checkpoints.
"""

from __future__ import annotations

import json
import sys
import time


def main() -> None:
    spec = json.loads(open(sys.argv[1], encoding="utf-8").read())
    t_start = time.perf_counter()
    import pandas as pd
    import torch

    import autogluon.multimodal
    from autogluon.multimodal import MultiModalPredictor

    train = pd.read_csv(spec["train_csv"], keep_default_na=False)
    test = pd.read_csv(spec["test_csv"], keep_default_na=False)
    cols = [spec["column"], "label"]
    train, test = train[cols], test[cols]
    # AutoGluon refuses "multiclass" for a label with two values (SpamAssassin): "binary" there
    problem_type = "binary" if train["label"].nunique() == 2 else "multiclass"
    predictor = MultiModalPredictor(label="label", problem_type=problem_type, eval_metric="accuracy",
                                    path=spec["path"], verbosity=2)
    hyper = {f"model.{spec['model']}.checkpoint_name": spec["checkpoint"], "env.num_gpus": 0,
             **spec.get("hyperparameters", {})}
    t_imported = time.perf_counter()
    t = time.perf_counter()
    predictor.fit(train, presets=spec["presets"], time_limit=spec["time_limit"], hyperparameters=hyper,
                  seed=spec["seed"])
    fit_s = time.perf_counter() - t
    t = time.perf_counter()
    pred = predictor.predict(test[[spec["column"]]])
    predict_s = time.perf_counter() - t
    import timm
    import transformers

    out = {
        "fit_seconds": fit_s, "predict_seconds": predict_s, "import_and_load_seconds": t_imported - t_start,
        "predictions": [str(p) for p in pred.tolist()],
        "n_train": len(train), "n_test": len(test),
        "hyperparameters": {**hyper, "presets": spec["presets"], "time_limit": spec["time_limit"]},
        "versions": {"autogluon.multimodal": autogluon.multimodal.__version__, "torch": torch.__version__,
                     "timm": timm.__version__, "transformers": transformers.__version__,
                     "python": sys.version.split()[0], "torch threads": torch.get_num_threads()},
    }
    try:  # what AutoGluon trained: epochs/steps reached within the time limit (best effort)
        out["fit_summary"] = {k: str(v) for k, v in predictor.fit_summary(verbosity=0).items()}
    except Exception as e:  # noqa: BLE001 - a summary is a nicety; the result stands without it
        out["fit_summary"] = {"error": repr(e)}
    with open(spec["out"], "w", encoding="utf-8") as f:
        json.dump(out, f, indent=1)


if __name__ == "__main__":
    main()
