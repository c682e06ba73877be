"""Column inference on generated tables with every column kind, including the tricky ones."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import soundfile as sf
from PIL import Image

from mmagent.data.tables import Table, read_table
from mmagent.search.columns import ignore_split_keys, infer_schema, infer_task, parse_column_types

N = 40


@pytest.fixture()
def table(tmp_path):
    rng = np.random.default_rng(0)
    (tmp_path / "img").mkdir()
    (tmp_path / "wav").mkdir()
    for i in range(N):
        Image.fromarray(rng.integers(0, 255, (8, 8, 3), dtype=np.uint8)).save(tmp_path / "img" / f"{i}.png")
        sf.write(tmp_path / "wav" / f"{i}.wav", rng.normal(0, 0.1, 1600).astype("float32"), 16000)
        (tmp_path / "img" / f"broken{i}.jpg").write_bytes(b"not a jpeg at all")
    words = ["card", "transfer", "refund", "balance", "pin", "rate", "loan", "fee"]
    labels = [["a", "b", "c"][i % 3] for i in range(N)]
    frame = pd.DataFrame(
        {
            "row_id": [str(1000 + i) for i in range(N)],  # numeric-looking id, stored as text
            "customer_id": [f"C{rng.integers(10**6)}x{i}" for i in range(N)],  # string id
            "message": [" ".join(rng.choice(words, size=6)) + f" {i}" for i in range(N)],
            "colour": [["red", "green", "blue"][i % 3] if i % 4 else ["green", "red", "blue"][i % 3] for i in range(N)],
            "amount": [f"{rng.normal(50, 10):.2f}" for _ in range(N)],  # numbers stored as text
            "age": [str(int(rng.integers(18, 90))) if i % 5 else "" for i in range(N)],  # mixed empty cells
            "photo": [f"img/{i}.png" for i in range(N)],
            "scan": [f"img/broken{i}.jpg" for i in range(N)],  # image paths that do not decode
            "voice": [f"wav/{i}.wav" if i % 3 else "" for i in range(N)],
            "empty": ["" for _ in range(N)],
            "source": ["web" for _ in range(N)],
            "when": [f"2015-01-{1 + i % 28:02d}" for i in range(N)],
            "label_code": [{"a": "1", "b": "2", "c": "3"}[v] for v in labels],  # the label in disguise
            "label": labels,
        }
    )
    frame.to_csv(tmp_path / "train.csv", index=False)
    return read_table(tmp_path / "train.csv")


def test_every_kind_is_recognised_with_a_reason(table):
    schema = infer_schema(table, "label")
    kinds = {c.column: c.kind for c in schema.columns}
    assert kinds == {
        "row_id": "ignore",
        "customer_id": "ignore",
        "message": "text",
        "colour": "categorical",
        "amount": "numeric",
        "age": "numeric",
        "photo": "image",
        "scan": "ignore",
        "voice": "audio",
        "empty": "ignore",
        "source": "ignore",
        "when": "ignore",
        "label_code": "ignore",
    }
    reasons = {c.column: c.reason for c in schema.columns}
    assert "id-like" in reasons["row_id"] and "id-like" in reasons["customer_id"]
    assert "stored as text" in reasons["amount"]
    assert "empty in 8 rows" in reasons["age"]
    assert "none of" in reasons["scan"] and "decode" in reasons["scan"]
    assert "copy of the label" in reasons["label_code"]
    assert "dates" in reasons["when"]
    assert "constant" in reasons["source"] and "empty in every row" in reasons["empty"]
    assert schema.task == "classification" and "3 classes" in schema.task_reason
    printed = schema.table()
    assert "photo" in printed and "image file paths" in printed and "label: classification" in printed


def test_column_type_overrides_one_column(table):
    schema = infer_schema(table, "label", parse_column_types(["colour=text", "row_id=numeric"]))
    decided = {c.column: (c.kind, c.overridden) for c in schema.columns}
    assert decided["colour"] == ("text", True) and decided["row_id"] == ("numeric", True)
    assert decided["message"] == ("text", False)


@pytest.mark.parametrize("bad", [["colour=video"], ["colour"], ["nope=text"]])
def test_bad_overrides_and_label_are_named(table, bad):
    with pytest.raises(ValueError, match="colour|nope"):
        infer_schema(table, "label", parse_column_types(bad))


def test_unknown_label_lists_the_columns(table):
    with pytest.raises(ValueError, match="label column 'target' is not in .*message"):
        infer_schema(table, "target")


@pytest.mark.parametrize(
    ("values", "task"),
    [
        (["a|b", "b", "c|a", "a"] * 5, "multilabel"),
        ([f"{x:.3f}" for x in np.linspace(0, 1, 30)], "regression"),
        (["0", "1", "1", "0"] * 5, "classification"),
        ([str(i) for i in range(50)], "regression"),
        (["pos", "neg"] * 10, "classification"),
    ],
)
def test_task_from_the_label(values, task):
    assert infer_task(pd.Series(values))[0] == task


def test_single_class_label_is_an_error():
    with pytest.raises(ValueError, match="single value"):
        infer_task(pd.Series(["x"] * 10))


def test_dataframe_with_real_numbers_and_a_counter():
    frame = pd.DataFrame({"n": range(30), "x": np.linspace(0, 1, 30), "y": ["u", "v"] * 15})
    schema = infer_schema(Table(frame), "y")
    kinds = {c.column: c.kind for c in schema.columns}
    assert kinds == {"n": "ignore", "x": "numeric"}


def _take_table(takes: range, speakers: list[str]) -> Table:
    rows = [{"take": t, "speaker": s, "loudness": 0.1 * t + i, "digit": str((t + i) % 3)} for t in takes for i, s in enumerate(speakers)]
    return Table(pd.DataFrame(rows), source=f"takes{takes.start}.csv")


def test_columns_the_splits_were_cut_on_are_ignored():
    # FSDD-like: recordings 0-4 of each speaker are the test set, 5-49 training. The take number
    # then only says which split a row is in; the speaker column (in every split) stays a feature.
    train = _take_table(range(5, 50), ["jackson", "nicolas", "theo"])
    test = _take_table(range(0, 5), ["jackson", "nicolas", "theo"])
    schema = ignore_split_keys(infer_schema(train, "digit"), train, [test])
    kinds = {c.column: (c.kind, c.reason) for c in schema.columns}
    assert kinds["take"][0] == "ignore" and "splits are cut on it: training 5..49, takes0.csv 0..4" in kinds["take"][1]
    assert kinds["speaker"][0] == "categorical"
    assert kinds["loudness"][0] == "numeric"  # overlaps the training range
    # Split by speaker instead: the speaker column is the cut, the take is a feature again.
    held_out = _take_table(range(5, 50), ["yweweler"])
    schema = ignore_split_keys(infer_schema(train, "digit"), train, [held_out])
    kinds = {c.column: c.kind for c in schema.columns}
    assert kinds["speaker"] == "ignore" and kinds["take"] == "numeric"
    # --column-type wins over the check.
    given = ignore_split_keys(infer_schema(train, "digit", {"take": "numeric"}), train, [test])
    assert {c.column: c.kind for c in given.columns}["take"] == "numeric"


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--label", "target"], "label column 'target' is not in"),
        (["--label", "label", "--column-type", "colour=video"], "unknown kind 'video'"),
        (["--label", "label", "--time-budget", "soon"], "time budget 'soon'"),
        (["--label", "label", "--preset", "turbo"], "--preset 'turbo'"),
        (["--label", "label", "--agent", "missing.yaml"], "--agent: file not found"),
    ],
)
def test_fit_cli_names_what_is_wrong_and_leaves_nothing(table, tmp_path, args, message):
    from typer.testing import CliRunner

    from mmagent.cli import app

    out = tmp_path / "run"
    result = CliRunner().invoke(app, ["fit", table.source, "-o", str(out), *args])
    assert result.exit_code == 2, result.output
    assert message in " ".join(result.output.split()) and "Traceback" not in result.output
    assert not out.exists()


def test_recipe_alerts_on_absent_labels_are_dropped_not_fatal():
    """fit --recipe finance on an up/down task: the recipe's 'negative' alert cannot apply."""
    import pandas as pd

    from mmagent.data.tables import Table
    from mmagent.search.fit_config import fit_recipe_alerts
    from mmagent.search.leaderboard import Progress

    raw = {"targets": [{"column": "movement", "type": "classification"}]}
    table = Table(pd.DataFrame({"text": ["a", "b"], "movement": ["up", "down"]}))
    fit_recipe_alerts(raw, "finance", table, "movement", Progress(10, enabled=False))
    assert raw["agent"]["alerts"] == []
    keep = {"targets": [{"column": "sentiment", "type": "classification"}]}
    fit_recipe_alerts(keep, "finance", Table(pd.DataFrame({"sentiment": ["negative", "positive"]})), "sentiment", Progress(10, enabled=False))
    assert "agent" not in keep  # the recipe's rule applies: nothing to change


def test_audio_window_follows_the_clips(tmp_path):
    from mmagent.search.columns import audio_window

    rng = np.random.default_rng(1)
    seconds = [0.4 + 0.02 * i for i in range(38)] + [7.5, 9.0]  # two outliers among short clips
    for i, s in enumerate(seconds):
        sf.write(tmp_path / f"{i}.wav", rng.normal(0, 0.1, int(16000 * s)).astype("float32"), 16000)
    frame = pd.DataFrame({"clip": [f"{i}.wav" for i in range(len(seconds))] + [""], "label": ["a", "b"] * 20 + ["a"]})
    frame.to_csv(tmp_path / "t.csv", index=False)
    window, why = audio_window(read_table(tmp_path / "t.csv"), "clip")
    assert window == 1.5 and type(window) is float and "95 %" in why  # the 95th percentile (1.46 s) rounded up, not the 9 s outlier
    long_window, _ = audio_window(read_table(tmp_path / "t.csv"), "clip", longest=1.0)
    assert long_window == 1.0
