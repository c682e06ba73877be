"""examples/: data preparation on the real datasets in ../shared/data, and one smoke training.

Each test is skipped, with the reason, when its dataset folder is absent. Prepared tables go to
pytest's temp folders, never into the repository.
"""

from __future__ import annotations

import json
from datetime import date
from pathlib import Path
from types import ModuleType

import numpy as np
import pandas as pd
import pytest

from examples import EXAMPLES, banking77, breastmnist, financial_phrasebank, fsdd_speech, stocknet
from examples._common import missing_files
from tests.conftest import SHARED_DATA


def need(module: ModuleType) -> None:
    missing = missing_files(SHARED_DATA, module.DATA_DIR, module.REQUIRED)
    if missing:
        pytest.skip(f"{module.NAME}: dataset not available ({', '.join(missing)}); set MMAGENT_DATA_ROOT or provide ../shared/data")


def read(path: Path) -> pd.DataFrame:
    return pd.read_csv(path, dtype=str, keep_default_na=False)


def check_tables_match_config(module: ModuleType, paths: dict[str, Path], **options: object) -> dict[str, pd.DataFrame]:
    """The config's columns are in every table and mmagent accepts every row (media files exist,
    labels present); returns the tables."""
    import argparse

    from mmagent.config import config_from_dict
    from mmagent.training.splits import load_splits

    raw = module.make_config(paths, argparse.Namespace(**options))
    folder = paths["train"].parent
    assert {raw["data"][s] for s in ("train", "validation", "test")} == {p.name for s, p in paths.items() if s in ("train", "validation", "test")}
    cfg = config_from_dict(raw, base_dir=folder)
    tables = {s: read(paths[s]) for s in ("train", "validation", "test")}
    wanted = {c for inp in cfg.inputs for c in inp.columns} | {t.column for t in cfg.targets}
    for split, frame in tables.items():
        assert wanted <= set(frame.columns), (split, wanted - set(frame.columns))
        assert len(frame) > 0, split
    splits = load_splits(cfg)  # mmagent's own row checks: raises on a missing media file or label
    assert not splits.skipped
    return tables


def test_every_example_has_the_interface() -> None:
    import importlib

    for name in EXAMPLES:
        m = importlib.import_module(f"examples.{name}")
        for attr in ("NAME", "DATA_DIR", "REQUIRED", "SMOKE_LIMIT", "prepare", "make_config", "main"):
            assert hasattr(m, attr), (name, attr)


def test_banking77(tmp_path: Path) -> None:
    need(banking77)
    paths = banking77.prepare(SHARED_DATA, tmp_path, limit=154)
    tables = check_tables_match_config(banking77, paths)
    names = banking77.categories(SHARED_DATA)
    assert len(names) == 77
    full = read(SHARED_DATA / "banking77" / "train.csv")
    assert set(full["category"]) == set(names)
    assert set(tables["train"]["intent"]) == set(names), "a balanced subset of 154 rows has all 77 intents"
    assert len(tables["train"]) == 154
    frames = banking77.load(SHARED_DATA)
    assert (len(frames["train"]), len(frames["validation"]), len(frames["test"])) == (9002, 1001, 3080)
    assert set(frames["validation"]["intent"]) == set(names), "stratified validation split"
    held_out = sorted(frames["train"]["text"].tolist() + frames["validation"]["text"].tolist())
    assert held_out == sorted(full["text"].tolist()), "train + validation partition the official train set"


def test_fsdd_official_split(tmp_path: Path) -> None:
    need(fsdd_speech)
    paths = fsdd_speech.prepare(SHARED_DATA, tmp_path)  # full: only lists the 3,000 files
    tables = check_tables_match_config(fsdd_speech, paths, encoder="whisper-tiny.en")
    idx = {s: t["index"].astype(int) for s, t in tables.items()}
    assert len(tables["test"]) == 300 and idx["test"].between(0, 4).all()
    assert idx["validation"].between(5, 9).all() and len(tables["validation"]) == 300
    assert (idx["train"] >= 10).all() and len(tables["train"]) == 2400
    for t in tables.values():
        assert set(t["digit"]) == {str(d) for d in range(10)}
        assert Path(t["audio"].iloc[0]).is_absolute() and Path(t["audio"].iloc[0]).is_file()
        assert all(Path(a).name.startswith(f"{d}_") for a, d in zip(t["audio"], t["digit"]))
    cfg = fsdd_speech.make_config(paths, None)
    assert cfg["inputs"][0]["encoder"]["freeze"] == "all" and cfg["train"]["cache_frozen_encoders"]
    small = fsdd_speech.prepare(SHARED_DATA, tmp_path / "small", limit=40)
    check_tables_match_config(fsdd_speech, small, encoder="mel-cnn")


def test_breastmnist(tmp_path: Path) -> None:
    need(breastmnist)
    arrays = breastmnist.load_arrays(SHARED_DATA)
    assert {s: len(y) for s, (x, y) in arrays.items()} == {"train": 546, "validation": 78, "test": 156}
    paths = breastmnist.prepare(SHARED_DATA, tmp_path, limit=24)
    tables = check_tables_match_config(breastmnist, paths)
    from PIL import Image

    for split, t in tables.items():
        assert set(t["finding"]) == {"malignant", "normal_or_benign"}, split
        for rel, i, finding in zip(t["image"], t["source_index"].astype(int), t["finding"]):
            png = np.asarray(Image.open(tmp_path / rel))
            x, y = arrays[split][0][i], arrays[split][1][i]
            assert np.array_equal(png, x), "the PNG holds the npz image unchanged"
            assert finding == ("malignant" if y == 0 else "normal_or_benign")
    assert paths["images"].is_dir()


