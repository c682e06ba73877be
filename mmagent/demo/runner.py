"""``mmagent demo``: build a small built-in dataset, fine-tune with the offline zoo encoders,
evaluate, save the run, and show the agent deciding on a few inputs."""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import yaml

from mmagent.demo import datasets as ds


@dataclass
class DemoPlan:
    config: dict[str, Any]
    examples: list[tuple[str, dict[str, Any]]]  # (what it is, record) for the agent to decide on
    notes: list[str]


def _split(frame: Any, folder: Path, seed: int = 0) -> dict[str, str]:
    """Seeded 70/15/15 split, written as CSV next to the media folders."""
    frame = frame.sample(frac=1.0, random_state=seed).reset_index(drop=True)
    n = len(frame)
    parts = {"train": frame[: int(0.7 * n)], "validation": frame[int(0.7 * n) : int(0.85 * n)], "test": frame[int(0.85 * n) :]}
    for name, part in parts.items():
        part.to_csv(folder / f"{name}.csv", index=False)
    return {name: f"{name}.csv" for name in parts}


def plan_customer_service(folder: Path, quick: bool) -> DemoPlan:
    notes = []
    frame = ds.customer_service_utterances(12 if quick else 40, seed=0)
    inputs: list[dict[str, Any]] = [{"column": "text", "modality": "text"}]
    speech = ds.espeak_available()
    if speech:
        print(f"rendering speech for {len(frame)} utterances with espeak-ng ...")
        frame = ds.add_speech(frame, folder / "audio", seed=0, fraction=0.6)
        inputs.append({"column": "audio", "modality": "audio"})
        # Spoken-only rows: the model must cope when the text is missing.
        spoken_only = frame.sample(frac=0.25, random_state=1).index
        frame.loc[spoken_only.intersection(frame.index[frame["audio"].notna()]), "text"] = None
    else:
        notes.append("espeak-ng is not installed, so the demo is text-only (install it, e.g. `apt-get install espeak-ng`, for spoken input).")
    playbook = folder / "playbook.yaml"
    playbook.write_text(yaml.safe_dump(ds.PLAYBOOK, sort_keys=False))
    config = {
        "recipe": "customer_service",
        "data": _split(frame, folder),
        "inputs": inputs,
        "targets": [{"column": "intent", "type": "classification"}],
        "agent": {"type": "customer_service", "playbook": "playbook.yaml", "escalation": {"target_precision": 0.95}},
        "train": {"epochs": 2 if quick else 4, "batch_size": 16, "lr": 8e-5},
    }
    examples: list[tuple[str, dict[str, Any]]] = [
        ("typed", {"text": "hello, my new debit card still hasn't come"}),
        ("typed", {"text": "someone stole my wallet and my visa card"}),
        ("typed", {"text": "can you recommend a good pizza place nearby"}),
    ]
    if speech:
        for i, sentence in enumerate(["my transfer to my sister failed yesterday", "i want to talk to a real person"]):
            path = folder / f"spoken_{i}.wav"
            ds.speak(sentence, path, "en-us", 140)
            examples.append((f'spoken: "{sentence}"', {"audio": str(path)}))
    return DemoPlan(config, examples, notes)


def plan_medical(folder: Path, quick: bool) -> DemoPlan:
    frame = ds.medical_cases(120 if quick else 360, seed=0, folder=folder / "images")
    config = {
        "recipe": "medical_imaging",
        "data": _split(frame, folder),
        "inputs": [{"column": "image", "modality": "image", "encoder": {"source": "zoo", "name": "efficientnet-lite0", "image_size": 128, "freeze": 3}}, {"column": "note", "modality": "text"}],
        "targets": [{"column": "finding", "type": "classification"}],
        "train": {"epochs": 2 if quick else 5, "batch_size": 16, "lr": 2e-4},
    }
    test = frame.sample(3, random_state=5)
    examples = [(f"case ({row.finding})", {"image": str(folder / row.image), "note": row.note}) for row in test.itertuples()]
    examples.append(("image only, no notes", {"image": str(folder / test.iloc[0]["image"])}))
    return DemoPlan(config, examples, [])


