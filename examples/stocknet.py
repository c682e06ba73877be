"""Finance, text + numbers: StockNet tweets and past prices -> the day's movement up / down (fusion).

Data: ``<data-root>/stocknet_subset/`` with ``price/raw/<SYM>.csv`` (Yahoo daily prices) and
``tweet/preprocessed/<SYM>/<YYYY-MM-DD>`` (JSON lines of tokenised tweets), for 10 stocks.

One row per (stock, trading day D) in 2014-2015, following the StockNet convention:

* label: the day's movement ``AdjClose[D] / AdjClose[previous trading day] - 1``: ``up`` above
  0.55 %, ``down`` below -0.5 %; days in between are dropped;
* ``text``: the stock's tweets of the ``--tweet-days`` (default 5) calendar days *before* D, newest
  first, duplicates removed (tweets dated D itself are never used);
* numeric features from prices strictly *before* D only (no leakage): the last five daily returns
  (``ret_1`` = the return of the last trading day before D), the 10-day momentum and volatility,
  the last day's volume against its previous 5-day mean (log ratio), and its high-low range.
  ``price_last_date`` and ``tweets_last_date`` record the newest date each row's inputs used.

Chronological split (the paper's): train before 2015-08-01, validation 2015-08-01 .. 2015-09-30,
test 2015-10-01 .. 2015-12-31.

    python -m examples.stocknet                     # tweets + prices, gated fusion
    python -m examples.stocknet --inputs prices     # prices only (or: text)
    python -m examples.stocknet --smoke
"""

from __future__ import annotations

import argparse
import json
import sys
from datetime import date, timedelta
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from examples._common import SEED, balanced_head, base_config, require, run_example, split_limits, with_recipe, write_tables, zoo

NAME = "stocknet"
DATA_DIR = "stocknet_subset"
REQUIRED = ("price/raw", "tweet/preprocessed")
SMOKE_LIMIT = 160
TEXT, LABEL = "text", "movement"
UP, DOWN = 0.0055, -0.005
START, END = date(2014, 1, 1), date(2015, 12, 31)
VALIDATION_START, TEST_START = date(2015, 8, 1), date(2015, 10, 1)
TWEET_DAYS = 5
MAX_TWEETS = 20
MAX_TEXT_CHARS = 2000
RETURN_LAGS = 5
PRICE_FEATURES = [f"ret_{k}" for k in range(1, RETURN_LAGS + 1)] + ["mom_10", "vol_10", "volume_change", "range_1"]
MIN_HISTORY = 12  # prices needed before the target day
INPUT_SETS = ("both", "text", "prices")


# -- prices -------------------------------------------------------------------------------------
def symbols(data_root: Path) -> list[str]:
    """The stocks that have both a price file and a tweet folder."""
    folder = require(data_root, DATA_DIR, REQUIRED)
    return sorted(p.stem for p in (folder / "price" / "raw").glob("*.csv") if (folder / "tweet" / "preprocessed" / p.stem).is_dir())


def read_prices(data_root: Path, symbol: str) -> pd.DataFrame:
    """Daily prices of ``symbol``, sorted by date: ``date`` (datetime.date), ``high``, ``low``,
    ``close``, ``adj_close``, ``volume``."""
    path = require(data_root, DATA_DIR, REQUIRED) / "price" / "raw" / f"{symbol}.csv"
    frame = pd.read_csv(path)
    frame = frame.rename(columns={"Date": "date", "High": "high", "Low": "low", "Close": "close", "Adj Close": "adj_close", "Volume": "volume"})
    frame["date"] = pd.to_datetime(frame["date"]).dt.date
    return frame[["date", "high", "low", "close", "adj_close", "volume"]].sort_values("date").reset_index(drop=True)


def price_features(history: pd.DataFrame) -> dict[str, float]:
    """Features from ``history``: the prices known before the target day (sorted by date; the
    caller passes only rows dated before it). Uses the last :data:`MIN_HISTORY` rows."""
    if len(history) < MIN_HISTORY:
        raise ValueError(f"need {MIN_HISTORY} days of price history, got {len(history)}")
    h = history.iloc[-MIN_HISTORY:]
    adj = h["adj_close"].to_numpy(dtype=np.float64)
    returns = adj[1:] / adj[:-1] - 1.0  # returns[-1] is the last day before the target
    volume = h["volume"].to_numpy(dtype=np.float64)
    last = h.iloc[-1]
    out = {f"ret_{k}": float(returns[-k]) for k in range(1, RETURN_LAGS + 1)}
    out["mom_10"] = float(adj[-1] / adj[-11] - 1.0)
    out["vol_10"] = float(returns[-10:].std())
    out["volume_change"] = float(np.log(max(volume[-1], 1.0) / max(volume[-6:-1].mean(), 1.0)))
    out["range_1"] = float((last["high"] - last["low"]) / last["close"])
    return out


def movement_label(change: float) -> str | None:
    return "up" if change > UP else "down" if change < DOWN else None


# -- tweets -------------------------------------------------------------------------------------
def read_tweets(data_root: Path, symbol: str) -> dict[date, list[str]]:
    """``{day: [tweet text, ...]}`` newest first within a day, duplicates removed."""
    folder = require(data_root, DATA_DIR, REQUIRED) / "tweet" / "preprocessed" / symbol
    out: dict[date, list[str]] = {}
    for path in sorted(folder.iterdir()):
        try:
            day = date.fromisoformat(path.name)
        except ValueError:
            continue
        items = []
        for line in path.read_text(encoding="utf-8").splitlines():
            if not line.strip():
                continue
            obj = json.loads(line)
            tokens = obj.get("text") or []
            text = " ".join(tokens) if isinstance(tokens, list) else str(tokens)
            stamp = pd.to_datetime(obj.get("created_at"), format="%a %b %d %H:%M:%S %z %Y", errors="coerce")
            items.append((float("-inf") if pd.isna(stamp) else stamp.timestamp(), text.strip()))
        items.sort(key=lambda x: x[0], reverse=True)  # newest first; undated last
        seen: set[str] = set()
        texts = [t for _, t in items if t and not (t in seen or seen.add(t))]
        if texts:
            out[day] = texts
    return out


