"""`mmagent serve` on loopback: JSON and multipart, API keys, bad input -> 4xx naming the field, 413,
64 concurrent requests, metrics, redacted logs (hostile input: test_serving_hardening.py)."""

from __future__ import annotations

import asyncio
import base64
import io
import os
import re
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from mmagent.demo.toy import tiny_config
from tests.conftest import write_multimodal_table

httpx = pytest.importorskip("httpx")
pytest.importorskip("fastapi")
pytest.importorskip("uvicorn")

KEY = "test-key-0123456789"
MAX_BODY = 256 * 1024
MAX_PIXELS = 100_000
MAX_AUDIO_S = 2.0


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> dict:
    from mmagent.config import config_from_dict
    from mmagent.training.trainer import train

    folder = tmp_path_factory.mktemp("serve")
    train_csv = write_multimodal_table(folder, 60, 0, "train.csv")
    test_csv = write_multimodal_table(folder, 24, 1, "test.csv")
    run_dir = folder / "run"
    train(config_from_dict(tiny_config(train_csv)), run_dir, progress=False)

    port = _free_port()
    log = open(folder / "server.log", "wb")
    env = {**os.environ, "MMAGENT_API_KEYS": KEY, "PYTHONUNBUFFERED": "1"}
    cmd = [
        sys.executable,
        "-m",
        "mmagent",
        "serve",
        str(run_dir),
        "--port",
        str(port),
        "--max-body-bytes",
        str(MAX_BODY),
        "--max-image-pixels",
        str(MAX_PIXELS),
        "--max-audio-seconds",
        str(MAX_AUDIO_S),
        "--max-wait-ms",
        "10",
    ]
    proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env)
    url = f"http://127.0.0.1:{port}"
    try:
        import pandas as pd

        from mmagent.agent import Agent

        agent = Agent.load(run_dir)  # the in-process reference, loaded while the server starts
        _wait_ready(url, proc, folder / "server.log")
        yield {
            "url": url,
            "run_dir": run_dir,
            "folder": folder,
            "log": folder / "server.log",
            "agent": agent,
            "test": pd.read_csv(test_csv, dtype=str),
            "proc": proc,
        }
    finally:
        _stop(proc, log)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _stop(proc: subprocess.Popen, log: Any) -> None:
    """Stop a server started by a test (SIGTERM, then SIGKILL after 15 s) and close its log."""
    proc.terminate()
    try:
        proc.wait(15)
    except subprocess.TimeoutExpired:
        proc.kill()
    log.close()


def _wait_ready(url: str, proc: subprocess.Popen, log: Path, timeout: float = 90) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited with {proc.returncode}:\n{log.read_text()[-3000:]}")
        try:
            if httpx.get(url + "/readyz", timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.3)
    raise RuntimeError(f"server not ready after {timeout} s:\n{log.read_text()[-3000:]}")


def _b64(path: Path) -> str:
    return base64.b64encode(path.read_bytes()).decode()


def json_record(s: dict, i: int) -> dict:
    row = s["test"].iloc[i]
    return {"text": row["text"], "image": _b64(s["folder"] / row["image"]), "audio": _b64(s["folder"] / row["audio"]), "x": float(row["x"])}


def local_record(s: dict, i: int) -> dict:
    row = s["test"].iloc[i]
    return {"text": row["text"], "image": str(s["folder"] / row["image"]), "audio": str(s["folder"] / row["audio"]), "x": float(row["x"])}


def H(**extra: str) -> dict:
    return {"X-API-Key": KEY, **extra}


def _same(got: dict, want: dict, atol: float = 1e-5) -> None:
    assert got.keys() == want.keys()
    for target in want:
        assert got[target]["label"] == want[target]["label"]
        for lab, p in want[target]["probabilities"].items():
            assert abs(got[target]["probabilities"][lab] - p) <= atol, (target, lab, got[target]["probabilities"][lab], p)


