"""AutoGluon's side of ``benchmarks/vs_autogluon.py``, run with the Python of AutoGluon's own
virtual environment (it never imports mmagent: the two tools do not share an environment).

    python _autogluon_runner.py fit TRAIN VALIDATION TEST LABEL BUDGET_S CHECKPOINT OUT
    python _autogluon_runner.py predict OUT TEST LABEL      # a fresh process: rows/s as a user sees it

Each command prints one JSON line (``RESULT {...}``) with what it measured.
"""

from __future__ import annotations

import json
import os
import sys
import time


def _scores(predictor, frame, label: str) -> dict:
    from sklearn.metrics import accuracy_score, f1_score

    start = time.perf_counter()
    predicted = predictor.predict(frame.drop(columns=[label]))
    seconds = time.perf_counter() - start
    truth = frame[label].astype(str).to_numpy()
    predicted = predicted.astype(str).to_numpy()
    return {
        "accuracy": float(accuracy_score(truth, predicted)),
        "macro_f1": float(f1_score(truth, predicted, average="macro")),
        "predict_s": seconds,
        "rows_per_s": len(frame) / seconds,
        "n": len(frame),
    }


def fit(train: str, validation: str, test: str, label: str, budget_s: str, checkpoint: str, out: str) -> dict:
    import pandas as pd
    from autogluon.multimodal import MultiModalPredictor

    frames = [pd.read_csv(p, dtype={label: str}, keep_default_na=False) for p in (train, validation, test)]
    predictor = MultiModalPredictor(label=label, problem_type="multiclass", eval_metric="accuracy", path=out, verbosity=2)
    start = time.perf_counter()
    predictor.fit(
        frames[0],
        tuning_data=frames[1],
        time_limit=int(float(budget_s)),
        # The hub is unreachable: the same MiniLM weights mmagent's zoo loads, from their local folder.
        hyperparameters={"model.names": ["hf_text"], "model.hf_text.checkpoint_name": checkpoint, "env.num_gpus": 0},
        seed=0,
    )
    fit_s = time.perf_counter() - start
    return {"fit_s": fit_s, "validation": _scores(predictor, frames[1], label), "test": _scores(predictor, frames[2], label)}


def predict(out: str, test: str, label: str) -> dict:
    import pandas as pd
    from autogluon.multimodal import MultiModalPredictor

    start = time.perf_counter()
    predictor = MultiModalPredictor.load(out)
    load_s = time.perf_counter() - start
    frame = pd.read_csv(test, dtype={label: str}, keep_default_na=False)
    return {"load_s": load_s, **_scores(predictor, frame, label)}


def main() -> int:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    command, *args = sys.argv[1:]
    result = {"fit": fit, "predict": predict}[command](*args)
    print("RESULT " + json.dumps(result), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