def test_financial_phrasebank(tmp_path: Path) -> None:
    need(financial_phrasebank)
    frames = financial_phrasebank.load(SHARED_DATA)
    sizes = {s: len(f) for s, f in frames.items()}
    assert sum(sizes.values()) == 4838  # 4,846 lines, 8 repeated sentences kept once
    assert abs(sizes["test"] / 4838 - 0.2) < 0.01
    assert not set(frames["train"]["text"]) & set(frames["test"]["text"])
    assert not set(frames["validation"]["text"]) & set(frames["test"]["text"])
    assert any("\u00e4" in t or "\u00f6" in t for t in frames["train"]["text"]), "latin-1 decoded (Finnish names)"
    assert not any("\r" in t for f in frames.values() for t in f["text"])
    again = financial_phrasebank.load(SHARED_DATA)
    assert again["test"]["text"].tolist() == frames["test"]["text"].tolist(), "the split is fixed"
    paths = financial_phrasebank.prepare(SHARED_DATA, tmp_path, limit=30)
    tables = check_tables_match_config(financial_phrasebank, paths)
    assert set(tables["train"]["sentiment"]) == {"negative", "neutral", "positive"}


def test_stocknet_no_leakage_and_chronological(tmp_path: Path) -> None:
    need(stocknet)
    syms = ["GOOG", "KO"]
    rows = stocknet.build_rows(SHARED_DATA, syms)
    assert set(rows["symbol"]) == set(syms) and set(rows["movement"]) == {"up", "down"}
    # Inputs only use information dated before the target day.
    assert (rows["price_last_date"] < rows["date"]).all()
    dated = rows[rows["tweets_last_date"] != ""]
    assert len(dated) > 0.9 * len(rows)
    assert (dated["tweets_last_date"] < dated["date"]).all()
    # Recompute features from prices truncated at the target day, with everything from that day
    # on replaced by garbage: identical, so no feature can depend on the target day or later.
    rng = np.random.default_rng(0)
    for sym in syms:
        prices = stocknet.read_prices(SHARED_DATA, sym)
        mine = rows[rows["symbol"] == sym]
        for _, row in mine.sample(25, random_state=0).iterrows():
            day = date.fromisoformat(row["date"])
            past = prices[prices["date"] < day]
            spoiled = prices.copy()
            future = spoiled["date"] >= day
            for col in ("high", "low", "close", "adj_close", "volume"):
                spoiled[col] = spoiled[col].astype(float)
                spoiled.loc[future, col] = rng.uniform(1, 1e6, int(future.sum()))
            a = stocknet.price_features(past)
            b = stocknet.price_features(spoiled[spoiled["date"] < day])
            assert a == b
            assert a == pytest.approx({k: float(row[k]) for k in stocknet.PRICE_FEATURES}, rel=1e-9, abs=1e-12)
            # the label is the target day's own move, which the features must not contain
            i = prices.index[prices["date"] == day][0]
            move = prices.at[i, "adj_close"] / prices.at[i - 1, "adj_close"] - 1
            assert row["movement"] == ("up" if move > 0 else "down")
            assert abs(a["ret_1"] - move) > 1e-12
    # Tweets of the target day itself never reach the text.
    tweets = stocknet.read_tweets(SHARED_DATA, "GOOG")
    day = next(d for d in sorted(tweets) if d.isoformat() in set(rows["date"]))
    text, newest, _ = stocknet.tweet_window(tweets, day)
    assert newest is None or newest < day
    only_today = [t for t in tweets[day] if t not in text]
    assert only_today, "some tweets of the target day are not in its text"

    paths = stocknet.prepare(SHARED_DATA, tmp_path, limit=40)
    tables = check_tables_match_config(stocknet, paths, inputs="both")
    assert tables["train"]["date"].max() < "2015-08-01" <= tables["validation"]["date"].min()
    assert tables["validation"]["date"].max() < "2015-10-01" <= tables["test"]["date"].min()
    for which, kinds in (("text", {"text"}), ("prices", {"numeric"})):
        cfg = stocknet.make_config(paths, __import__("argparse").Namespace(inputs=which))
        assert {i["modality"] for i in cfg["inputs"]} == kinds


def test_smoke_training_end_to_end(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """The fastest example (BreastMNIST; 32 px here) trains for a few steps and writes its run."""
    need(breastmnist)
    run = tmp_path / "run"
    code = breastmnist.main(
        ["--data-root", str(SHARED_DATA), "--smoke", "--steps", "2", "--image-size", "32", "--out", str(tmp_path / "prep"), "--run-dir", str(run), "--quiet"]
    )
    assert code == 0
    metrics = json.loads((run / "metrics.json").read_text())
    assert 0.0 <= metrics["test"]["finding"]["accuracy"] <= 1.0
    assert (tmp_path / "prep" / "config.yaml").is_file()
    out = capsys.readouterr().out
    assert "RESULT " in out and "test finding" in out


def test_missing_data_fails_with_a_clear_message(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """No data is a failure (a smoke run that trained nothing must not pass), naming what is missing."""
    from examples import run_all

    assert banking77.main(["--data-root", str(tmp_path), "--prepare-only", "--out", str(tmp_path / "p")]) == 2
    assert "banking77: not found" in capsys.readouterr().err
    assert run_all.main(["--smoke", "--data-root", str(tmp_path)]) == 1
    out = capsys.readouterr().out
    assert out.count("FAILED: dataset not found") == len(EXAMPLES)
    assert all(f"| {name} | failed |" in out for name in EXAMPLES)
