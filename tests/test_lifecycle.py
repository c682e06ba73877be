"""Champion / challenger: the registry (versions, checksums, the atomic alias pointer), the
promotion rule, and `mmagent compare` / `mmagent promote` on real tiny runs."""

from __future__ import annotations

import json
import shutil
import threading
from pathlib import Path

import pandas as pd
import pytest
from typer.testing import CliRunner

from mmagent.cli import app
from mmagent.lifecycle.compare import AgentScore, Comparison
from mmagent.lifecycle.promote import judge
from mmagent.lifecycle.registry import Registry, RegistryError
from tests.conftest import numeric_table, train_numeric


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("lifecycle")
    train = numeric_table(folder / "train.csv", 200, 0)
    swapped = pd.read_csv(train)
    swapped["label"] = swapped["label"].map({"lo": "hi", "hi": "lo", "mid": "mid"})  # a model that learns this is worse on purpose
    swapped.to_csv(folder / "swapped.csv", index=False)
    champion = train_numeric(train, folder / "champion")
    same = folder / "same"
    shutil.copytree(champion, same)  # another folder, the same model: equal on every metric
    return {
        "folder": folder,
        "eval": numeric_table(folder / "eval.csv", 120, 1),
        "champion": champion,
        "same": same,
        "worse": train_numeric(folder / "swapped.csv", folder / "worse"),
        "other_inputs": train_numeric(numeric_table(folder / "z.csv", 200, 0, column="z"), folder / "other_inputs", epochs=1, column="z"),
    }


# -- the rule ---------------------------------------------------------------------------------------
def _cmp(a_acc: float, b_acc: float, a_rec: dict[str, float], b_rec: dict[str, float], support: dict[str, int], task: str = "classification") -> Comparison:
    def score(acc: float, rec: dict[str, float]) -> AgentScore:
        return AgentScore("r", {"accuracy": acc, "macro_f1": acc}, {k: {"recall": v, "support": support[k]} for k, v in rec.items()})

    return Comparison("eval.csv", "label", task, sum(support.values()), score(a_acc, a_rec), score(b_acc, b_rec))


def test_a_worse_challenger_is_refused() -> None:
    reasons = judge(_cmp(0.90, 0.85, {"a": 0.9}, {"a": 0.9}, {"a": 100}), tolerance=0.01)
    assert reasons and "accuracy" in reasons[0]


def test_an_equal_challenger_within_tolerance_is_accepted() -> None:
    assert judge(_cmp(0.90, 0.895, {"a": 0.90, "b": 0.90}, {"a": 0.895, "b": 0.90}, {"a": 50, "b": 50}), tolerance=0.01) == []
    assert judge(_cmp(0.90, 0.90, {"a": 0.9}, {"a": 0.9}, {"a": 50}), tolerance=0.0) == []


def test_a_well_supported_class_that_got_worse_blocks_it() -> None:
    # better overall, but class "b" (30 examples) lost 30 points of recall
    cmp = _cmp(0.80, 0.85, {"a": 0.80, "b": 0.80}, {"a": 0.95, "b": 0.50}, {"a": 70, "b": 30})
    reasons = judge(cmp, tolerance=0.01, min_support=20)
    assert len(reasons) == 1 and "'b'" in reasons[0] and "30 examples" in reasons[0]
    assert judge(cmp, tolerance=0.01, min_support=31) == []  # too few examples to count: shown, not judged


def test_a_class_drop_that_chance_explains_does_not_block() -> None:
    # 40 examples (a Banking77 intent): two more misses is 5 points, within chance; twelve is not
    two = _cmp(0.90, 0.92, {"a": 0.95}, {"a": 0.90}, {"a": 40})
    assert judge(two, tolerance=0.01) == []
    assert "'a'" in judge(two, tolerance=0.01, z=0.0)[0]  # without the margin, noise would block it
    twelve = _cmp(0.90, 0.92, {"a": 0.95}, {"a": 0.65}, {"a": 40})
    assert "for chance on 40 examples" in judge(twelve, tolerance=0.01)[0]


def test_regression_tolerance_is_relative_and_lower_is_better() -> None:
    a, b = AgentScore("a", {"mae": 10.0, "rmse": 12.0}), AgentScore("b", {"mae": 10.05, "rmse": 12.0})
    assert judge(Comparison("e", "y", "regression", 10, a, b), tolerance=0.01) == []
    b.overall["mae"] = 10.5
    assert "mae" in judge(Comparison("e", "y", "regression", 10, a, b), tolerance=0.01)[0]


# -- the registry -------------------------------------------------------------------------------------
def test_versions_and_checksums(runs: dict[str, Path], tmp_path: Path) -> None:
    reg = Registry.open(tmp_path / "reg", create=True)
    v1 = reg.register(runs["champion"])
    assert reg.register(runs["champion"]).number == v1.number  # the same run, unchanged: the same version
    assert reg.register(runs["same"]).number == v1.number + 1
    assert reg.verified_run(v1) == runs["champion"].resolve()
    assert "model/model.safetensors" in v1.files and "config.json" in v1.files

    copy = tmp_path / "copy"
    shutil.copytree(runs["champion"], copy)
    v3 = reg.register(copy)
    (copy / "calibration.json").write_text('{"label": {"temperature": 3.0}}')  # a file the agent loads, added later
    with pytest.raises(RegistryError, match="added: calibration.json"):
        reg.verified_run(v3)
    (copy / "calibration.json").unlink()
    weights = copy / "model" / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:-1] + b"\0")
    with pytest.raises(RegistryError, match="changed or missing: model/model.safetensors"):
        reg.verified_run(v3)


