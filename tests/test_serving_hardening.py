"""A real `mmagent serve` process under hostile input: decompression-bomb bodies (memory budget
before decoding), audio limits, values that used to answer 500, kept-alive connections that must
survive every error, and a body that stalls halfway."""

from __future__ import annotations

import base64
import io
import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from mmagent.demo.toy import tiny_config
from tests.conftest import write_multimodal_table
from tests.test_serving import KEY, _enc, _free_port, _png, _stop, _wait_ready

httpx = pytest.importorskip("httpx")

BODY_TIMEOUT_S = 2.0


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """Default limits (20 MiB bodies, 40 Mpx per image, 50 Mpx per request), an API key, a 2 s
    body timeout."""
    from mmagent.config import config_from_dict
    from mmagent.training.trainer import train

    folder = tmp_path_factory.mktemp("hardening")
    run_dir = folder / "run"
    train(config_from_dict(tiny_config(write_multimodal_table(folder, 40, 0, "train.csv"))), run_dir, progress=False)
    port = _free_port()
    log = open(folder / "server.log", "wb")
    env = {**os.environ, "MMAGENT_API_KEYS": KEY, "MMAGENT_BODY_TIMEOUT_S": str(BODY_TIMEOUT_S), "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "mmagent", "serve", str(run_dir), "--port", str(port), "--device", "auto"], stdout=log, stderr=subprocess.STDOUT, env=env
    )
    try:
        url = f"http://127.0.0.1:{port}"
        _wait_ready(url, proc, folder / "server.log")
        yield {"url": url, "port": port, "proc": proc, "log": folder / "server.log"}
    finally:
        _stop(proc, log)


def _post(s: dict, body: object) -> httpx.Response:
    return httpx.post(s["url"] + "/v1/predict", json=body, headers={"X-API-Key": KEY}, timeout=120)


def _peak_rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    raise AssertionError("no VmHWM")


# -- decoded size is budgeted before anything is decoded -------------------------------------------
@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="reads the server's peak RSS from /proc (Linux)")
def test_solid_png_bomb_is_refused_before_decoding(server: dict) -> None:
    assert _post(server, {"record": {"text": "warm up", "image": _enc(_png(64, 64))}}).status_code == 200
    before = _peak_rss_mb(server["proc"].pid)
    buf = io.BytesIO()
    from PIL import Image

    Image.new("RGB", (6000, 6000), (200, 10, 10)).save(buf, "PNG", compress_level=9)  # 36 Mpx: under the 40 Mpx per image
    one = base64.b64encode(buf.getvalue()).decode()
    n = (19 * 1024 * 1024) // len(one)  # ~19 MiB of JSON that would decode to n x 108 MB
    assert n >= 100
    r = _post(server, {"records": [{"image": one} for _ in range(n)]})
    assert r.status_code == 413, r.text
    assert r.json()["field"] == "records" and "pixels" in r.json()["error"]
    grown = _peak_rss_mb(server["proc"].pid) - before
    assert grown < 300, f"the server's peak RSS grew by {grown:.0f} MB"
    assert _post(server, {"record": {"text": "still serving"}}).status_code == 200


def test_queue_budget_admits_until_spent() -> None:
    from mmagent.serving.media import Cost, MediaBudget
    from mmagent.serving.schemas import ApiError

    budget = MediaBudget(max_pixels=100, max_samples=1000)
    with budget.hold(Cost(pixels=60)):
        with pytest.raises(ApiError) as e:
            with budget.hold(Cost(pixels=50)):
                pass
        assert e.value.status == 503
        with budget.hold(Cost(pixels=40, samples=1000)):
            assert (budget.pixels, budget.samples) == (100, 1000)
    assert (budget.pixels, budget.samples) == (0, 0)  # released, also after the refusal
    with budget.hold(Cost(pixels=100)):
        pass


def _wav_bytes(frames: int, sr: int, channels: int) -> bytes:
    import soundfile as sf

    buf = io.BytesIO()
    sf.write(buf, np.zeros((frames, channels), np.float32) + 0.1, sr, format="WAV", subtype="PCM_16")
    return buf.getvalue()


@pytest.mark.parametrize(
    "name,data,words",
    [
        ("sample rate", _wav_bytes(9600, 96_000, 1), "sample rate"),
        ("channels", _wav_bytes(800, 8000, 6), "channels"),
        ("truncated", _wav_bytes(8000, 8000, 1)[:6000], "truncated"),
        ("garbage after a RIFF header", b"RIFF\x24\x00\x00\x00WAVEfmt " + os.urandom(64), "audio"),
    ],
)
def test_audio_limits_from_the_header(server: dict, name: str, data: bytes, words: str) -> None:
    r = _post(server, {"record": {"audio": _enc(data)}})
    assert r.status_code == 422, r.text
    assert r.json()["field"] == "audio" and words in r.json()["error"]


