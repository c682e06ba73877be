"""Drift watch (issue 13): the profile a run stores, the scores on new data (``mmagent drift``),
and the server's drift gauges on /metrics after real HTTP traffic."""

from __future__ import annotations

import base64
import shutil
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from typer.testing import CliRunner

from mmagent.demo.toy import tiny_config
from tests.conftest import write_multimodal_table

pytestmark = pytest.mark.slow  # one tiny training run shared by the module (~30 s on 2 cores)


@pytest.fixture(scope="module")
def drift_run(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A tiny trained run (text + image + audio + number -> label) and tables drawn like its
    training data or shifted one way each."""
    from mmagent.config import config_from_dict
    from mmagent.workflow import train

    folder = tmp_path_factory.mktemp("drift")
    cfg = tiny_config(write_multimodal_table(folder, 200, 0, "train.csv"), epochs=2)
    cfg["data"]["validation"] = str(write_multimodal_table(folder, 100, 1, "validation.csv"))
    train(config_from_dict(cfg), folder / "run", progress=False)
    same = write_multimodal_table(folder, 150, 2, "same.csv")
    frame = pd.read_csv(same)
    rng = np.random.default_rng(3)
    tables = {"same": same, "folder": folder, "run": folder / "run"}

    longer = frame.assign(text=[t + " " + " ".join(f"zq{rng.integers(10**6)}" for _ in range(12)) for t in frame.text])
    tables["longer_text"] = _save(longer, folder, "longer_text.csv")
    tables["out_of_range"] = _save(frame.assign(x=frame.x + 10.0), folder, "out_of_range.csv")
    from PIL import Image

    (folder / "bright").mkdir()
    for i, p in enumerate(frame.image):
        pixels = np.asarray(Image.open(folder / p), dtype=np.float32)
        Image.fromarray(np.clip(pixels + 90, 0, 255).astype(np.uint8)).save(folder / f"bright/{i}.png")
    tables["brighter"] = _save(frame.assign(image=[f"bright/{i}.png" for i in range(len(frame))]), folder, "brighter.csv")
    tables["new_label"] = _new_label_rows(folder, len(frame), rng)
    # Label shares moved: traffic drawn like the training data, but of one label only.
    many = pd.read_csv(write_multimodal_table(folder, 450, 4, "many.csv"))
    tables["one_label"] = _save(many[many.label == many.label.iloc[0]], folder, "one_label.csv")
    return tables


def _save(frame: pd.DataFrame, folder: Path, name: str) -> Path:
    frame.to_csv(folder / name, index=False)
    return folder / name


def _new_label_rows(folder: Path, n: int, rng: np.random.Generator) -> Path:
    """Rows of a kind the run never saw: a new word, a yellow patch, a 3 kHz tone."""
    import soundfile as sf
    from PIL import Image

    (folder / "new").mkdir()
    rows = []
    for i in range(n):
        img = np.clip(rng.normal(128, 40, (32, 32, 3)), 0, 255)
        x0, y0 = rng.integers(0, 16, 2)
        img[y0 : y0 + 14, x0 : x0 + 14] = (230, 230, 30)
        Image.fromarray(img.astype(np.uint8)).save(folder / f"new/{i}.png")
        t = np.arange(int(16000 * rng.uniform(0.3, 0.6))) / 16000
        sf.write(folder / f"new/{i}.wav", (0.5 * np.sin(2 * np.pi * 3000 * t) + 0.05 * rng.normal(size=t.size)).astype(np.float32), 16000)
        rows.append({"text": f"the delta case number {i}", "image": f"new/{i}.png", "audio": f"new/{i}.wav", "x": float(rng.normal()), "label": "d"})
    return _save(pd.DataFrame(rows), folder, "new_label.csv")


_CALM: dict[Path, dict] = {}


def _calm(drift_run: dict[str, Path]) -> dict:
    """Scores of the rows drawn like the training data (computed once per run)."""
    from mmagent.lifecycle.drift import drift_scores

    if drift_run["run"] not in _CALM:
        _CALM[drift_run["run"]] = drift_scores(drift_run["run"], drift_run["same"])
    return _CALM[drift_run["run"]]


def _value(result: dict, score: str, inp: str, feature: str | None = None) -> float:
    found = [r["value"] for r in result["scores"] if r["score"] == score and r["input"] == inp and (feature is None or r["feature"] == feature)]
    assert len(found) == 1, (score, inp, feature, result["scores"])
    return found[0]


def test_a_trained_run_stores_its_drift_profile(drift_run: dict[str, Path]) -> None:
    from mmagent.lifecycle.profile import read_profile

    profile = read_profile(drift_run["run"])
    expected = {"text/length", "text/coverage", "image/size", "image/brightness", "audio/duration", "audio/loudness", "x/x"}
    expected |= {f"{k}/embedding_distance" for k in ("text", "image", "audio")}
    assert expected <= set(profile["features"])
    assert profile["rows"] == {"train": 200, "validation": 100, "summarised_train": 200, "summarised_validation": 100}
    # one centroid per training label for each embedded input
    assert profile["centroids"]["text"]["labels"] == ["a", "b", "c"]
    assert sum(profile["predictions"]["label"]["all_shares"].values()) == pytest.approx(1.0)
    assert 0 < profile["predictions"]["confidence"]["mean"] <= 1
    assert sum(profile["features"]["image/brightness"]["shares"]) == pytest.approx(1.0)
    # the training words, e.g. "bravo", are the vocabulary coverage is measured against
    assert "bravo" in profile["vocabulary"]["text"]


def test_rows_like_training_score_low_and_need_no_retraining(drift_run: dict[str, Path]) -> None:
    result = _calm(drift_run)
    assert result["rows"] == 150 and result["enough_rows"]
    assert not result["retrain"], result["reasons"]
    assert max(r["value"] for r in result["scores"] if r["score"] == "psi") < 0.25


@pytest.mark.parametrize(
    ("table", "score", "inp", "feature"),
    [
        ("longer_text", "psi", "text", "length"),
        ("longer_text", "psi", "text", "coverage"),
        ("brighter", "psi", "image", "brightness"),
        ("out_of_range", "psi", "x", "x"),
        ("new_label", "embedding_shift", "image", None),
        ("one_label", "label_shift", "prediction", None),
    ],
)
def test_shifted_rows_raise_the_relevant_score(drift_run: dict[str, Path], table: str, score: str, inp: str, feature: str | None) -> None:
    from mmagent.lifecycle.drift import drift_scores

    base = _value(_calm(drift_run), score, inp, feature)
    shifted = drift_scores(drift_run["run"], drift_run[table])
    assert _value(shifted, score, inp, feature) > max(0.3, 3 * base)
    assert shifted["retrain"]
    assert any(r["score"] == score and r["input"] == inp and r["fired"] for r in shifted["scores"])


def test_the_cli_says_whether_retraining_is_due_and_names_the_input(drift_run: dict[str, Path]) -> None:
    from mmagent.cli import app

    runner = CliRunner()
    calm = runner.invoke(app, ["drift", str(drift_run["run"]), "--data", str(drift_run["same"]), "--device", "cpu"])
    assert calm.exit_code == 0, calm.output
    assert "no retraining is due" in calm.output
    shifted = runner.invoke(app, ["drift", str(drift_run["run"]), "--data", str(drift_run["out_of_range"]), "--device", "cpu"])
    assert shifted.exit_code == 0, shifted.output
    assert "retraining is due:" in shifted.output and "no retraining" not in shifted.output
    assert "input 'x': PSI of x is" in shifted.output
    # thresholds are options: a PSI threshold above every score silences the PSI rule
    lenient = runner.invoke(app, ["drift", str(drift_run["run"]), "--data", str(drift_run["out_of_range"]), "--psi", "1000", "--device", "cpu"])
    assert "input 'x': PSI" not in lenient.output
    bad = runner.invoke(app, ["drift", str(drift_run["run"]), "--data", str(drift_run["same"]), "--psi", "-1"])
    assert bad.exit_code == 2 and "--psi" in bad.output


def test_an_old_run_gets_its_profile_from_mmagent_profile(drift_run: dict[str, Path], tmp_path: Path) -> None:
    from mmagent.cli import app
    from mmagent.lifecycle.profile import PROFILE_FILE

    old = tmp_path / "old"
    shutil.copytree(drift_run["run"], old)
    (old / PROFILE_FILE).unlink()
    runner = CliRunner()
    missing = runner.invoke(app, ["drift", str(old), "--data", str(drift_run["same"])])
    assert missing.exit_code == 2 and f"mmagent profile {old}" in missing.output
    built = runner.invoke(app, ["profile", str(old), "--device", "cpu"])
    assert built.exit_code == 0, built.output
    assert (old / PROFILE_FILE).is_file()
    calm = runner.invoke(app, ["drift", str(old), "--data", str(drift_run["same"]), "--device", "cpu"])
    assert "no retraining is due" in calm.output, calm.output


def _gauges(client: object) -> dict[tuple[str, tuple], float]:
    from prometheus_client.parser import text_string_to_metric_families

    body = client.get("/metrics").text  # type: ignore[attr-defined]
    return {(s.name, tuple(sorted(s.labels.items()))): s.value for f in text_string_to_metric_families(body) for s in f.samples}


def test_metrics_expose_drift_gauges_that_move_after_shifted_traffic(drift_run: dict[str, Path]) -> None:
    from fastapi.testclient import TestClient

    from mmagent.serving.app import create_app
    from mmagent.serving.settings import ServeSettings

    folder = drift_run["folder"]

    def records(table: Path) -> list[dict]:
        """The table's rows as JSON records, images and audio base64-encoded, in a seeded order
        (the toy's text length follows the row number)."""
        frame = pd.read_csv(table).drop(columns=["label"]).sample(frac=1.0, random_state=0)
        for media in ("image", "audio"):
            frame[media] = [base64.b64encode((folder / p).read_bytes()).decode() for p in frame[media]]
        return frame.to_dict("records")

    same, shifted = records(drift_run["same"]), [{**r, "x": r["x"] + 10.0} for r in records(drift_run["longer_text"])]
    psi_x, psi_len = ("mmagent_drift_psi", (("feature", "x"), ("input", "x"))), ("mmagent_drift_psi", (("feature", "length"), ("input", "text")))
    with TestClient(create_app(drift_run["run"], ServeSettings(drift_window=100))) as client:
        for _ in range(600):  # the model loads in the background
            if client.get("/readyz").status_code == 200:
                break
            time.sleep(0.1)
        for i in range(0, 100, 25):
            assert client.post("/v1/act", json={"records": same[i : i + 25]}).status_code == 200
        before = _gauges(client)
        assert before[("mmagent_drift_window_records", ())] == 100
        assert before[psi_x] < 0.25 and before[psi_len] < 0.25
        assert before[("mmagent_drift_retraining_due", ())] == 0
        assert 0 <= before[("mmagent_escalation_share", ())] <= 1
        for i in range(0, 150, 25):
            assert client.post("/v1/predict", json={"records": shifted[i : i + 25]}).status_code == 200
        after = _gauges(client)
        assert after[("mmagent_drift_window_records", ())] == 100  # the window holds the last 100 only
        assert after[psi_x] > 1.0 and after[psi_len] > 1.0
        assert after[("mmagent_drift_retraining_due", ())] == 1


def test_the_drift_window_is_a_bounded_ring_buffer(drift_run: dict[str, Path]) -> None:
    from mmagent.agent import Agent
    from mmagent.lifecycle.monitor import DriftMonitor
    from mmagent.lifecycle.profile import read_profile

    monitor = DriftMonitor(read_profile(drift_run["run"]), Agent.load(drift_run["run"]), window=10)
    for start in range(0, 1000, 7):
        monitor.add({"x/x": list(range(start, start + 7))})
    assert len(monitor.buffers["x/x"]) == 10
    assert list(monitor.buffers["x/x"]) == list(range(991, 1001))  # the newest ten: 1001 values went in