def test_a_foreign_folder_is_not_made_a_registry(tmp_path: Path) -> None:
    (tmp_path / "mine.txt").write_text("x")
    with pytest.raises(RegistryError, match="not an mmagent registry"):
        Registry.open(tmp_path, create=True)
    with pytest.raises(RegistryError, match="alias"):
        Registry.open(tmp_path / "new", create=True).pointer("../etc")


def test_the_alias_pointer_is_replaced_atomically(runs: dict[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    reg = Registry.open(tmp_path / "reg", create=True)
    v1, v2 = reg.register(runs["champion"]), reg.register(runs["same"])
    reg.set_alias("production", v1)
    # readers polling the pointer while it moves back and forth only ever see a whole pointer
    seen, torn, stop = set(), [], threading.Event()

    def read() -> None:
        while not stop.is_set():
            try:
                seen.add(json.loads((tmp_path / "reg" / "aliases" / "production.json").read_text())["version"])
            except (ValueError, OSError) as e:  # an empty or half-written pointer
                torn.append(repr(e))

    reader = threading.Thread(target=read)
    reader.start()
    try:
        for i in range(300):
            reg.set_alias("production", v2 if i % 2 == 0 else v1)
    finally:
        stop.set()
        reader.join()
    assert seen == {1, 2} and not torn, torn[:3]
    # a write that fails before the rename leaves the old pointer and no stray file
    import mmagent.io

    def fail(src: object, dst: object) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(mmagent.io.os, "replace", fail)
    with pytest.raises(OSError):
        reg.set_alias("production", v2)
    assert reg.holder("production").number == 1
    assert [p.name for p in (tmp_path / "reg" / "aliases").iterdir()] == ["production.json"]


# -- the commands ---------------------------------------------------------------------------------------
def test_compare_writes_the_table(runs: dict[str, Path], tmp_path: Path) -> None:
    result = CliRunner().invoke(
        app, ["compare", str(runs["champion"]), str(runs["worse"]), "--data", str(runs["eval"]), "-o", str(tmp_path / "c.json"), "--latency-records", "4"]
    )
    assert result.exit_code == 0, result.output
    assert "recall hi (n=" in result.output and "ECE on this table" in result.output
    got = json.loads((tmp_path / "c.json").read_text())
    assert got["n"] == 120 and set(got["a"]["per_class"]) == {"lo", "mid", "hi"}
    assert got["a"]["overall"]["accuracy"] > got["b"]["overall"]["accuracy"] + 0.2  # the swapped-label model is worse
    assert got["a"]["latency_p50_ms"] > 0 and got["b"]["throughput_per_s"] > 0
    assert sum(c["support"] for c in got["a"]["per_class"].values()) == 120
    result = CliRunner().invoke(app, ["compare", str(runs["champion"]), str(runs["worse"]), "--data", str(runs["eval"]), "-o", str(tmp_path / "c.md")])
    assert result.exit_code == 0 and "| accuracy |" in (tmp_path / "c.md").read_text()


def test_promote_champion_then_challengers(runs: dict[str, Path], tmp_path: Path) -> None:
    reg_dir = tmp_path / "reg"

    def promote(run: str, *extra: str):
        return CliRunner().invoke(app, ["promote", str(runs[run]), "--data", str(runs["eval"]), "--registry", str(reg_dir), *extra])

    first = promote("champion")
    assert first.exit_code == 0, first.output
    assert "First promotion" in first.output
    reg = Registry(reg_dir)
    assert reg.holder("production").run == str(runs["champion"].resolve())

    worse = promote("worse")
    assert worse.exit_code == 3, worse.output
    assert "refused" in worse.output and "accuracy" in worse.output
    assert reg.holder("production").number == 1  # the champion stays
    refused = [json.loads(p.read_text()) for p in sorted((reg_dir / "decisions").glob("*.json"))][-1]
    assert refused["accepted"] is False and refused["challenger"] == "v2" and refused["reasons"]
    assert refused["comparison"]["b"]["overall"]["accuracy"] < refused["comparison"]["a"]["overall"]["accuracy"]
    assert (reg_dir / "decisions" / (Path(refused["record"]).stem + ".md")).read_text().startswith("# REFUSED")

    other = promote("other_inputs")
    assert other.exit_code == 3 and "inputs differ" in other.output

    equal = promote("same", "--tolerance", "0")
    assert equal.exit_code == 0, equal.output
    pointer = reg.pointer("production")
    assert pointer["version"] == 4 and (reg_dir / pointer["decision"]).is_file()
    assert len(list((reg_dir / "decisions").glob("*.json"))) == 4
