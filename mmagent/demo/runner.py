"""``mmagent demo``: the main job, done the way a user would — a table goes into ``mmagent fit``,
which infers the columns and searches within a small budget (leaderboard on screen); the agent it
returns then decides on typed and spoken requests with calibrated confidence.

Every dataset here is built offline by this project (``requests.py``, ``datasets.py``); speech is
rendered with the bundled espeak-ng library (``tts.py``), no system package needed.
"""

from __future__ import annotations

import json
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from mmagent.demo import datasets as ds


@dataclass
class DemoPlan:
    """Tables written to the data folder, what to predict, and what the agent is shown after."""

    tables: dict[str, str]  # split -> file name in the data folder
    label: str
    recipe: str
    budget: str
    preset: str
    examples: list[tuple[str, dict[str, Any]]]  # (what it is, record) for the agent to decide on
    encoders: dict[str, dict[str, Any]] = field(default_factory=dict)
    agent: dict[str, Any] = field(default_factory=dict)  # merged into the recipe's agent block


def _write_splits(frame: pd.DataFrame, folder: Path, seed: int = 0) -> dict[str, str]:
    """Write train / validation / test CSVs: by the frame's ``split`` column when it has one
    (held-out templates), else a seeded 70/15/15 split."""
    if "split" in frame:
        parts = {name: frame[frame["split"] == name].drop(columns="split") for name in ("train", "validation", "test")}
    else:
        frame = frame.sample(frac=1.0, random_state=seed).reset_index(drop=True)
        n = len(frame)
        parts = {"train": frame[: int(0.7 * n)], "validation": frame[int(0.7 * n) : int(0.85 * n)], "test": frame[int(0.85 * n) :]}
    for name, part in parts.items():
        part.to_csv(folder / f"{name}.csv", index=False)
    return {name: f"{name}.csv" for name in parts}


def plan_customer_service(folder: Path, quick: bool) -> DemoPlan:
    from mmagent.demo.requests import add_speech, customer_requests, playbook
    from mmagent.demo.tts import speak

    frame = customer_requests(2 if quick else 5, seed=0)
    print(f"rendering {int(0.6 * len(frame))} of {len(frame)} requests to speech (bundled espeak-ng) ...")
    frame = add_speech(frame, folder / "audio", seed=0, fraction=0.6)
    # Spoken-only rows: the model must cope when the text is missing.
    spoken_only = frame[frame["audio"].notna()].sample(frac=0.3, random_state=1).index
    frame.loc[spoken_only, "text"] = None
    (folder / "playbook.json").write_text(json.dumps(playbook(), indent=2))
    examples: list[tuple[str, dict[str, Any]]] = [
        ("typed", {"text": "hello, my new debit card still hasn't come"}),
        ("typed, with typos", {"text": "somone stole my walet and my visa card"}),
        ("typed, ambiguous", {"text": "my transfer failed and i want my money back"}),
        ("typed, out of scope", {"text": "can you recommend a good pizza place nearby"}),
    ]
    for i, sentence in enumerate(["my transfer to my sister failed yesterday", "i want to talk to a real person"]):
        path = folder / f"spoken_{i}.wav"
        speak(sentence, path, rate=140, voice="en-us")
        examples.append((f'spoken: "{sentence}"', {"audio": str(path)}))
    # About 90 validation rows certify no tighter promise at 90 % confidence (a real log of a few
    # thousand requests does: the recipe's default is 5 %); the report states the guarantee.
    agent = {"type": "customer_service", "playbook": str(folder / "playbook.json"), "escalation": {"max_error": 0.2}}
    return DemoPlan(_write_splits(frame, folder), "intent", "customer_service", "2m" if quick else "4m", "fast" if quick else "balanced", examples, agent=agent)


def plan_medical(folder: Path, quick: bool) -> DemoPlan:
    frame = ds.medical_cases(120 if quick else 360, seed=0, folder=folder / "images")
    test = frame.sample(3, random_state=5)
    examples = [(f"case ({row.finding})", {"image": str(folder / row.image), "note": row.note}) for row in test.itertuples()]
    examples.append(("image only, no notes", {"image": str(folder / test.iloc[0]["image"])}))
    small_images = {"image": {"source": "zoo", "name": "efficientnet-lite0", "image_size": 128}}
    # A few dozen validation cases certify no error promise (the recipe's 10 % needs about 100
    # confident ones): the demo's agent reports the 80 % it is surest of and refers the rest.
    coverage = {"escalation": {"target_coverage": 0.8}}
    return DemoPlan(_write_splits(frame, folder), "finding", "medical_imaging", "90s" if quick else "3m", "fast", examples, small_images, agent=coverage)


