"""HTTP load on `mmagent serve`: throughput and latency with and without micro-batching.

    python benchmarks/serve_load.py [--run-dir RUN] [--clients 32] [--requests 1000] [--smoke]

Starts a real server process (``python -m mmagent serve``, uvicorn) on loopback for the run folder
— training a small text + image + audio + numeric model into a temporary folder when no
``--run-dir`` is given — and drives ``POST /v1/predict`` with ``--clients`` concurrent httpx async
clients (one connection each) until ``--requests`` requests have been answered. Each request is one
JSON record with every modality (text, base64 PNG, base64 WAV, a number). This is done twice, with
a fresh server each time: micro-batching on (``--max-batch-size 32``) and off (``1``).

Reported per mode: throughput (answered requests / wall second), p50 / p99 / mean latency, error
counts (non-200 answers and transport errors, by kind), and the server's own mean batch size (from
its /metrics). Then the throughput ratio batched / unbatched. Results: ``benchmarks/results/
serve_load.json`` (``serve_load.smoke.json`` for ``--smoke``), written atomically.

The load generator runs on the same machine as the server and takes CPU from it; both modes pay
that cost alike.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import os
import re
import secrets
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # `python benchmarks/serve_load.py` as well as `python -m benchmarks.serve_load`
    sys.path.insert(0, str(ROOT))

from benchmarks.common import write_result  # noqa: E402
from mmagent.demo.toy import tiny_config, write_toy_table  # noqa: E402

NAME = "serve_load"


# -- a small run, when none is given ------------------------------------------------------------
def train_small_run(folder: Path) -> Path:
    from mmagent.config import config_from_dict
    from mmagent.training.trainer import train

    run = folder / "run"
    train(config_from_dict(tiny_config(write_toy_table(folder, 80, 0))), run, progress=False, finalize=False)
    return run


def payloads(run_dir: Path, folder: Path, n: int = 16) -> list[dict[str, Any]]:
    """JSON records for the run's inputs: text, numbers, base64 media (generated to fit them)."""
    import json

    import pandas as pd

    spec = json.loads(((run_dir / "model" if (run_dir / "model").is_dir() else run_dir) / "model.json").read_text())
    data = write_toy_table(folder / "payload", n, 1)
    table = pd.read_csv(data)
    records = []
    for _, row in table.iterrows():
        rec: dict[str, Any] = {}
        for inp in spec["inputs"]:
            cols = inp["column"] if isinstance(inp["column"], list) else [inp["column"]]
            for col in cols:
                if inp["modality"] == "text":
                    rec[col] = str(row["text"])
                elif inp["modality"] == "numeric":
                    rec[col] = float(row["x"])
                else:
                    rec[col] = base64.b64encode((data.parent / row["image" if inp["modality"] == "image" else "audio"]).read_bytes()).decode()
        records.append({"record": rec})
    return records


# -- the server ---------------------------------------------------------------------------------
def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    """``python -m mmagent serve`` in a subprocess on loopback, with an API key."""

    def __init__(self, run_dir: Path, max_batch_size: int, max_wait_ms: float, log: Path, threads: int | None = None) -> None:
        self.key = secrets.token_urlsafe(24)
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        env = {**os.environ, "MMAGENT_API_KEYS": self.key, "PYTHONUNBUFFERED": "1"}
        cmd = [sys.executable, "-m", "mmagent", "serve", str(run_dir), "--port", str(self.port), "--max-batch-size", str(max_batch_size), "--max-wait-ms", str(max_wait_ms), "--log-level", "warning"] + (["--threads", str(threads)] if threads else [])
        self.log = log
        self._log = open(log, "wb")
        self.proc = subprocess.Popen(cmd, stdout=self._log, stderr=subprocess.STDOUT, env=env, cwd=ROOT)

    def wait_ready(self, timeout: float = 180) -> None:
        import httpx

        deadline = time.time() + timeout
        while time.time() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"server exited with {self.proc.returncode}:\n{self.log.read_text()[-3000:]}")
            try:
                if httpx.get(self.url + "/readyz", timeout=2).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.3)
        raise RuntimeError(f"server not ready after {timeout} s:\n{self.log.read_text()[-3000:]}")

    def metrics(self) -> str:
        import httpx

        return httpx.get(self.url + "/metrics", headers={"X-API-Key": self.key}, timeout=10).text

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(20)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self._log.close()


# -- the load -----------------------------------------------------------------------------------
async def drive(url: str, key: str, bodies: list[dict[str, Any]], clients: int, requests: int, endpoint: str) -> dict[str, Any]:
    """``clients`` concurrent clients send ``requests`` requests in all; latency of each."""
    import httpx

    latencies: list[float] = []
    errors: dict[str, int] = {}
    counter = iter(range(requests))

    async def client(ci: int) -> None:
        async with httpx.AsyncClient(base_url=url, headers={"X-API-Key": key}, timeout=120, limits=httpx.Limits(max_connections=1)) as c:
            for i in counter:
                start = time.perf_counter()
                try:
                    r = await c.post(endpoint, json=bodies[(i + ci) % len(bodies)])
                    if r.status_code == 200:
                        latencies.append(time.perf_counter() - start)
                    else:
                        errors[f"HTTP {r.status_code}"] = errors.get(f"HTTP {r.status_code}", 0) + 1
                except httpx.HTTPError as e:
                    errors[type(e).__name__] = errors.get(type(e).__name__, 0) + 1

    start = time.perf_counter()
    await asyncio.gather(*(client(i) for i in range(clients)))
    wall = time.perf_counter() - start
    lat = sorted(latencies)
    return {
        "requests": requests,
        "answered": len(lat),
        "errors": sum(errors.values()),
        "error_kinds": errors,
        "seconds": round(wall, 3),
        "throughput_rps": len(lat) / wall if wall > 0 else 0.0,
        "p50_ms": 1000 * _quantile(lat, 0.50),
        "p99_ms": 1000 * _quantile(lat, 0.99),
        "mean_ms": 1000 * statistics.fmean(lat) if lat else float("nan"),
    }


