"""``fit`` at any size: samples of the rows when a full pass does not fit the budget, validation
scored on a sample, budgets below the measured minimum refused, and a search that more than one
process shares through one Optuna study in a real PostgreSQL (Debian's package, started here on
a local port)."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import tempfile
import time
from collections import Counter
from pathlib import Path

import pytest

from mmagent.search.ladder import SampleCost
from tests.test_fit import _tiny_encoders


def _table(n: int):
    import pandas as pd

    from mmagent.data.tables import Table

    labels = ["a"] * (n // 2) + ["b"] * (n // 4) + ["c"] * (n - n // 2 - n // 4)
    return Table(pd.DataFrame({"text": [f"row {i}" for i in range(n)], "label": labels}), "t.csv")


def _config(**train):
    from mmagent.config import config_from_dict

    raw = {
        "data": {"train": "t.csv", "validation_rows": train.pop("validation_rows", None)},
        "inputs": [{"column": "text", "modality": "categorical"}],
        "targets": [{"column": "label", "type": "classification"}],
        "train": {"seed": 3, **train},
    }
    return config_from_dict(raw)


def test_samples_are_seeded_stratified_and_keep_file_rows():
    from mmagent.training.splits import Splits

    table = _table(1000)
    splits = Splits(table, _table(400), None).sampled(_config(sample_rows=200, validation_rows=100))
    assert (len(splits.train), len(splits.validation)) == (200, 100)
    assert Counter(r["label"] for r in splits.train.records) == {"a": 100, "b": 50, "c": 50}  # the table's 2:1:1
    again = Splits(table, _table(400), None).sampled(_config(sample_rows=200, validation_rows=100))
    assert splits.train.rows == again.train.rows  # the same rows every time: a candidate and `mmagent train` agree
    assert splits.train.rows == sorted(splits.train.rows) and splits.train.where(0) == f"row {splits.train.rows[0] + 1} (line {splits.train.rows[0] + 2})"
    other = Splits(table, _table(400), None).sampled(_config(sample_rows=200, seed=4))
    assert other.train.rows != splits.train.rows
    whole = Splits(table, _table(400), None)
    assert whole.sampled(_config(sample_rows=5000)) is whole  # no more rows than the table: the table itself


def test_the_trainer_trains_on_the_sample(mm_tables, tmp_path):
    """``train.sample_rows`` reaches the training loop: steps per epoch follow the sample."""
    from mmagent.config import config_from_dict
    from mmagent.training.trainer import train
    from tests.conftest import mm_config

    raw = mm_config(mm_tables, epochs=1, batch_size=10, sample_rows=40)
    result = train(config_from_dict(raw), tmp_path / "run", progress=False)
    assert len(result.splits.train) == 40
    log = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    steps = max(e.get("step", 0) for e in log)
    assert steps == 4  # 40 rows / batches of 10, where the whole split (135 rows) takes 14


def _cost(per_row: float) -> SampleCost:
    return SampleCost(
        load={"text": 0.0},
        encode={"text": per_row},
        train={s: per_row for s in ("probe", "partial", "lora", "full")},
        forward=per_row,
        always_frozen=[],
        tunable=["text"],
    )


def test_validation_is_sampled_only_when_a_pass_costs_too_much_of_the_budget():
    from mmagent.search.plan import MIN_VALIDATION_ROWS, VALIDATION_SHARE, validation_rows

    assert validation_rows(_cost(0.0016), 300.0, 300) is None  # a small validation split is scored whole
    rows = validation_rows(_cost(0.0016), 300.0, 100_000)
    assert rows == int(VALIDATION_SHARE * 300.0 / 0.0016)  # 3 % of five minutes: ~5,600 rows
    assert validation_rows(_cost(0.0016), 3000.0, 100_000) > rows  # more budget, more rows scored
    assert validation_rows(_cost(1.0), 60.0, 100_000) == MIN_VALIDATION_ROWS  # never too few to rank on


def test_a_budget_below_the_measured_minimum_is_refused_with_it():
    from mmagent.search.plan import BudgetTooSmall, check_minimum_budget

    expected = r"time budget 60s .*~105 s \(measured: reading, checking and measuring 40 s, a probe on 1000 rows ~30 s, evaluating and calibrating the winner ~35 s\); give --time-budget 140s"
    with pytest.raises(BudgetTooSmall, match=expected):
        check_minimum_budget(_cost(0.01), 60.0, 40.0, 50_000, 1000, 35.0)
    check_minimum_budget(_cost(0.01), 200.0, 40.0, 50_000, 1000, 35.0)  # enough: no error


def test_promotion_counts_the_passes_it_runs():
    """The reserve counts the rows promotion really runs the winner over: one input means no
    ablation passes (counting three test passes kept minutes of a Banking77 fit unused); every
    extra input adds the test and validation rows once more without it."""
    from mmagent.search.plan import REPORT_SECONDS, promotion_passes, promotion_seconds

    one = promotion_passes(n_train=10_000, n_validation=1_000, n_test=3_000, n_inputs=1, unknown_rows=2_000)
    assert one == 1_000 + 3_000 + 2_000 + 1_000 + 512
    three = promotion_passes(n_train=10_000, n_validation=1_000, n_test=3_000, n_inputs=3, unknown_rows=2_000)
    assert three - one == 3 * 3_000 + 3 * 1_000
    assert promotion_seconds(0.01, one, margin=1.0) == pytest.approx(REPORT_SECONDS + 75.12)
    assert promotion_seconds(0.01, one) > promotion_seconds(0.01, one, margin=1.0)


# --- the search on more than one process -------------------------------------------------------


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _pg_bin(name: str) -> str:
    found = shutil.which(name) or next((str(p) for p in sorted(Path("/usr/lib/postgresql").glob(f"*/bin/{name}"))), None)
    if found is None:
        pytest.fail(f"PostgreSQL's {name} is missing: `make setup` installs it (apt-get install postgresql)")
    return found


@pytest.fixture(scope="module")
def postgres():
    """A private PostgreSQL cluster on a local port (as the postgres user when run as root: the
    server refuses root); its URL carries a password, which must never reach the run folder."""
    folder = Path(tempfile.mkdtemp(prefix="mmagent-pg-"))
    os.chmod(folder, 0o777)
    run_as = ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []
    port = _free_port()
    data = folder / "data"
    subprocess.run([*run_as, _pg_bin("initdb"), "-D", str(data), "-A", "trust", "-U", "postgres"], check=True, capture_output=True)
    options = f"-p {port} -k {folder} -c listen_addresses=127.0.0.1"
    subprocess.run([*run_as, _pg_bin("pg_ctl"), "-D", str(data), "-o", options, "-l", str(folder / "log"), "-w", "start"], check=True, capture_output=True)
    try:
        yield f"postgresql://postgres:s3cret@127.0.0.1:{port}/postgres"
    finally:
        subprocess.run([*run_as, _pg_bin("pg_ctl"), "-D", str(data), "-m", "immediate", "stop"], capture_output=True)
        shutil.rmtree(folder, ignore_errors=True)


@pytest.mark.slow
def test_two_workers_share_one_study_one_leaderboard_one_promotion(mm_tables, postgres, tmp_path):
    import optuna

    from mmagent.search.fit import fit
    from mmagent.search.workers import SPEC_FILE

    out = tmp_path / "run"
    start = time.monotonic()
    result = fit(
        mm_tables["train"],
        "label",
        out,
        time_budget=60,
        encoders=_tiny_encoders(mm_tables["train"]),
        storage=postgres,
        workers=2,
        ensemble=False,
        progress=False,
    )
    assert time.monotonic() - start < 60 * 1.25
    spec = json.loads((out / SPEC_FILE).read_text())
    assert spec["storage"] is None and "s3cret" not in (out / SPEC_FILE).read_text()  # the password stays off the disk
    study = optuna.load_study(study_name=spec["study"], storage=postgres)
    finished = [t for t in study.trials if t.state in (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED)]
    pids = {t.user_attrs["worker"]["pid"] for t in finished}
    assert len(pids) == 2 and os.getpid() in pids  # this process and the worker it started both trained candidates
    on_board = {r.name for r in result.leaderboard.rows if r.run_dir is not None}
    assert len(on_board) == len(finished)  # every worker's candidate on the one leaderboard
    assert (out / "workers" / "1.log").is_file() and "candidate" in (out / "workers" / "1.log").read_text()
    kept = [p.name for p in (out / "trials").iterdir() if (p / "model").is_dir()]
    best = next(r for r in result.leaderboard.rows if r.name == result.best)
    assert (out / "model").is_dir() and kept == [best.run_dir.name]  # one promotion; the other candidates' weights dropped


def test_a_worker_that_died_loses_only_its_trial(tmp_path):
    import optuna

    from mmagent.search.workers import wait_for_workers

    study = optuna.create_study(storage=f"sqlite:///{tmp_path / 's.db'}", study_name="fit-x")
    gone = subprocess.Popen(["true"])
    gone.wait()
    running = study.ask({"train.lr": optuna.distributions.FloatDistribution(1e-5, 1e-3)})
    running.set_user_attr("worker", {"host": socket.gethostname(), "pid": gone.pid})
    done = study.ask({"train.lr": optuna.distributions.FloatDistribution(1e-5, 1e-3)})
    study.tell(done, 0.7)
    wait_for_workers([gone], study, time.time(), grace=5.0)
    states = {t.number: t.state for t in study.trials}
    assert states[running.number] == optuna.trial.TrialState.FAIL and states[done.number] == optuna.trial.TrialState.COMPLETE
    retried = [t for t in study.trials if t.state == optuna.trial.TrialState.WAITING]
    assert len(retried) == 1 and retried[0].params == running.params  # queued once more with the same parameters


def test_fit_worker_on_an_ended_search_says_so(tmp_path):
    from typer.testing import CliRunner

    from mmagent.cli.main import app
    from mmagent.search.workers import SearchSpec, write_spec

    runner = CliRunner()
    missing = runner.invoke(app, ["fit-worker", str(tmp_path)])
    assert missing.exit_code == 2 and "holds no search to join" in missing.output
    spec = SearchSpec(
        storage=f"sqlite:///{tmp_path / 'search.db'}", study="fit-1", base={}, space={}, pruner={}, metric=None, seed=0,
        deadline=time.time() - 1, offset=0, queued=0, prune_queued=False, startup_trials=None,
    )  # fmt: skip
    write_spec(tmp_path, spec)
    ended = runner.invoke(app, ["fit-worker", str(tmp_path)])
    assert ended.exit_code == 0 and "has ended" in ended.output and "0 candidate(s)" in ended.output


def test_a_candidate_stops_in_time_to_score_its_partial_epoch():
    """The cut leaves the time that validating the partial epoch takes (a forward pass: about a
    third of a training step per row), so a candidate cut by the deadline is scored by it."""
    from mmagent.search.objective import Deadline

    def first_stop(validation_rows: int) -> float:
        now = [0.0]
        deadline = Deadline(at=100.0, validation_rows=validation_rows, rows_per_step=16, clock=lambda: now[0])
        while not deadline():
            now[0] += 1.0  # one optimizer step of 16 rows a second
        return now[0]

    assert first_stop(0) == 100.0  # nothing to score: the deadline itself
    assert first_stop(480) == 90.0  # 480 rows at 1/16 s a row, a third of that: 10 s kept for them
    assert first_stop(48_000) == 1.0  # scoring alone would overrun: stop after the first timed step