def plan_finance(folder: Path, quick: bool) -> DemoPlan:
    frame = ds.finance_news(240 if quick else 600, seed=0)
    examples = [
        ("headline + prices", {"headline": "Globex shares slump after profit warning", "return_1d": -2.1, "return_5d": -4.0, "volume_change": 0.9}),
        ("headline only", {"headline": "Hooli raises full-year guidance"}),
        ("prices only", {"return_1d": 1.6, "return_5d": 3.5, "volume_change": 0.4}),
    ]
    coverage = {"escalation": {"target_coverage": 0.8}}  # as the medical demo: too few validation rows for an error promise
    return DemoPlan(_write_splits(frame, folder), "sentiment", "finance", "90s" if quick else "3m", "fast", examples, agent=coverage)


DEMOS: dict[str, Callable[[Path, bool], DemoPlan]] = {"customer-service": plan_customer_service, "medical": plan_medical, "finance": plan_finance}


def run_demo(name: str, out_dir: Path, quick: bool = False) -> Path:
    """Build the dataset in ``out_dir/data``, fit into ``out_dir/run``, show the agent deciding."""
    from mmagent.agent import Agent
    from mmagent.search.fit import fit

    if name not in DEMOS:
        raise ValueError(f"unknown demo {name!r}; available: {sorted(DEMOS)}")
    start = time.perf_counter()
    out_dir = Path(out_dir).resolve()
    data_dir = out_dir / "data"
    data_dir.mkdir(parents=True, exist_ok=True)
    print(f"== mmagent demo: {name} ==\nbuilding the built-in dataset in {data_dir} ...")
    plan = DEMOS[name](data_dir, quick)
    run_dir = out_dir / "run"
    if run_dir.exists():  # the demo's own previous run (fit refuses folders it did not create)
        shutil.rmtree(run_dir)
    print(f"\n== mmagent fit {plan.tables['train']} --label {plan.label} --recipe {plan.recipe} --preset {plan.preset} --time-budget {plan.budget} ==")
    result = fit(
        data_dir / plan.tables["train"],
        plan.label,
        run_dir,
        validation=data_dir / plan.tables["validation"],
        test=data_dir / plan.tables["test"],
        time_budget=plan.budget,
        preset=plan.preset,
        recipe=plan.recipe,
        agent=plan.agent or None,
        encoders=plan.encoders,
    )

    agent = Agent.load(run_dir)
    print("\n== the agent decides ==")
    for what, record in plan.examples:
        decision = agent.act(record, base_dir=data_dir)
        shown = {k: (Path(v).name if k in ("image", "audio") else v) for k, v in record.items()}
        print(f"\n[{what}] {json.dumps(shown)}")
        if decision.transcript:
            print(f'  heard: "{decision.transcript}"')
        print(
            f"  -> {decision.label} (confidence {decision.confidence:.2f}); action: {decision.action}"
            + (f"; escalated: {decision.reason}" if decision.escalated else "")
        )
        if decision.reply:
            print(f"  reply: {decision.reply}")
        if decision.contributions:
            print("  contributions: " + ", ".join(f"{k} {v:+.2f}" for k, v in decision.contributions.items()))
    _summary(run_dir)
    print(f"fit took {result.seconds:.0f} s of a {result.budget_seconds:.0f} s budget; the demo {time.perf_counter() - start:.0f} s in all")
    return run_dir


def _summary(run_dir: Path) -> None:
    metrics = json.loads((run_dir / "metrics.json").read_text())
    print("\n== summary (test split: phrasings held out from training) ==")
    for target, m in metrics.get("test", {}).items():
        print(f"test {target}: accuracy {m.get('accuracy', float('nan')):.3f}, macro-F1 {m.get('macro_f1', float('nan')):.3f} on {m.get('n')} examples")
    calibration = json.loads((run_dir / "calibration.json").read_text())
    for target, c in calibration.items():
        if isinstance(c, dict) and "temperature" in c:
            print(
                f"calibration {target}: temperature {c['temperature']:.2f}; "
                + ", ".join(f"{k} {v:.3f}" for k, v in c.items() if k.startswith("ece") and isinstance(v, float))
            )
    print(f"run folder: {run_dir}\nleaderboard: {run_dir / 'leaderboard.md'}\nreport: {run_dir / 'report.md'}")
