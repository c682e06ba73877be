"""HTTP load on `mmagent serve`: micro-batching and the ONNX Runtime backend on the real
customer-service agent.

    python -m benchmarks.serve_load [--run-dir RUN] [--clients 1 8 32] [--requests 400] [--rounds 2] [--draft | --smoke]

The agent served is the zoo MiniLM-L6 customer-service model (``source: zoo, name: minilm-l6``,
installed offline: README "Offline zoo"), not a tiny random model, so the numbers say what
batching and ONNX Runtime buy on a real encoder. Without ``--run-dir`` a small one is trained
first on the demo's customer-service utterances (the encoder frozen, its features cached: seconds
of training; the served model still runs the full MiniLM forward pass per request, which is what
is measured).

Four real server processes (``python -m mmagent serve``, uvicorn, loopback) run side by side:
PyTorch and ONNX Runtime (``--backend onnx``; exported once before they start), each
micro-batched (``--max-batch-size 32``) and one request at a time (``1``). Each keeps the thread
plan ``serve`` picks for this machine (reported from its ``/v1/schema``) unless ``--threads``.
For each client count, the four configurations are measured in turn, ``--rounds`` times in a
rotating order, so a change in machine load spreads over all of them instead of favouring one;
the rounds are pooled. ``--clients`` concurrent httpx clients (one kept-alive connection each)
post one utterance per request to ``--endpoint`` (default ``/v1/act``: the agent's decision).
Per configuration and client count: throughput, p50 / p99 / mean latency, errors by kind (0
required: the exit status is 1 otherwise), the server's mean batch size (from its /metrics) and
the 1-minute load average before each measurement; then the throughput ratios micro-batched /
one-at-a-time and onnx / torch. Results: ``benchmarks/results/serve_load.json``
(``.draft.json`` with ``--draft``, ``.smoke.json`` with ``--smoke``: a smaller model, few
requests, for CI).

The load generator runs on the same machine as the servers and takes CPU from them; every
configuration pays that cost alike.
"""

from __future__ import annotations

import argparse
import asyncio
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

from benchmarks.common import BenchParser, write_result  # noqa: E402

NAME = "serve_load"