# -- happy paths ----------------------------------------------------------------------------------
def test_predict_json_single_and_batch(served: dict) -> None:
    r = httpx.post(served["url"] + "/v1/predict", json={"record": json_record(served, 0)}, headers=H())
    assert r.status_code == 200, r.text
    _same(r.json()["predictions"][0], served["agent"].predict([local_record(served, 0)])[0])

    records = [json_record(served, i) for i in range(5)]
    r = httpx.post(served["url"] + "/v1/predict", json={"records": records}, headers=H())
    assert r.status_code == 200, r.text
    want = served["agent"].predict([local_record(served, i) for i in range(5)])
    assert len(r.json()["predictions"]) == 5
    for got, exp in zip(r.json()["predictions"], want):
        _same(got, exp)
    # A record may leave inputs out (that modality is missing for it).
    r = httpx.post(served["url"] + "/v1/predict", json={"record": {"text": "the alpha case", "x": "0.25"}}, headers=H())
    assert r.status_code == 200, r.text
    _same(r.json()["predictions"][0], served["agent"].predict([{"text": "the alpha case", "x": 0.25}])[0])


def test_act_json(served: dict) -> None:
    records = [json_record(served, i) for i in range(3)]
    r = httpx.post(served["url"] + "/v1/act", json={"records": records}, headers={"Authorization": f"Bearer {KEY}"})
    assert r.status_code == 200, r.text
    got = r.json()["decisions"]
    want = served["agent"].act_many([local_record(served, i) for i in range(3)])
    assert [d["label"] for d in got] == [d.label for d in want]
    assert [d["action"] for d in got] == [d.action for d in want]
    assert set(got[0]["contributions"]) == {"text", "image", "audio", "x"}


def test_multipart_predict_and_act(served: dict) -> None:
    row = served["test"].iloc[3]
    folder = served["folder"]
    files = {"image": ("a.png", (folder / row["image"]).read_bytes(), "image/png"), "audio": ("a.wav", (folder / row["audio"]).read_bytes(), "audio/wav")}
    data = {"text": row["text"], "x": row["x"]}
    r = httpx.post(served["url"] + "/v1/predict", data=data, files=files, headers=H())
    assert r.status_code == 200, r.text
    _same(r.json()["predictions"][0], served["agent"].predict([local_record(served, 3)])[0])
    r = httpx.post(served["url"] + "/v1/act", data=data, files=files, headers=H())
    assert r.status_code == 200, r.text
    assert r.json()["decisions"][0]["label"] == served["agent"].act(local_record(served, 3)).label


def test_schema_health_and_docs(served: dict) -> None:
    url = served["url"]
    assert httpx.get(url + "/healthz").json() == {"status": "ok"}
    schema = httpx.get(url + "/v1/schema", headers=H()).json()
    assert [(i["name"], i["modality"]) for i in schema["inputs"]] == [("text", "text"), ("image", "image"), ("audio", "audio"), ("x", "numeric")]
    assert schema["targets"] == [{"name": "label", "type": "classification", "labels": ["a", "b", "c"]}]
    assert [httpx.get(url + p).status_code for p in ("/openapi.json", "/docs")] == [401, 401]  # keys set: docs need one too
    spec = httpx.get(url + "/openapi.json", headers=H()).json()
    body = spec["paths"]["/v1/predict"]["post"]["requestBody"]["content"]
    assert {"application/json", "multipart/form-data"} <= set(body)
    assert body["multipart/form-data"]["schema"]["properties"]["image"]["format"] == "binary"
    assert "PredictResponse" in spec["components"]["schemas"]
    docs = httpx.get(url + "/docs", headers=H())
    assert docs.status_code == 200 and "/v1/predict" in docs.text  # the spec is embedded in the page


# -- keys -----------------------------------------------------------------------------------------
def test_api_key_required(served: dict) -> None:
    url, body = served["url"], {"record": {"text": "hello"}}
    for headers in ({}, {"X-API-Key": "wrong"}, {"Authorization": "Bearer wrong"}, {"Authorization": KEY}):
        r = httpx.post(url + "/v1/predict", json=body, headers=headers)
        assert r.status_code == 401, (headers, r.text)
        assert r.json()["field"] == "X-API-Key"
    assert httpx.get(url + "/metrics").status_code == 401
    assert httpx.get(url + "/v1/schema").status_code == 401
    assert httpx.post(url + "/v1/predict", json=body, headers={"X-API-Key": KEY}).status_code == 200
    assert httpx.post(url + "/v1/act", json=body, headers={"Authorization": f"Bearer {KEY}"}).status_code == 200