def _quantile(values: list[float], q: float) -> float:
    """Nearest-rank quantile of sorted values."""
    if not values:
        return float("nan")
    return values[min(len(values) - 1, max(0, int(round(q * len(values) + 0.5)) - 1))]


def batch_stats(metrics: str, kind: str = "predict") -> dict[str, float]:
    def value(name: str) -> float:
        m = re.search(re.escape(name) + r" ([0-9.e+\-]+)", metrics)
        return float(m.group(1)) if m else float("nan")

    calls = value(f'mmagent_batch_size_count{{kind="{kind}"}}')
    records = value(f'mmagent_batch_size_sum{{kind="{kind}"}}')
    return {"model_calls": calls, "records": records, "mean_batch_size": records / calls if calls else float("nan")}


def run_mode(run_dir: Path, bodies: list[dict[str, Any]], args: argparse.Namespace, max_batch_size: int, logs: Path) -> dict[str, Any]:
    server = Server(run_dir, max_batch_size, args.max_wait_ms, logs / f"server_bs{max_batch_size}.log", args.threads or None)
    try:
        server.wait_ready()
        warm = min(args.requests, 2 * args.clients)
        asyncio.run(drive(server.url, server.key, bodies, args.clients, warm, args.endpoint))  # not measured
        before = batch_stats(server.metrics())
        result = asyncio.run(drive(server.url, server.key, bodies, args.clients, args.requests, args.endpoint))
        after = batch_stats(server.metrics())
    finally:
        server.stop()
    calls = after["model_calls"] - before["model_calls"]
    result["model_calls"] = calls
    result["mean_batch_size"] = (after["records"] - before["records"]) / calls if calls else float("nan")
    result["max_batch_size"] = max_batch_size
    return result


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--run-dir", type=Path, default=None, help="run folder to serve (default: train a small one into a temp folder)")
    p.add_argument("--clients", type=int, default=32, help="concurrent clients")
    p.add_argument("--requests", type=int, default=None, help="measured requests per mode (default 1000; --smoke: 64)")
    p.add_argument("--max-batch-size", type=int, default=32, help="batch limit of the micro-batched mode")
    p.add_argument("--max-wait-ms", type=float, default=5.0)
    p.add_argument("--endpoint", default="/v1/predict", choices=["/v1/predict", "/v1/act"])
    p.add_argument("--threads", type=int, default=1, help="server's torch intra-op threads (`mmagent serve --threads`); 0 = torch's default. Default 1: on a small shared machine, intra-op threads mostly wait on each other")
    p.add_argument("--smoke", action="store_true", help="few requests (CI); writes serve_load.smoke.json")
    args = p.parse_args(argv)
    args.requests = args.requests or (64 if args.smoke else 1000)
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

    started = time.perf_counter()
    load_before = os.getloadavg()
    with tempfile.TemporaryDirectory(prefix="mmagent-serve-load-") as tmp:
        tmp_path = Path(tmp)
        run_dir = args.run_dir
        if run_dir is None:
            print("training a small text+image+audio+numeric model ...", flush=True)
            run_dir = train_small_run(tmp_path)
        bodies = payloads(run_dir, tmp_path)
        modes = {}
        for label, bs in (("micro-batched", args.max_batch_size), ("unbatched", 1)):
            print(f"{label}: max_batch_size {bs}, {args.clients} clients, {args.requests} requests ...", flush=True)
            modes[label] = run_mode(run_dir, bodies, args, bs, tmp_path)
            m = modes[label]
            print(f"  {m['throughput_rps']:.1f} req/s, p50 {m['p50_ms']:.1f} ms, p99 {m['p99_ms']:.1f} ms, errors {m['errors']} {m['error_kinds'] or ''}, mean batch {m['mean_batch_size']:.1f} records", flush=True)
    wall = round(time.perf_counter() - started, 1)
    ratio = modes["micro-batched"]["throughput_rps"] / modes["unbatched"]["throughput_rps"] if modes["unbatched"]["throughput_rps"] else float("nan")
    rows = []
    for label, m in modes.items():
        variant = f"{label} (max_batch_size {m['max_batch_size']}), {args.clients} clients"
        for metric in ("throughput_rps", "p50_ms", "p99_ms", "errors", "mean_batch_size"):
            rows.append({"benchmark": NAME, "variant": variant, "metric": metric, "value": m[metric], "wall_s": wall})
    rows.append({"benchmark": NAME, "variant": f"batched / unbatched, {args.clients} clients", "metric": "throughput_ratio", "value": ratio, "wall_s": wall})
    extra = {
        "settings": {"clients": args.clients, "requests": args.requests, "max_batch_size": args.max_batch_size, "max_wait_ms": args.max_wait_ms, "endpoint": args.endpoint, "torch_threads": args.threads or "torch default", "run_dir": str(args.run_dir) if args.run_dir else "small model trained by the benchmark"},
        "modes": modes,
        "throughput_ratio": ratio,
        "load_average_before": load_before,
        "load_average_after": os.getloadavg(),
    }
    path = write_result(NAME, rows, args.smoke, extra)
    print(f"micro-batched / unbatched throughput at {args.clients} clients: {ratio:.2f}x -> {path}")
    return 0 if all(m["errors"] == 0 for m in modes.values()) else 1


if __name__ == "__main__":
    raise SystemExit(main())
