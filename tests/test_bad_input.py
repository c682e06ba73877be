"""The bad-input report: every problem named by file, row and column; no traceback; nothing written."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import soundfile as sf
import yaml

from mmagent.config import ConfigError, config_from_dict, load_config
from mmagent.data import DataError, read_table, validate_table
from tests.conftest import TINY_BERT


def _config(train: Path) -> dict:
    return {
        "data": {"train": str(train)},
        "inputs": [
            {"column": "text", "modality": "text", "required": True, "encoder": {"source": "hf", "name": "bert", "pretrained": False, "config": TINY_BERT}},
            {"column": "image", "modality": "image", "encoder": {"source": "timm", "name": "resnet18", "pretrained": False, "image_size": 32}},
            {"column": "audio", "modality": "audio", "encoder": {"source": "builtin", "name": "mel-cnn"}},
            {"column": ["price", "volume"], "modality": "numeric"},
        ],
        "targets": [{"column": "label"}],
        "train": {"epochs": 1},
    }


@pytest.fixture()
def bad_table(tmp_path: Path) -> Path:
    from PIL import Image

    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(tmp_path / "ok.png")
    (tmp_path / "corrupt.png").write_bytes(b"\x89PNG\r\n\x1a\n not really a png")
    sf.write(tmp_path / "ok.wav", np.zeros(1600, np.float32), 16000)
    full = (tmp_path / "ok.wav").read_bytes()
    (tmp_path / "truncated.wav").write_bytes(full[: len(full) // 2])
    (tmp_path / "notes.txt").write_text("not audio")
    rows = [
        {"text": "fine row", "image": "ok.png", "audio": "ok.wav", "price": "1.5", "volume": "10", "label": "a"},  # row 1
        {"text": "missing image", "image": "nope.png", "audio": "ok.wav", "price": "1", "volume": "1", "label": "b"},  # row 2
        {"text": "corrupt image", "image": "corrupt.png", "audio": "ok.wav", "price": "1", "volume": "1", "label": "a"},  # row 3
        {"text": "truncated audio", "image": "ok.png", "audio": "truncated.wav", "price": "1", "volume": "1", "label": "a"},  # row 4
        {"text": "unsupported audio", "image": "ok.png", "audio": "notes.txt", "price": "1", "volume": "1", "label": "a"},  # row 5
        {"text": "", "image": "ok.png", "audio": "ok.wav", "price": "1", "volume": "1", "label": "a"},  # row 6: empty required text
        {"text": "bad number", "image": "ok.png", "audio": "ok.wav", "price": "12abc", "volume": "1", "label": "a"},  # row 7
        {"text": "no label", "image": "ok.png", "audio": "ok.wav", "price": "1", "volume": "1", "label": ""},  # row 8
        {"text": "fine again", "image": "", "audio": "", "price": "", "volume": "", "label": "b"},  # row 9: missing modalities are fine
    ]
    path = tmp_path / "train.csv"
    pd.DataFrame(rows).to_csv(path, index=False)
    return path


EXPECTED = {
    2: ("image", "not found"),
    3: ("image", "corrupt"),
    4: ("audio", "truncated"),
    5: ("audio", "unsupported audio format"),
    6: ("text", "empty text"),
    7: ("price", "not a number"),
    8: ("label", "missing label"),
}


def test_every_problem_reported_at_once_with_row_and_column(bad_table: Path) -> None:
    cfg = config_from_dict(_config(bad_table))
    with pytest.raises(DataError) as info:
        validate_table(read_table(bad_table), cfg.inputs, cfg.targets, "error")
    problems = {p.row + 1: p for p in info.value.problems}
    assert set(problems) == set(EXPECTED), str(info.value)
    for row, (column, words) in EXPECTED.items():
        assert problems[row].column == column
        assert words in problems[row].message.lower(), problems[row].message
    message = str(info.value)
    assert "train.csv" in message and "row 2 (line 3), column 'image'" in message


def test_a_large_tables_row_checks_show_progress_on_a_terminal_and_name_the_same_problems(bad_table: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import io

    from mmagent.data import validation

    class Terminal(io.StringIO):
        def isatty(self) -> bool:
            return True

    terminal = Terminal()
    monkeypatch.setattr(sys, "stderr", terminal)
    monkeypatch.setattr(validation, "PROGRESS_ROWS", 5)  # the 9-row table counts as large
    cfg = config_from_dict(_config(bad_table))
    with pytest.raises(DataError) as info:
        validate_table(read_table(bad_table), cfg.inputs, cfg.targets, "error")
    assert {p.row + 1 for p in info.value.problems} == set(EXPECTED)
    assert "checking rows of train.csv" in terminal.getvalue() and "/9.00" in terminal.getvalue()  # the total, on the bar


def test_skip_mode_drops_bad_rows_and_keeps_good(bad_table: Path) -> None:
    cfg = config_from_dict(_config(bad_table))
    table, problems = validate_table(read_table(bad_table), cfg.inputs, cfg.targets, "skip")
    assert [r["text"] for r in table.records] == ["fine row", "fine again"]
    assert len(problems) == len(EXPECTED)


def test_cli_reports_without_traceback_and_writes_nothing(bad_table: Path, tmp_path: Path) -> None:
    cfg_path = tmp_path / "cfg.yaml"
    cfg_path.write_text(yaml.safe_dump(_config(bad_table)))
    run = tmp_path / "run"
    proc = subprocess.run([sys.executable, "-m", "mmagent", "train", str(cfg_path), "-o", str(run), "--quiet"], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr
    assert "row 7 (line 8), column 'price': not a number: '12abc'" in proc.stderr
    assert not run.exists(), "nothing is written when the data is bad"


def test_skip_mode_lists_skipped_rows_in_run_folder(bad_table: Path, tmp_path: Path) -> None:
    from mmagent.training.trainer import train

    raw = _config(bad_table)
    raw["data"]["on_bad_row"] = "skip"
    raw["data"]["validation"] = str(bad_table)  # same file: its good rows validate
    raw["inputs"] = [raw["inputs"][0]]
    result = train(config_from_dict(raw), tmp_path / "run", progress=False)
    skipped = pd.read_csv(tmp_path / "run" / "skipped_rows.csv")
    assert sorted(set(skipped["row"])) == [6, 8]  # empty required text, missing label
    assert result.global_step >= 1


def test_unknown_column_in_config(bad_table: Path) -> None:
    raw = _config(bad_table)
    raw["inputs"][0]["column"] = "txt"
    cfg = config_from_dict(raw)
    with pytest.raises(DataError) as info:
        validate_table(read_table(bad_table), cfg.inputs, cfg.targets)
    assert "inputs[0].column = 'txt'" in str(info.value)
    assert "'text'" in str(info.value), "the message lists the columns that exist"


@pytest.mark.parametrize(
    ("change", "expected"),
    [
        (lambda c: c["inputs"][0]["encoder"].update(source="nope"), "unknown encoder source 'nope'"),
        (lambda c: c.update(fusion={"type": "sum"}), "fusion.type"),
        (lambda c: c["train"].update(lrr=1), "train.lrr: unknown key"),
        (lambda c: c["inputs"][1].update(modality="video"), "inputs.1.modality"),
        (lambda c: c["targets"][0].update(type="ranking"), "targets.0.type"),
    ],
)
def test_config_errors_name_the_key(bad_table: Path, change, expected: str) -> None:
    raw = _config(bad_table)
    change(raw)
    with pytest.raises((ConfigError, ValueError)) as info:
        cfg = config_from_dict(raw)
        from mmagent.model import MultimodalModel

        MultimodalModel(cfg.model_spec())
    assert expected in str(info.value)


def test_set_override_and_yaml_errors(tmp_path: Path, bad_table: Path) -> None:
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(_config(bad_table)))
    cfg = load_config(path, ["train.lr=0.002", "fusion.type=gated", "inputs.0.encoder.freeze=2"])
    assert cfg.train.lr == 0.002 and cfg.fusion.type == "gated" and cfg.inputs[0].encoder.freeze == 2
    with pytest.raises(ConfigError, match="train.epochs"):
        load_config(path, ["train.epochs=zero"])
    path.write_text("data: [unclosed")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(path)