def tweet_window(tweets: dict[date, list[str]], target: date, days: int = TWEET_DAYS) -> tuple[str, date | None, int]:
    """The concatenated tweets of the ``days`` calendar days before ``target`` (newest first), the
    newest day used, and how many tweets went in."""
    picked: list[str] = []
    seen: set[str] = set()
    newest: date | None = None
    for back in range(1, days + 1):
        day = target - timedelta(days=back)
        for text in tweets.get(day, []):
            if len(picked) >= MAX_TWEETS:
                break
            if text in seen:
                continue
            seen.add(text)
            picked.append(text)
            newest = newest or day
    joined = " | ".join(picked)[:MAX_TEXT_CHARS]
    return joined, newest, len(picked)


# -- rows ---------------------------------------------------------------------------------------
def split_of(day: date) -> str:
    return "train" if day < VALIDATION_START else "validation" if day < TEST_START else "test"


def build_rows(data_root: Path, symbols_: list[str] | None = None, tweet_days: int = TWEET_DAYS) -> pd.DataFrame:
    """One row per (symbol, labelled trading day in 2014-2015): ``symbol, date, split, text,
    n_tweets, tweets_last_date, price_last_date, <PRICE_FEATURES>, movement``."""
    data_root = Path(data_root)
    rows = []
    for symbol in symbols_ or symbols(data_root):
        prices = read_prices(data_root, symbol)
        tweets = read_tweets(data_root, symbol)
        adj = prices["adj_close"].to_numpy(dtype=np.float64)
        for i in range(MIN_HISTORY, len(prices)):
            day = prices.at[i, "date"]
            if not START <= day <= END:
                continue
            label = movement_label(adj[i] / adj[i - 1] - 1.0)  # the target day's own move: label only
            if label is None:
                continue
            history = prices.iloc[:i]  # strictly before the target day
            text, newest, n = tweet_window(tweets, day, tweet_days)
            rows.append(
                {
                    "symbol": symbol,
                    "date": day.isoformat(),
                    "split": split_of(day),
                    TEXT: text,
                    "n_tweets": n,
                    "tweets_last_date": newest.isoformat() if newest else "",
                    "price_last_date": history["date"].iloc[-1].isoformat(),
                    **price_features(history),
                    LABEL: label,
                }
            )
    return pd.DataFrame(rows)


def load(data_root: Path, tweet_days: int = TWEET_DAYS) -> dict[str, pd.DataFrame]:
    rows = build_rows(Path(data_root), tweet_days=tweet_days)
    return {s: rows[rows["split"] == s].drop(columns="split").reset_index(drop=True) for s in ("train", "validation", "test")}


def prepare(data_root: Path, out_dir: Path, limit: int | None = None) -> dict[str, Path]:
    """Write the three chronological tables to ``out_dir``; ``limit`` caps the training rows
    (a seeded subset balanced over up/down), validation and test get a quarter each."""
    caps = split_limits(limit)
    frames = {s: balanced_head(f, LABEL, caps[s], SEED).sort_values(["date", "symbol"]).reset_index(drop=True) for s, f in load(Path(data_root)).items()}
    return write_tables(frames, Path(out_dir))


def make_config(paths: dict[str, Path], args: argparse.Namespace | None = None) -> dict[str, Any]:
    """Tweets through MiniLM-L6 and the price features through the builtin MLP, gated fusion (the
    gates show how much each modality is used). ``args.inputs``: both / text / prices."""
    which = getattr(args, "inputs", None) or "both"
    inputs = []
    if which in ("both", "text"):
        inputs.append({"column": TEXT, "modality": "text", "encoder": zoo("minilm-l6", max_length=128)})
    if which in ("both", "prices"):
        inputs.append({"column": list(PRICE_FEATURES), "modality": "numeric", "name": "prices", "encoder": {"source": "builtin", "name": "mlp"}})
    config = base_config(
        paths,
        inputs=inputs,
        targets=[{"column": LABEL, "type": "classification"}],
        fusion={"type": "gated" if len(inputs) > 1 else "concat", "hidden_dim": 128, "modality_dropout": 0.1 if len(inputs) > 1 else 0.0},
        train={"epochs": 3, "batch_size": 32, "lr": 3e-5, "head_lr": 1e-3, "seed": SEED, "metric": f"{LABEL}/accuracy"},
        agent={
            "type": "finance",
            "target": LABEL,
            "threshold": 0.55,
            "alerts": [{"label": "down", "above": 0.65, "action": "alert", "message": "likely down day"}],
        },
    )
    return with_recipe(config, "finance", Path(paths["train"]).parent)


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--inputs", choices=INPUT_SETS, default="both", help="tweets + prices (default), text only or prices only")


def _smoke(args: argparse.Namespace) -> None:
    args.batch_size = args.batch_size or 8


def main(argv: list[str] | None = None) -> int:
    return run_example(sys.modules[__name__], argv, smoke_steps=8, smoke_options=_smoke)


if __name__ == "__main__":
    raise SystemExit(main())