# -- the customer-service agent, when none is given --------------------------------------------
def train_customer_service(folder: Path, per_intent: int) -> Path:
    """A text-only customer-service run on the zoo MiniLM-L6 encoder (frozen: its features are
    cached, so training takes seconds), with the demo's playbook."""
    import yaml

    from mmagent.config import config_from_dict
    from mmagent.demo.requests import customer_requests, playbook
    from mmagent.training.trainer import train

    frame = customer_requests(max(1, per_intent // 8), seed=0)[["text", "intent"]]
    n_val = max(len(frame) // 5, 8)
    frame[n_val:].to_csv(folder / "train.csv", index=False)
    frame[:n_val].to_csv(folder / "validation.csv", index=False)
    (folder / "playbook.yaml").write_text(yaml.safe_dump(playbook(), sort_keys=False))
    config = {
        "recipe": "customer_service",
        "data": {"train": str(folder / "train.csv"), "validation": str(folder / "validation.csv")},
        "inputs": [{"column": "text", "modality": "text", "encoder": {"source": "zoo", "name": "minilm-l6", "freeze": "all", "max_length": 64}}],
        "targets": [{"column": "intent", "type": "classification"}],
        "agent": {"type": "customer_service", "playbook": str(folder / "playbook.yaml")},
        "train": {"epochs": 2, "batch_size": 16},
    }
    run = folder / "run"
    train(config_from_dict(config), run, progress=False)
    return run


def payloads(run_dir: Path, n: int = 64) -> list[dict[str, Any]]:
    """One utterance per request (unseen in training: another seed), in the run's text column."""
    import json

    from mmagent.demo.requests import customer_requests

    spec = json.loads(((run_dir / "model" if (run_dir / "model").is_dir() else run_dir) / "model.json").read_text())
    text = [c for inp in spec["inputs"] if inp["modality"] == "text" for c in (inp["column"] if isinstance(inp["column"], list) else [inp["column"]])]
    if not text:
        raise SystemExit(f"{run_dir}: this benchmark sends customer utterances and needs a model with a text input")
    utterances = customer_requests(max(1, n // 60), seed=1)["text"].tolist()[:n]
    return [{"record": {text[0]: u}} for u in utterances]


# -- the server ---------------------------------------------------------------------------------
def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    """``python -m mmagent serve`` in a subprocess on loopback, with an API key."""

    def __init__(self, run_dir: Path, max_batch_size: int, max_wait_ms: float, log: Path, threads: int | None = None, backend: str = "torch") -> None:
        self.key = secrets.token_urlsafe(24)
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        env = {**os.environ, "MMAGENT_API_KEYS": self.key, "PYTHONUNBUFFERED": "1"}
        cmd = [
            sys.executable,
            "-m",
            "mmagent",
            "serve",
            str(run_dir),
            "--port",
            str(self.port),
            "--max-batch-size",
            str(max_batch_size),
            "--max-wait-ms",
            str(max_wait_ms),
            "--backend",
            backend,
            "--log-level",
            "warning",
        ] + (["--threads", str(threads)] if threads else [])
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

    def runtime(self) -> dict[str, Any]:
        import httpx

        return httpx.get(self.url + "/v1/schema", headers={"X-API-Key": self.key}, timeout=10).json().get("runtime") or {}

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
        "latencies": lat,
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


CONFIGS = [("torch", "micro-batched"), ("onnx", "micro-batched"), ("torch", "one at a time"), ("onnx", "one at a time")]


def measure(server: Server, bodies: list[dict[str, Any]], clients: int, requests: int, endpoint: str) -> dict[str, Any]:
    """One measurement on a running server: warm-up (not measured), then ``requests`` requests."""
    kind = endpoint.rsplit("/", 1)[-1]
    asyncio.run(drive(server.url, server.key, bodies, clients, min(requests, 2 * clients), endpoint))
    load = os.getloadavg()[0]
    before = batch_stats(server.metrics(), kind)
    result = asyncio.run(drive(server.url, server.key, bodies, clients, requests, endpoint))
    after = batch_stats(server.metrics(), kind)
    result["model_calls"] = after["model_calls"] - before["model_calls"]
    result["records_batched"] = after["records"] - before["records"]
    result["load_1min"] = load
    return result


def pool(parts: list[dict[str, Any]], latencies: list[list[float]]) -> dict[str, Any]:
    """Rounds of one configuration pooled: throughput over the summed time, quantiles over all latencies."""
    lat = sorted(x for part in latencies for x in part)
    seconds = sum(p["seconds"] for p in parts)
    errors: dict[str, int] = {}
    for p in parts:
        for k, v in p["error_kinds"].items():
            errors[k] = errors.get(k, 0) + v
    calls = sum(p["model_calls"] for p in parts)
    return {
        "rounds": len(parts),
        "answered": len(lat),
        "errors": sum(errors.values()),
        "error_kinds": errors,
        "seconds": round(seconds, 3),
        "throughput_rps": len(lat) / seconds if seconds else 0.0,
        "throughput_rps_per_round": [p["throughput_rps"] for p in parts],
        "p50_ms": 1000 * _quantile(lat, 0.50),
        "p99_ms": 1000 * _quantile(lat, 0.99),
        "mean_ms": 1000 * statistics.fmean(lat) if lat else float("nan"),
        "mean_batch_size": sum(p["records_batched"] for p in parts) / calls if calls else float("nan"),
        "load_1min": [p["load_1min"] for p in parts],
    }


def run_all_configs(run_dir: Path, bodies: list[dict[str, Any]], args: argparse.Namespace, logs: Path) -> tuple[dict[str, dict[int, Any]], dict[str, Any]]:
    """The four servers side by side; per client count, each configuration in a rotating order."""
    servers: dict[str, Server] = {}
    try:
        for backend, mode in CONFIGS:
            bs = args.max_batch_size if mode == "micro-batched" else 1
            servers[f"{backend}, {mode}"] = Server(run_dir, bs, args.max_wait_ms, logs / f"server_{backend}_bs{bs}.log", args.threads or None, backend)
        for server in servers.values():
            server.wait_ready()
        runtime = {label: server.runtime() for label, server in servers.items()}
        for label, rt in runtime.items():
            print(f"  {label}: {rt.get('model_threads')} model thread(s) on {rt.get('cores')} core(s), chosen by {rt.get('chosen_by')}", flush=True)
        out: dict[str, dict[int, Any]] = {label: {} for label in servers}
        labels = list(servers)
        for clients in args.clients:
            parts: dict[str, list[dict[str, Any]]] = {label: [] for label in labels}
            for r in range(args.rounds):
                for label in labels[r % len(labels) :] + labels[: r % len(labels)]:  # rotate who goes first
                    parts[label].append(measure(servers[label], bodies, clients, args.requests, args.endpoint))
            for label in labels:
                out[label][clients] = m = pool(parts[label], [p.pop("latencies") for p in parts[label]])
                print(
                    f"  {clients:>3} clients, {label:<26}: {m['throughput_rps']:.1f} req/s, p50 {m['p50_ms']:.1f} ms, p99 {m['p99_ms']:.1f} ms, "
                    f"errors {m['errors']} {m['error_kinds'] or ''}, mean batch {m['mean_batch_size']:.1f}, load {m['load_1min']}",
                    flush=True,
                )
        return out, runtime
    finally:
        for server in servers.values():
            server.stop()


def export_once(run_dir: Path) -> dict[str, Any]:
    """Make (or check) the ONNX export before the servers start, so none of them exports on its own."""
    from mmagent.agent import Agent

    started = time.perf_counter()
    info = Agent.load(run_dir, backend="onnx").runner.info
    return {**info, "seconds": round(time.perf_counter() - started, 1)}


def main(argv: list[str] | None = None) -> int:
    p = BenchParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--run-dir", type=Path, default=None, help="a customer-service run to serve (default: train a small zoo MiniLM one into a temp folder)")
    p.add_argument("--clients", type=int, nargs="+", default=None, help="concurrent client counts (default 1 8 32; --smoke: 1 4)")
    p.add_argument("--requests", type=int, default=None, help="measured requests per configuration, client count and round (default 400; --smoke: 8)")
    p.add_argument("--rounds", type=int, default=None, help="rounds per client count, configurations in a rotating order (default 2; --smoke: 1)")
    p.add_argument("--max-batch-size", type=int, default=32, help="batch limit of the micro-batched configurations")
    p.add_argument("--max-wait-ms", type=float, default=5.0)
    p.add_argument("--endpoint", default="/v1/act", choices=["/v1/predict", "/v1/act"])
    p.add_argument(
        "--threads", type=int, default=0, help="servers' model threads (`mmagent serve --threads`); 0 (default): the plan serve picks for this machine"
    )
    p.add_argument("--smoke", action="store_true", help="a smaller model and few requests (CI); writes serve_load.smoke.json")
    p.add_argument("--draft", action="store_true", help="allow a dirty git tree; writes serve_load.draft.json, never RESULTS.md")
    args = p.parse_args(argv)
    args.clients = args.clients or ([1, 4] if args.smoke else [1, 8, 32])
    args.requests = args.requests or (8 if args.smoke else 400)
    args.rounds = args.rounds or (1 if args.smoke else 2)
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

    started = time.perf_counter()
    load_before = os.getloadavg()
    with tempfile.TemporaryDirectory(prefix="mmagent-serve-load-") as tmp:
        tmp_path = Path(tmp)
        run_dir = args.run_dir
        if run_dir is None:
            print("training a small customer-service agent on the zoo MiniLM-L6 encoder ...", flush=True)
            run_dir = train_customer_service(tmp_path, 4 if args.smoke else 30)
        bodies = payloads(run_dir)
        exported = export_once(run_dir)
        print(
            f"onnx export: {'made' if exported['exported_now'] else 'reused'} in {exported['seconds']} s, max abs diff vs PyTorch {exported['max_abs_diff']:.2g}",
            flush=True,
        )
        print(f"{len(CONFIGS)} servers; {args.requests} requests per configuration, client count and round; {args.rounds} round(s) ...", flush=True)
        results, runtime = run_all_configs(run_dir, bodies, args, tmp_path)
    wall = round(time.perf_counter() - started, 1)
    rows, ratios = [], {}
    for clients in args.clients:
        for label, per_clients in results.items():
            m = per_clients[clients]
            for metric in ("throughput_rps", "p50_ms", "p99_ms", "errors", "mean_batch_size"):
                rows.append({"benchmark": NAME, "variant": f"MiniLM agent, {label}, {clients} clients", "metric": metric, "value": m[metric], "wall_s": wall})
        tput = {label: per[clients]["throughput_rps"] for label, per in results.items()}
        pairs = {
            "torch: micro-batched / one at a time": ("torch, micro-batched", "torch, one at a time"),
            "onnx: micro-batched / one at a time": ("onnx, micro-batched", "onnx, one at a time"),
            "micro-batched: onnx / torch": ("onnx, micro-batched", "torch, micro-batched"),
            "one at a time: onnx / torch": ("onnx, one at a time", "torch, one at a time"),
        }
        for name, (num, den) in pairs.items():
            ratio = tput[num] / tput[den] if tput[den] else float("nan")
            ratios.setdefault(name, {})[str(clients)] = ratio
            rows.append(
                {"benchmark": NAME, "variant": f"MiniLM agent, {name}, {clients} clients", "metric": "throughput_ratio", "value": ratio, "wall_s": wall}
            )
    extra = {
        "settings": {
            "clients": args.clients,
            "requests": args.requests,
            "rounds": args.rounds,
            "max_batch_size": args.max_batch_size,
            "max_wait_ms": args.max_wait_ms,
            "endpoint": args.endpoint,
            "threads": args.threads or "serve's plan for this machine",
            "run_dir": str(args.run_dir) if args.run_dir else "customer-service agent (zoo minilm-l6) trained by the benchmark",
        },
        "runtime": runtime,
        "onnx_export": exported,
        "configs": {label: {str(c): m for c, m in per.items()} for label, per in results.items()},
        "throughput_ratio": ratios,
        "load_average_before": load_before,
        "load_average_after": os.getloadavg(),
    }
    path = write_result(NAME, rows, args.smoke, extra, model="customer-service agent: zoo minilm-l6 (frozen) + gated head")
    for name, per in ratios.items():
        print(f"{name} throughput: " + ", ".join(f"{c} clients {r:.2f}x" for c, r in per.items()))
    print(f"load average before {load_before}, after {os.getloadavg()} -> {path}")
    errors = sum(m["errors"] for per in results.values() for m in per.values())
    answered = sum(m["answered"] for per in results.values() for m in per.values())
    return 0 if errors == 0 and answered > 0 else 1


if __name__ == "__main__":
    raise SystemExit(main())
