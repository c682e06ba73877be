"""A hostile user's bad-input matrix: every case is refused before any training work, with a message
that names the file, row (line) and column, through the CLI without a traceback and without a run
folder left behind; ``on_bad_row: skip`` skips rows whose media fail only when decoded."""

from __future__ import annotations

import struct
import zlib
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import soundfile as sf
import yaml
from typer.testing import CliRunner

from mmagent.cli import app
from mmagent.config import config_from_dict
from mmagent.data import DataError, as_table, validate_table
from mmagent.data.validation import METRICS
from mmagent.demo.toy import TINY_BERT

N = 12


def rows(n: int = N) -> list[dict]:
    return [{"text": f"word {i}", "x": str(float(i)), "image": "", "audio": "", "label": "ab"[i % 2]} for i in range(n)]


def config(train: Path, media: bool = False, **train_opts: object) -> dict:
    inputs = [
        {"column": "text", "modality": "text", "encoder": {"source": "hf", "name": "bert", "pretrained": False, "config": TINY_BERT, "max_length": 16}},
        {"column": "x", "modality": "numeric"},
    ]
    if media:
        inputs += [
            {"column": "image", "modality": "image", "encoder": {"source": "timm", "name": "test_resnet", "pretrained": False, "image_size": 32}},
            {
                "column": "audio",
                "modality": "audio",
                "encoder": {"source": "builtin", "name": "mel-cnn", "config": {"width": 8, "channels": 4, "n_mels": 16}, "max_seconds": 0.5},
            },
        ]
    return {
        "data": {"train": str(train)},
        "inputs": inputs,
        "targets": [{"column": "label"}],
        "fusion": {"type": "concat", "hidden_dim": 16},
        "train": {"epochs": 1, "batch_size": 4, "seed": 0, **train_opts},
    }