def plan_finance(folder: Path, quick: bool) -> DemoPlan:
    frame = ds.finance_news(240 if quick else 600, seed=0)
    config = {
        "recipe": "finance",
        "data": _split(frame, folder),
        "inputs": [{"column": "headline", "modality": "text"}, {"column": ["return_1d", "return_5d", "volume_change"], "modality": "numeric"}],
        "targets": [{"column": "sentiment", "type": "classification"}],
        "train": {"epochs": 2 if quick else 4, "batch_size": 16, "lr": 8e-5},
    }
    examples = [
        ("headline + prices", {"headline": "Globex shares slump after profit warning", "return_1d": -2.1, "return_5d": -4.0, "volume_change": 0.9}),
        ("headline only", {"headline": "Hooli raises full-year guidance"}),
        ("prices only", {"return_1d": 1.6, "return_5d": 3.5, "volume_change": 0.4}),
    ]
    return DemoPlan(config, examples, [])


DEMOS: dict[str, Callable[[Path, bool], DemoPlan]] = {"customer-service": plan_customer_service, "medical": plan_medical, "finance": plan_finance}


def run_demo(name: str, out_dir: Path, quick: bool = False) -> Path:
    """Build the dataset and config in ``out_dir``, train into ``out_dir/run``, show the agent."""
    from mmagent.agent import Agent
    from mmagent.config import load_config
    from mmagent.training.trainer import train

    if name not in DEMOS:
        raise ValueError(f"unknown demo {name!r}; available: {sorted(DEMOS)}")
    start = time.perf_counter()
    out_dir = Path(out_dir).resolve()
    data_dir = out_dir / "data"
    data_dir.mkdir(parents=True, exist_ok=True)
    print(f"== mmagent demo: {name} ==\nbuilding the built-in dataset in {data_dir} ...")
    plan = DEMOS[name](data_dir, quick)
    for note in plan.notes:
        print(f"note: {note}")
    config_path = data_dir / "config.yaml"
    config_path.write_text(yaml.safe_dump(plan.config, sort_keys=False))
    config = load_config(config_path)
    run_dir = out_dir / "run"
    if run_dir.exists():
        import shutil

        shutil.rmtree(run_dir)
    print(f"fine-tuning {', '.join(f'{i.key} ({i.encoder.source}:{i.encoder.name})' for i in config.inputs)} with {config.fusion.type} fusion ...")
    result = train(config, run_dir)

    agent = Agent.load(run_dir)
    print("\n== the agent decides ==")
    for what, record in plan.examples:
        decision = agent.act(record, base_dir=data_dir)
        shown = {k: (Path(v).name if k in ("image", "audio") else v) for k, v in record.items()}
        print(f"\n[{what}] {json.dumps(shown)}")
        if decision.transcript:
            print(f'  heard: "{decision.transcript}"')
        print(f"  -> {decision.label} (confidence {decision.confidence:.2f}); action: {decision.action}" + (f"; escalated: {decision.reason}" if decision.escalated else ""))
        if decision.reply:
            print(f"  reply: {decision.reply}")
        if decision.contributions:
            print("  contributions: " + ", ".join(f"{k} {v:+.2f}" for k, v in decision.contributions.items()))

    test = result.metrics.get("test", {})
    print("\n== summary ==")
    for target, m in test.items():
        print(f"test {target}: accuracy {m.get('accuracy', float('nan')):.3f}, macro-F1 {m.get('macro_f1', float('nan')):.3f} on {m.get('n')} examples")
    calib = json.loads((run_dir / "calibration.json").read_text())
    for target, c in calib.items():
        if "temperature" in c:
            print(f"calibration {target}: ECE {c['ece_before']:.3f} -> {c['ece_after']:.3f} (temperature {c['temperature']:.2f})")
    print(f"run folder: {run_dir}\nreport: {run_dir / 'report.md'}\ntook {time.perf_counter() - start:.0f} s")
    return run_dir
