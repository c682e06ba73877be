"""Live swap: a real server (loopback, uvicorn) serving a registry alias keeps answering client
threads while a second version is promoted; no request fails, and once the new version answers,
only it answers. A version with other inputs is refused (the old one stays). The run-folder
watcher swaps when the folder is replaced, and not while it is half-written."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from mmagent.lifecycle.promote import promote
from mmagent.lifecycle.registry import Registry
from tests.conftest import numeric_table, train_numeric
from tests.test_serving import _free_port, _stop, _wait_ready

httpx = pytest.importorskip("httpx")


@pytest.fixture(scope="module")
def versions(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("swap")
    train = numeric_table(folder / "train.csv", 200, 0)
    return {
        "folder": folder,
        "eval": numeric_table(folder / "eval.csv", 60, 1),
        "v1": train_numeric(train, folder / "v1", epochs=2),
        "v2": train_numeric(train, folder / "v2", epochs=3, seed=1),
        "other": train_numeric(numeric_table(folder / "z.csv", 100, 0, column="z"), folder / "other", epochs=1, column="z"),
    }


def test_promotion_mid_load_swaps_without_a_failed_request(versions: dict[str, Path]) -> None:
    folder, reg_dir = versions["folder"], versions["folder"] / "registry"
    assert promote(versions["v1"], versions["eval"], reg_dir, latency_records=2).accepted
    port, log_path = _free_port(), folder / "server.log"
    cmd = [sys.executable, "-m", "mmagent", "serve", "--registry", str(reg_dir), "--alias", "production", "--port", str(port), "--watch-s", "0.2"]
    log = open(log_path, "wb")
    proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env={**os.environ, "PYTHONUNBUFFERED": "1"})
    url = f"http://127.0.0.1:{port}"
    answers: list[tuple[float, float, str]] = []  # (sent, received, version)
    errors: list[str] = []
    stop = threading.Event()

    def client(k: int) -> None:
        with httpx.Client(timeout=30) as c:
            i = 0
            while not stop.is_set():
                i += 1
                body = {"records": [{"x": (k + i) % 7 - 3.0}, {"x": 0.1 * i}]} if i % 2 else {"record": {"x": 0.5}}
                route = "/v1/act" if (k + i) % 2 else "/v1/predict"
                sent = time.perf_counter()
                try:
                    r = c.post(url + route, json=body)
                except httpx.HTTPError as e:
                    errors.append(f"{route}: {type(e).__name__}: {e}")
                    continue
                if r.status_code != 200:
                    errors.append(f"{route}: {r.status_code} {r.text}")
                    continue
                got = r.json()
                versions_in = {got["model_version"]} | {d["model_version"] for d in got.get("decisions", [])}
                if len(versions_in) != 1:
                    errors.append(f"one request answered by several versions: {versions_in}")
                answers.append((sent, time.perf_counter(), versions_in.pop()))

    try:
        _wait_ready(url, proc, log_path)
        assert httpx.get(url + "/v1/schema").json()["model_version"] == "v1"
        threads = [threading.Thread(target=client, args=(k,)) for k in range(4)]
        for t in threads:
            t.start()
        time.sleep(1.5)
        decision = promote(versions["v2"], versions["eval"], reg_dir, tolerance=1.0, latency_records=2)  # mid-load
        assert decision.accepted and decision.challenger == "v2"
        deadline = time.time() + 60
        while time.time() < deadline and not any(v == "v2" for *_, v in answers):
            time.sleep(0.1)
        time.sleep(1.5)  # keep the load on after the swap
        stop.set()
        for t in threads:
            t.join(30)
        assert not errors, errors[:5]
        assert {v for *_, v in answers} == {"v1", "v2"}
        first_new = min(received for _, received, v in answers if v == "v2")
        late = [v for sent, _, v in answers if sent > first_new]
        assert late and set(late) == {"v2"}, "a request sent after the swap was answered by the old version"
        assert httpx.get(url + "/v1/schema").json()["model_version"] == "v2"
        metrics = httpx.get(url + "/metrics").text
        assert 'mmagent_model_info{version="v2"} 1.0' in metrics and "mmagent_model_swaps_total 1.0" in metrics

        # a version whose inputs differ from the schema clients use is refused; v2 stays in service
        reg = Registry(reg_dir)
        reg.set_alias("production", reg.register(versions["other"]))  # past promote's own check
        deadline = time.time() + 30
        while time.time() < deadline and "live swap refused" not in log_path.read_text():
            time.sleep(0.2)
        assert "takes other inputs" in log_path.read_text()
        r = httpx.post(url + "/v1/act", json={"record": {"x": 1.0}})
        assert r.status_code == 200 and r.json()["model_version"] == "v2"
        assert httpx.get(url + "/v1/schema").json()["model_version"] == "v2"
    finally:
        stop.set()
        _stop(proc, log)


def test_a_replaced_run_folder_is_swapped_in_once_complete(versions: dict[str, Path], tmp_path: Path) -> None:
    from mmagent.agent import Agent
    from mmagent.serving.swap import RunSource, Swapper

    served_dir = tmp_path / "run"
    shutil.copytree(versions["v1"], served_dir)
    installed = []
    swapper = Swapper(RunSource(served_dir), Agent.load, Agent.load(versions["v1"]).model.spec, installed.append, poll_s=0)
    first = swapper.load_first()
    assert first.version.startswith("run-") and not swapper.check_once() and not swapper.check_once()

    shutil.rmtree(served_dir)
    shutil.copytree(versions["v2"], served_dir)
    weights = served_dir / "model" / "model.safetensors"
    data = weights.read_bytes()
    weights.write_bytes(data[: len(data) // 2])  # still being copied
    assert not swapper.check_once()  # first sight of a change: wait for it to settle
    assert not swapper.check_once() and swapper.failed is not None  # settled but corrupt: refused, logged
    assert installed == []
    weights.write_bytes(data)  # the copy completes
    assert not swapper.check_once()
    assert swapper.check_once()
    assert len(installed) == 1 and installed[0].version != first.version and installed[0].agent.version == installed[0].version