# -- bad input ------------------------------------------------------------------------------------
def _png(w: int, h: int) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.new("RGB", (w, h), (10, 200, 30)).save(buf, "PNG")
    return buf.getvalue()


def _wav(seconds: float, sr: int = 8000) -> bytes:
    import soundfile as sf

    buf = io.BytesIO()
    sf.write(buf, (0.1 * np.sin(np.arange(int(seconds * sr)) / 5)).astype(np.float32), sr, format="WAV")
    return buf.getvalue()


def _enc(b: bytes) -> str:
    return base64.b64encode(b).decode()


BAD_JSON = [
    ("bad base64", {"record": {"image": "@@not base64@@"}}, 422, "image"),
    ("undecodable image", {"record": {"image": _enc(b"this is not an image at all")}}, 422, "image"),
    ("too many pixels", {"record": {"image": _enc(_png(400, 400))}}, 422, "image"),
    ("file path", {"record": {"image": "img/1_0.png"}}, 422, "image"),
    ("url", {"record": {"image": "https://example.com/a.png"}}, 422, "image"),
    ("audio too long", {"record": {"audio": _enc(_wav(3.0))}}, 422, "audio"),
    ("undecodable audio", {"record": {"audio": _enc(b"RIFF....WAVEfmt garbage")}}, 422, "audio"),
    ("unknown column", {"record": {"text": "hi", "colour": "red"}}, 422, "colour"),
    ("text not a string", {"record": {"text": 123}}, 422, "text"),
    ("image not a string", {"record": {"image": [1, 2, 3]}}, 422, "image"),
    ("non-numeric", {"record": {"text": "hi", "x": "twelve"}}, 422, "x"),
    ("numeric is a list", {"record": {"x": [1, 2]}}, 422, "x"),
    ("numeric too large", {"record": {"x": 10**400}}, 422, "x"),
    ("numeric is a boolean", {"record": {"x": True}}, 422, "x"),
    ("no input value", {"record": {"text": None}}, 422, "text"),
    ("second record bad", {"records": [{"text": "ok"}, {"x": "nan-ish"}]}, 422, "x"),
    ("record not object", {"records": ["just text"]}, 422, "records[0]"),
    ("empty records", {"records": []}, 422, "records"),
    ("neither record nor records", {"text": "hi"}, 400, "text"),
    ("not an object", [1, 2], 400, "body"),
]


@pytest.mark.parametrize("name,body,status,field", BAD_JSON, ids=[b[0] for b in BAD_JSON])
def test_bad_json_input(served: dict, name: str, body: object, status: int, field: str) -> None:
    r = httpx.post(served["url"] + "/v1/predict", json=body, headers=H())
    assert r.status_code == status, r.text
    assert r.headers["content-type"].startswith("application/json")
    assert r.json()["field"] == field, r.json()
    assert r.json()["error"]
    if name == "second record bad":
        assert r.json()["record"] == 1


@pytest.mark.parametrize(
    "name,content,ctype,status,field",
    [
        ("empty body", b"", "application/json", 400, "body"),
        ("invalid json", b'{"record": {"text": "hi"', "application/json", 400, "body"),
        ("not utf-8", b'{"record": {"text": "\xff\xfe"}}', "application/json", 400, "body"),
        ("text/plain", b"hello", "text/plain", 415, "Content-Type"),
        ("no content type", b'{"record": {"text": "hi"}}', "", 415, "Content-Type"),
    ],
)
def test_bad_body(served: dict, name: str, content: bytes, ctype: str, status: int, field: str) -> None:
    headers = H(**({"Content-Type": ctype} if ctype else {}))
    r = httpx.post(served["url"] + "/v1/act", content=content, headers=headers)
    assert r.status_code == status, r.text
    assert r.json()["field"] == field