def test_request_audio_budget(server: dict) -> None:
    import soundfile as sf

    buf = io.BytesIO()
    sf.write(buf, np.zeros(50 * 48_000, np.float32), 48_000, format="FLAC")  # silence: a few KB of FLAC
    clip = _enc(buf.getvalue())  # 2.4 M samples each, under the 60 s per clip; 20 M per request
    assert len(clip) < 100_000
    r = _post(server, {"records": [{"audio": clip}] * 9})
    assert r.status_code == 413, r.text
    assert "samples" in r.json()["error"]


# -- no value answers 500, no error costs the connection ---------------------------------------------
class RawConnection:
    """One HTTP/1.1 keep-alive connection, to see that it survives each answer."""

    def __init__(self, port: int) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=60)
        self.rfile = self.sock.makefile("rb")

    def post(self, body: bytes) -> tuple[int, dict]:
        head = f"POST /v1/predict HTTP/1.1\r\nHost: t\r\nX-API-Key: {KEY}\r\nContent-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n"
        self.sock.sendall(head.encode() + body)
        status = int(self.rfile.readline().split()[1])
        headers = {}
        while (line := self.rfile.readline()) not in (b"\r\n", b""):
            k, _, v = line.decode().partition(":")
            headers[k.strip().lower()] = v.strip()
        assert headers.get("connection") != "close", headers
        return status, json.loads(self.rfile.read(int(headers["content-length"])))

    def close(self) -> None:
        self.rfile.close()
        self.sock.close()


BIG = "1" * 5000
USED_TO_FAIL = [
    ("surrogate in text", b'{"record": {"text": "a\\ud800b"}}', 422, "text"),
    ("surrogate in a column name", b'{"record": {"te\\ud800xt": "hi"}}', 422, "te\\ud800xt"),
    ("surrogate in a top-level key", b'{"rec\\ud800": {"text": "hi"}}', 400, "rec\\ud800"),
    ("surrogate in a number", b'{"record": {"x": "\\ud800"}}', 422, "x"),
    ("5000-digit integer", b'{"record": {"x": ' + BIG.encode() + b"}}", 422, "x"),
    ("5000-digit integer as text", b'{"record": {"text": ' + BIG.encode() + b"}}", 422, "text"),
    ("1e308", b'{"record": {"x": 1e308}}', 422, "x"),
    ("-1e308", b'{"records": [{"text": "ok"}, {"x": -1e308}]}', 422, "x"),
    ("text as a number", b'{"record": {"text": 12.5}}', 422, "text"),
    ("text as a list", b'{"record": {"text": ["a", "b"]}}', 422, "text"),
    ("text as an object", b'{"record": {"text": {"a": 1}}}', 422, "text"),
]


def test_bad_values_are_4xx_and_keep_the_connection(server: dict) -> None:
    conn = RawConnection(server["port"])
    try:
        for name, body, status, field in USED_TO_FAIL:
            got, answer = conn.post(body)
            assert (got, answer["field"]) == (status, field), (name, answer)
            got, answer = conn.post(b'{"record": {"text": "a valid request", "x": 0.5}}')  # same connection
            assert got == 200, (name, answer)
    finally:
        conn.close()
    assert "Traceback" not in server["log"].read_text()


def test_stalled_body_times_out(server: dict) -> None:
    with socket.create_connection(("127.0.0.1", server["port"]), timeout=BODY_TIMEOUT_S + 10) as sock:
        sock.sendall(
            f"POST /v1/predict HTTP/1.1\r\nHost: t\r\nX-API-Key: {KEY}\r\nContent-Type: application/json\r\nContent-Length: 1000\r\n\r\n".encode()
            + b'{"record": {"text": "'
        )
        start = time.monotonic()
        answer = b""
        while chunk := sock.recv(65536):  # until the server closes the connection
            answer += chunk
        waited = time.monotonic() - start
    assert answer.startswith(b"HTTP/1.1 408"), answer[:200]
    assert BODY_TIMEOUT_S - 0.5 < waited < BODY_TIMEOUT_S + 8
    assert _post(server, {"record": {"text": "after the stall"}}).status_code == 200


# -- --device ---------------------------------------------------------------------------------------
def test_device_setting(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    import torch
    from typer.testing import CliRunner

    from mmagent.cli import app
    from mmagent.serving.settings import ServeSettings

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert ServeSettings(device="auto").torch_device() == "cpu"
    assert ServeSettings(device="CUDA:1").torch_device() == "cuda:1"
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert ServeSettings(device="auto").torch_device() == "cuda"
    with pytest.raises(ValueError, match="unknown device"):
        ServeSettings(device="tpu")
    (tmp_path / "model").mkdir()
    (tmp_path / "model" / "model.json").write_text("{}")
    result = CliRunner().invoke(app, ["serve", str(tmp_path), "--device", "tpu"])
    assert result.exit_code == 2 and "unknown device" in result.output, result.output
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    result = CliRunner().invoke(app, ["serve", str(tmp_path), "--device", "cuda"])
    assert result.exit_code == 2 and "no CUDA GPU" in result.output, result.output