def write_media(folder: Path) -> None:
    """Good media, and media that fail only when decoded (or whose header alone is over a limit)."""
    from PIL import Image

    Image.fromarray(np.random.default_rng(0).integers(0, 255, (16, 16, 3), dtype=np.uint8)).save(folder / "ok.png")
    png = (folder / "ok.png").read_bytes()
    (folder / "bad_idat.png").write_bytes(_patch_chunk(png, b"IDAT", lambda d: d[:4] + bytes(b ^ 0xFF for b in d[4:])))
    (folder / "huge.png").write_bytes(_patch_chunk(png, b"IHDR", lambda d: struct.pack(">II", 8000, 8000) + d[8:]))  # 64 Mpx
    sf.write(folder / "ok.wav", 0.1 * np.sin(np.arange(4000) / 5).astype(np.float32), 8000)
    full = (folder / "ok.wav").read_bytes()
    (folder / "truncated.wav").write_bytes(full[: len(full) // 2])
    nan = np.zeros(4000, np.float32)
    nan[100] = np.nan
    sf.write(folder / "nan.wav", nan, 8000, subtype="FLOAT")
    (folder / "garbage.mp3").write_bytes(np.random.default_rng(1).bytes(3000))


def _patch_chunk(png: bytes, kind: bytes, change: Callable[[bytes], bytes]) -> bytes:
    """Rewrite one PNG chunk's data and give it a valid CRC (so only decoding can tell)."""
    at = png.index(kind)
    length = int.from_bytes(png[at - 4 : at], "big")
    data = change(png[at + 4 : at + 4 + length])
    return png[: at - 4] + len(data).to_bytes(4, "big") + kind + data + zlib.crc32(kind + data).to_bytes(4, "big") + png[at + 8 + length :]


def _set(row: int, **cells: str) -> Callable[[list[dict]], None]:
    return lambda rs: rs[row].update(cells)


# case id -> (change the rows, change the config, media?, words the message must contain)
CASES: dict[str, tuple] = {
    "single-class label": (lambda rs: [r.update(label="a") for r in rs], None, False, ["'label'", "single class ['a']", "at least 2"]),
    "inf in numeric": (_set(2, x="inf"), None, False, ["row 3 (line 4), column 'x'", "finite", "'inf'"]),
    "-inf in numeric": (_set(4, x="-inf"), None, False, ["row 5 (line 6), column 'x'", "finite"]),
    "1e300 in numeric": (_set(6, x="1e300"), None, False, ["row 7 (line 8), column 'x'", "'1e300'"]),
    "nan text in numeric": (_set(1, x="nan"), None, False, ["row 2 (line 3), column 'x'", "finite"]),
    "metric typo": (None, lambda c: c["train"].update(metric="label/acurracy"), False, ["'acurracy'", "did you mean 'accuracy'", "label/macro_f1"]),
    "metric on unknown target": (None, lambda c: c["train"].update(metric="lable/accuracy"), False, ["unknown target 'lable'", "did you mean 'label'"]),
    "header-only table": (lambda rs: rs.clear(), None, False, ["train.csv", "no data rows"]),
    "2-row table": (lambda rs: rs.__delitem__(slice(2, None)), None, False, ["train.csv", "too few rows: need at least 4"]),
    "numeric column empty in every row": (lambda rs: [r.update(x="") for r in rs], None, False, ["column 'x'", "empty in every training row"]),
    "unknown column": (None, lambda c: c["inputs"][0].update(column="txet"), False, ["inputs[0].column = 'txet'", "did you mean 'text'", "'label'"]),
    "64-Mpx image": (_set(3, image="huge.png"), None, True, ["row 4 (line 5), column 'image'", "8000 x 8000", "40,000,000-pixel limit"]),
    "PNG with a bad IDAT": (_set(5, image="bad_idat.png"), None, True, ["row 6 (line 7), column 'image'", "corrupt"]),
    "garbage mp3": (_set(7, audio="garbage.mp3"), None, True, ["row 8 (line 9), column 'audio'", "garbage.mp3"]),
    "NaN samples in a WAV": (_set(8, audio="nan.wav"), None, True, ["row 9 (line 10), column 'audio'", "NaN"]),
    "truncated WAV": (_set(9, audio="truncated.wav"), None, True, ["row 10 (line 11), column 'audio'", "truncated"]),
}


def _good_media(rs: list[dict]) -> None:
    for r in rs:
        r.update(image="ok.png", audio="ok.wav")


@pytest.mark.parametrize("case", list(CASES))
def test_refused_before_training_with_file_row_column(case: str, tmp_path: Path) -> None:
    change_rows, change_config, media, words = CASES[case]
    rs = rows()
    if media:
        write_media(tmp_path)
        _good_media(rs)
    if change_rows:
        change_rows(rs)
    train = tmp_path / "train.csv"
    pd.DataFrame(rs, columns=["text", "x", "image", "audio", "label"]).to_csv(train, index=False)
    raw = config(train, media)
    if change_config:
        change_config(raw)
    cfg_path = tmp_path / "cfg.yaml"
    cfg_path.write_text(yaml.safe_dump(raw))
    run = tmp_path / "run"
    result = CliRunner().invoke(app, ["train", str(cfg_path), "-o", str(run), "--quiet"])
    assert result.exit_code == 2, result.output
    assert isinstance(result.exception, SystemExit), f"a traceback instead of a message: {result.exception!r}"
    message = result.stderr
    for w in words:
        assert w in message, f"{w!r} not in: {message}"
    assert "validation size" not in message and "data.validation_fraction" not in message or case == "2-row table"
    assert not run.exists(), "a refused run leaves no folder behind"


def test_duplicate_column_header(tmp_path: Path) -> None:
    train = tmp_path / "train.csv"
    train.write_text("text,x,x,label\n" + "".join(f"w{i},{i},{i},{'ab'[i % 2]}\n" for i in range(N)))
    run = tmp_path / "run"
    cfg_path = tmp_path / "cfg.yaml"
    cfg_path.write_text(yaml.safe_dump(config(train)))
    result = CliRunner().invoke(app, ["train", str(cfg_path), "-o", str(run), "--quiet"])
    assert result.exit_code == 2 and isinstance(result.exception, SystemExit)
    assert "train.csv" in result.stderr and "duplicate column header(s) ['x']" in result.stderr
    assert not run.exists()
    with pytest.raises(DataError, match=r"duplicate column header\(s\) \['x'\]"):
        as_table(pd.DataFrame([[1, 2]], columns=["x", "x"]))


def test_duplicate_key_and_bad_line_in_jsonl(tmp_path: Path) -> None:
    from mmagent.data import read_table

    path = tmp_path / "t.jsonl"
    path.write_text('{"text": "a", "label": "x"}\n{"text": "b", "text": "c", "label": "y"}\nnot json\n')
    with pytest.raises(DataError) as info:
        read_table(path)
    assert "line 2" in str(info.value) and "duplicate key(s) ['text']" in str(info.value)
    assert "line 3" in str(info.value)


@pytest.mark.parametrize("bad", [5, ["a", "b"], {"k": 1}])
def test_text_that_is_not_a_string_in_the_python_api(bad: object, tmp_path: Path) -> None:
    from mmagent.search.fit import fit

    rs = [{"text": f"word {i}", "x": float(i), "label": "ab"[i % 2]} for i in range(N)]
    rs[4]["text"] = bad
    run = tmp_path / "run"
    with pytest.raises(DataError) as info:  # a table given as a DataFrame (what fit's Python API takes), checked like a file
        fit(pd.DataFrame(rs), "label", run, time_budget=20, progress=False)
    kind = "number" if isinstance(bad, int) else type(bad).__name__
    assert f"row 5, column 'text': holds {kind}" in str(info.value) and "where its other rows hold text" in str(info.value)
    assert not run.exists()


def test_validation_split_names_rows_of_the_file(tmp_path: Path) -> None:
    rs = rows()
    table = as_table(pd.DataFrame(rs)).subset([7, 9])
    assert table.where(1) == "row 10"


def test_skip_mode_skips_rows_whose_media_fail_when_decoded(tmp_path: Path) -> None:
    from mmagent.training.trainer import train

    write_media(tmp_path)
    rs = rows(16)
    _good_media(rs)
    rs[3]["image"], rs[5]["audio"], rs[8]["audio"], rs[10]["image"] = "bad_idat.png", "nan.wav", "garbage.mp3", "huge.png"
    path = tmp_path / "train.csv"
    pd.DataFrame(rs).to_csv(path, index=False)
    raw = config(path, media=True)
    raw["data"].update(on_bad_row="skip", validation=str(path))
    cfg = config_from_dict(raw)
    table, problems = validate_table(as_table(path), cfg.inputs, cfg.targets, "skip")
    assert [(p.row + 1, p.column) for p in problems] == [(4, "image"), (6, "audio"), (9, "audio"), (11, "image")]
    assert len(table) == 12 and "bad_idat.png" not in set(table.frame["image"])
    raw["train"]["max_steps"] = 1
    train(config_from_dict(raw), tmp_path / "run", progress=False)
    skipped = pd.read_csv(tmp_path / "run" / "skipped_rows.csv")
    assert sorted(set(skipped["row"])) == [4, 6, 9, 11]


def test_every_allowed_metric_is_reported() -> None:
    """train.metric is checked against METRICS: each name must be one the validation computes."""
    from mmagent.metrics import target_metrics
    from mmagent.specs import TargetSpec

    y2 = np.array([0, 1, 1, 0])
    probs = np.array([[0.8, 0.2], [0.3, 0.7], [0.6, 0.4], [0.4, 0.6]])
    produced = {
        "classification": target_metrics(TargetSpec(column="c", labels=["a", "b"]), probs, y2),
        "multilabel": target_metrics(TargetSpec(column="m", type="multilabel", labels=["a", "b"]), probs, np.array([[1, 0], [0, 1], [1, 1], [0, 0]])),
        "regression": target_metrics(TargetSpec(column="r", type="regression"), np.array([0.1, 0.5, 0.9, 0.2]), np.array([0.0, 1.0, 1.0, 0.0])),
    }
    for kind, names in METRICS.items():
        assert set(names) <= set(produced[kind]), (kind, sorted(produced[kind]))


def test_python_api_cells_missing_values_and_huge_numbers(tmp_path: Path) -> None:
    """Nullable pandas / NumPy missing values are missing, not errors; a 5000-digit integer or a
    bool in a numeric column is an error naming row and column, not a crash."""
    cfg = config_from_dict(config(tmp_path / "unused.csv"))
    frame = pd.DataFrame({"text": ["a", "b", "c", "d"], "x": pd.array([1, None, 3, 4], dtype="Int64"), "label": ["a", "b", "a", "b"]})
    assert validate_table(as_table(frame), cfg.inputs, cfg.targets)[1] == []
    records = [{"text": "a", "x": np.float32("nan"), "label": "a"}, {"text": "b", "x": 10**5000, "label": "b"}, {"text": 10**5000, "x": True, "label": "a"}]
    with pytest.raises(DataError) as info:
        validate_table(as_table(records), cfg.inputs, cfg.targets)
    found = {(p.row + 1, p.column): p.message for p in info.value.problems}
    assert set(found) == {(2, "x"), (3, "text"), (3, "x")}, found
    assert "integer of about 5000 digits" in found[(2, "x")] and "bool" in found[(3, "x")]