def test_bad_multipart(served: dict) -> None:
    url = served["url"] + "/v1/predict"
    r = httpx.post(url, data={"text": "hi", "x": "abc"}, files={"image": ("a.png", _png(8, 8), "image/png")}, headers=H())
    assert (r.status_code, r.json()["field"]) == (422, "x")
    r = httpx.post(url, data={"text": "hi"}, files={"image": ("a.png", b"GIF89a broken", "image/gif")}, headers=H())
    assert (r.status_code, r.json()["field"]) == (422, "image")
    r = httpx.post(url, data={"text": "hi"}, files={"audio": ("a.wav", _wav(5.0), "audio/wav")}, headers=H())
    assert (r.status_code, r.json()["field"]) == (422, "audio")
    r = httpx.post(url, data={"nope": "hi"}, files={"image": ("a.png", _png(8, 8), "image/png")}, headers=H())
    assert (r.status_code, r.json()["field"]) == (422, "nope")


def test_oversize_body_413(served: dict) -> None:
    url = served["url"] + "/v1/predict"
    big = {"record": {"text": "a" * (MAX_BODY + 10)}}
    r = httpx.post(url, json=big, headers=H())  # Content-Length over the limit
    assert r.status_code == 413, r.text
    assert r.json()["field"] == "body"

    def chunks():  # no Content-Length: the streamed size is what counts
        yield b'{"record": {"text": "'
        for _ in range(MAX_BODY // 4096 + 2):
            yield b"a" * 4096
        yield b'"}}'

    r = httpx.post(url, content=chunks(), headers=H(**{"Content-Type": "application/json"}))
    assert r.status_code == 413, r.text
    r = httpx.post(url, files={"image": ("a.png", os.urandom(MAX_BODY + 1), "image/png")}, headers=H())
    assert r.status_code == 413, r.text
    # ... and the server keeps serving.
    assert httpx.post(url, json={"record": {"text": "still here"}}, headers=H()).status_code == 200


def test_server_survives_bad_input(served: dict) -> None:
    assert served["proc"].poll() is None
    r = httpx.post(served["url"] + "/v1/predict", json={"record": json_record(served, 1)}, headers=H())
    assert r.status_code == 200
    assert httpx.get(served["url"] + "/readyz").status_code == 200


# -- load -----------------------------------------------------------------------------------------
def test_64_concurrent_requests_all_correct(served: dict) -> None:
    n = 64
    rows = [i % len(served["test"]) for i in range(n)]
    records = [json_record(served, i) for i in rows]

    async def go() -> list:
        async with httpx.AsyncClient(base_url=served["url"], headers=H(), timeout=60) as client:
            return await asyncio.gather(*(client.post("/v1/predict", json={"record": rec}) for rec in records))

    responses = asyncio.run(go())
    assert [r.status_code for r in responses] == [200] * n
    # In-process reference, one record at a time: answers must not depend on batch companions.
    want = {i: served["agent"].predict([local_record(served, i)])[0] for i in sorted(set(rows))}
    for r, i in zip(responses, rows):
        _same(r.json()["predictions"][0], want[i], atol=1e-4)
    # The requests were micro-batched: fewer model calls than requests.
    text = httpx.get(served["url"] + "/metrics", headers=H()).text
    batches = _metric(text, 'mmagent_batch_size_count{kind="predict"}')
    single = _metric(text, 'mmagent_batch_size_bucket{kind="predict",le="1.0"}')
    assert batches - single >= 1, text  # at least one batch held more than one record


def _metric(text: str, name: str) -> float:
    m = re.search(re.escape(name) + r" ([0-9.e+]+)", text)
    assert m, name
    return float(m.group(1))


def test_metrics_show_counts(served: dict) -> None:
    text = httpx.get(served["url"] + "/metrics", headers=H()).text
    assert _metric(text, 'mmagent_requests_total{endpoint="/v1/predict",method="POST",status="200"}') >= 64
    assert _metric(text, 'mmagent_requests_total{endpoint="/v1/predict",method="POST",status="422"}') >= 10
    assert _metric(text, 'mmagent_requests_total{endpoint="/v1/predict",method="POST",status="401"}') >= 4
    assert _metric(text, 'mmagent_requests_total{endpoint="/v1/predict",method="POST",status="413"}') >= 2
    assert _metric(text, 'mmagent_request_latency_seconds_count{endpoint="/v1/predict"}') >= 80
    assert _metric(text, "mmagent_model_ready") == 1


# -- logs and redaction ---------------------------------------------------------------------------
def test_logged_text_is_redacted(served: dict) -> None:
    r = httpx.post(served["url"] + "/v1/predict", json={"record": {"x": "jane.doe@example.com 555-123-4567"}}, headers=H())
    assert r.status_code == 422
    deadline = time.time() + 5
    while time.time() < deadline and "[EMAIL]" not in served["log"].read_text():
        time.sleep(0.1)
    log = served["log"].read_text()
    assert "[EMAIL]" in log and "[PHONE]" in log
    assert "jane.doe@example.com" not in log and "555-123-4567" not in log
    assert "Traceback" not in log  # no client error became a server error


def test_redactor() -> None:
    from mmagent.serving.security import redact

    text = "I am jane.doe@example.com, call +1 (555) 123-4567, card 4111 1111 1111 1111, account 12345678901, on 2024-01-05"
    out = redact(text)
    assert "jane.doe@example.com" not in out and "[EMAIL]" in out
    assert "555" not in out and "[PHONE]" in out
    assert "4111" not in out and "[CARD]" in out
    assert "12345678901" not in out and "[ACCOUNT]" in out
    assert "2024-01-05" in out  # dates are not phone numbers
    assert redact("IBAN DE89 3704 0044 0532 0130 00") == "IBAN [IBAN]"


def test_key_comparison() -> None:
    from mmagent.serving.security import key_matches, presented_key

    assert presented_key({"x-api-key": " k "}) == "k"
    assert presented_key({"authorization": "Bearer abc"}) == "abc"
    assert presented_key({"authorization": "Basic abc"}) is None
    assert key_matches("b", ["a", "b"]) and not key_matches("c", ["a", "b"]) and not key_matches(None, ["a"])


# -- the CLI refuses a public bind without a key ---------------------------------------------------
def test_serve_refuses_public_address_without_key(served: dict, monkeypatch: pytest.MonkeyPatch) -> None:
    from typer.testing import CliRunner

    from mmagent.cli import app

    monkeypatch.delenv("MMAGENT_API_KEYS", raising=False)
    monkeypatch.delenv("MMAGENT_API_KEY_FILE", raising=False)
    for host in ("0.0.0.0", "::", "192.0.2.10"):
        result = CliRunner().invoke(app, ["serve", str(served["run_dir"]), "--host", host, "--port", str(_free_port())])
        assert result.exit_code == 2, result.output
        assert "API key" in result.output and host in result.output


def test_key_file_and_loopback(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from mmagent.serving.settings import ServeSettings, is_loopback

    monkeypatch.delenv("MMAGENT_API_KEYS", raising=False)
    keys = tmp_path / "keys.txt"
    keys.write_text("# comment\nalpha\n\nbeta  # trailing comment\n")
    assert ServeSettings(api_key_file=keys).load_keys() == ["alpha", "beta"]
    monkeypatch.setenv("MMAGENT_API_KEYS", "gamma, alpha")
    assert ServeSettings(api_key_file=keys).load_keys() == ["gamma", "alpha", "beta"]
    keys.write_text("# no keys here\n")
    with pytest.raises(ValueError, match="no key"):
        ServeSettings(api_key_file=keys).load_keys()
    assert is_loopback("127.0.0.1") and is_loopback("::1") and is_loopback("localhost")
    assert not is_loopback("0.0.0.0") and not is_loopback("::") and not is_loopback("10.1.2.3") and not is_loopback("example.com")
