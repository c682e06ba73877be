"""Benchmark results are tied to a clean commit: the dirty-tree refusal, drafts, and RESULTS.md."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

from benchmarks import common as C


def git(repo: Path, *args: str) -> None:
    subprocess.run(["git", "-c", "user.email=t@example.com", "-c", "user.name=t", *args], cwd=repo, check=True, capture_output=True)


@pytest.fixture()
def repo(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A git checkout with one tracked source file and the benchmarks' output folders; the
    benchmark plumbing pointed at it."""
    root = tmp_path / "repo"
    (root / "benchmarks" / "results").mkdir(parents=True)
    (root / "code.py").write_text("x = 1\n")
    old = {
        "date": "d",
        "commit": "0000000+dirty",
        "machine": "m",
        "smoke": False,
        "rows": [{"benchmark": "b", "variant": "old-run", "metric": "m", "value": 1.0}],
    }
    (root / "benchmarks" / "results" / "old.json").write_text(json.dumps(old))
    (root / "benchmarks" / "RESULTS.md").write_text("# old\n")
    git(root, "init", "-q")
    git(root, "add", "-A")
    git(root, "commit", "-qm", "start")
    monkeypatch.setattr(C, "ROOT", root)
    monkeypatch.setattr(C, "RESULTS_DIR", root / "benchmarks" / "results")
    monkeypatch.setattr(C, "RESULTS_MD", root / "benchmarks" / "RESULTS.md")
    monkeypatch.setattr(C.RunMode, "smoke", False)
    monkeypatch.setattr(C.RunMode, "draft", False)
    monkeypatch.setattr(C.RunMode, "start_state", None)
    return root


ROWS = [{"benchmark": "b", "variant": "v", "metric": "m", "value": 1.5, "wall_s": 2.0}]


def test_tree_state_ignores_benchmark_output_but_not_code(repo: Path) -> None:
    assert C.tree_state().dirty == []
    (repo / "benchmarks" / "results" / "old.json").write_text('{"changed": 1}')
    (repo / "benchmarks" / "RESULTS.md").write_text("# regenerated\n")
    (repo / "untracked.py").write_text("")
    assert C.tree_state().dirty == [], "the benchmarks' own output and untracked files do not make the tree dirty"
    (repo / "code.py").write_text("x = 2\n")
    state = C.tree_state()
    assert state.dirty == ["code.py"] and state.label.endswith("+dirty")


def test_full_run_from_dirty_tree_is_refused_before_any_work(repo: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (repo / "code.py").write_text("x = 2\n")
    with pytest.raises(SystemExit) as e:
        C.base_parser("t").parse_args([])
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert "dirty tree" in err and "code.py" in err and "--draft" in err
    C.base_parser("t").parse_args(["--smoke"])  # smoke and draft runs are allowed
    C.base_parser("t").parse_args(["--draft"])
    assert C.RunMode.draft


def test_clean_run_is_published_with_model_and_load(repo: Path) -> None:
    C.base_parser("t").parse_args([])
    path = C.write_result("demo", ROWS, smoke=False, model="zoo minilm-l6")
    assert path.name == "demo.json"
    data = json.loads(path.read_text())
    assert not data["draft"] and not data["commit"].endswith("+dirty") and data["load_start"] is not None and data["load_end"] is not None
    md = (repo / "benchmarks" / "RESULTS.md").read_text()
    main_table = md.split("## Earlier")[0]
    assert "| b | v | zoo minilm-l6 | m | 1.5000 |" in main_table and data["commit"] in main_table
    assert f"{data['load_start']} / {data['load_end']}" in main_table


def test_draft_never_reaches_results_md(repo: Path) -> None:
    (repo / "code.py").write_text("x = 2\n")
    C.base_parser("t").parse_args(["--draft"])
    path = C.write_result("demo", ROWS, smoke=False, model="zoo minilm-l6")
    assert path.name == "demo.draft.json" and json.loads(path.read_text())["draft"]
    assert (repo / "benchmarks" / "RESULTS.md").read_text() == "# old\n"
    C.update_results_md()
    assert "| b | v |" not in (repo / "benchmarks" / "RESULTS.md").read_text()


def test_tree_dirtied_during_the_run_gives_a_draft_and_fails(repo: Path, capsys: pytest.CaptureFixture[str]) -> None:
    C.base_parser("t").parse_args([])  # clean at the start
    (repo / "code.py").write_text("x = 2\n")  # an edit while the benchmark runs
    with pytest.raises(SystemExit) as e:
        C.write_result("demo", ROWS, smoke=False, model="zoo minilm-l6")
    assert e.value.code == 1
    assert (repo / "benchmarks" / "results" / "demo.draft.json").is_file()
    assert not (repo / "benchmarks" / "results" / "demo.json").exists()
    assert (repo / "benchmarks" / "RESULTS.md").read_text() == "# old\n"
    assert "kept as a draft" in capsys.readouterr().err


def test_dirty_and_old_results_are_listed_apart(repo: Path) -> None:
    results = repo / "benchmarks" / "results"
    (results / "old.json").unlink()
    base = {"date": "d", "machine": "m", "smoke": False}
    row = lambda v: [{"benchmark": "b", "variant": v, "metric": "m", "value": 1.0, "model": "x"}]  # noqa: E731
    (results / "clean.json").write_text(json.dumps({**base, "commit": "abc1234", "draft": False, "load_start": 0.5, "load_end": 0.7, "rows": row("clean-run")}))
    (results / "dirty.json").write_text(json.dumps({**base, "commit": "abc1234+dirty", "rows": row("dirty-run")}))
    (results / "before-rules.json").write_text(json.dumps({**base, "commit": "abc1234", "rows": row("no-load-run")}))
    (results / "x.smoke.json").write_text(json.dumps({**base, "smoke": True, "commit": "abc1234", "rows": row("smoke-run")}))
    (results / "y.draft.json").write_text(json.dumps({**base, "draft": True, "commit": "abc1234", "load_start": 1, "load_end": 1, "rows": row("draft-run")}))
    C.update_results_md()
    published, earlier = (repo / "benchmarks" / "RESULTS.md").read_text().split("## Earlier, unverified (dirty tree)")
    assert "clean-run" in published and "dirty-run" not in published and "no-load-run" not in published
    assert "dirty-run" in earlier and "no-load-run" in earlier
    assert "smoke-run" not in published + earlier and "draft-run" not in published + earlier
