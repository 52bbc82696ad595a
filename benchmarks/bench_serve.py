"""Load on the REST API: N concurrent clients on loopback for a bounded time, with and without micro-batching.

    python benchmarks/bench_serve.py --model runs/quickstart --endpoint embed --clients 16 --seconds 20

The same model serves twice from a real uvicorn server on 127.0.0.1: once with the micro-batcher
gathering requests (``--batch-ms``, ``--max-batch``) and once with ``max_batch=1`` (every request its
own forward pass). Each client thread posts one world image (or a question about it) in a loop; the
script reports requests/s and p50/p99 latency for both, the forward passes the server ran, and the
ratio; ``--out`` writes the numbers as JSON. Only ratios within one run mean anything on a shared CPU.
"""

from __future__ import annotations

import argparse
import platform
import socket
import statistics
import sys
import threading
import time
from pathlib import Path
from typing import Any

import httpx
import torch
import uvicorn
from provenance import write_result

from polymodal.api import load_model
from polymodal.serve import ServeSettings, create_app

ENDPOINTS = {
    "embed": ("/v1/embed", {}),
    "caption": ("/v1/caption", {}),
    "answer": ("/v1/answer", {"question": "how many spheres are there?"}),
}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    """uvicorn on 127.0.0.1 in a background thread, up until ``stop``."""

    def __init__(self, app: Any) -> None:
        self.port = free_port()
        self.server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=self.port, log_level="warning"))
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    def __enter__(self) -> str:
        self.thread.start()
        url = f"http://127.0.0.1:{self.port}"
        for _ in range(200):
            try:
                if httpx.get(url + "/v1/health", timeout=1).status_code == 200:
                    return url
            except httpx.HTTPError:
                time.sleep(0.05)
        raise RuntimeError("the server did not come up")

    def __exit__(self, *exc: object) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=10)


def load(url: str, endpoint: str, image: bytes, clients: int, seconds: float) -> dict[str, float]:
    path, fields = ENDPOINTS[endpoint]
    latencies: list[float] = []
    errors = [0]
    lock = threading.Lock()
    stop = time.perf_counter() + seconds

    def client() -> None:
        with httpx.Client(base_url=url, timeout=60) as http:
            while time.perf_counter() < stop:
                t0 = time.perf_counter()
                r = http.post(path, files={"image": ("q.png", image, "image/png")}, data=fields)
                with lock:
                    if r.status_code == 200:
                        latencies.append(time.perf_counter() - t0)
                    else:
                        errors[0] += 1

    threads = [threading.Thread(target=client) for _ in range(clients)]
    started = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - started
    q = statistics.quantiles(latencies, n=100) if len(latencies) >= 2 else [float("nan")] * 99
    return {"requests": len(latencies), "errors": errors[0], "req_per_s": len(latencies) / wall, "p50_ms": q[49] * 1000, "p99_ms": q[98] * 1000}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", required=True, help="A run folder, HF folder or zoo name that serves the endpoint.")
    ap.add_argument("--image", type=Path, required=True, help="The image every request sends.")
    ap.add_argument("--endpoint", choices=sorted(ENDPOINTS), default="embed")
    ap.add_argument("--clients", type=int, default=16)
    ap.add_argument("--seconds", type=float, default=20.0)
    ap.add_argument("--batch-ms", type=float, default=5.0)
    ap.add_argument("--max-batch", type=int, default=32)
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args()

    model, proc = load_model(args.model)
    image = args.image.read_bytes()
    results: dict[str, Any] = {}
    for label, settings in (
        ("micro-batched", ServeSettings(batch_ms=args.batch_ms, max_batch=args.max_batch)),
        ("one request per pass", ServeSettings(batch_ms=0.0, max_batch=1)),
    ):
        app = create_app(model, proc, settings=settings)
        with Server(app) as url:
            httpx.post(url + ENDPOINTS[args.endpoint][0], files={"image": ("q.png", image, "image/png")}, data=ENDPOINTS[args.endpoint][1], timeout=60)  # warm-up
            row = load(url, args.endpoint, image, args.clients, args.seconds)
            stats = httpx.get(url + "/v1/models", timeout=10).json().get("batching", {})
        row["batching"] = stats
        results[label] = row
        print(f"{label:>22}: {row['req_per_s']:7.1f} req/s  p50 {row['p50_ms']:7.1f} ms  p99 {row['p99_ms']:7.1f} ms  "
              f"({row['requests']} ok, {row['errors']} errors)", flush=True)
    ratio = results["micro-batched"]["req_per_s"] / max(1e-9, results["one request per pass"]["req_per_s"])
    print(f"throughput ratio, micro-batched / one per pass: {ratio:.2f}x")
    summary = {
        "date": time.strftime("%Y-%m-%d"),
        "machine": {"cpu_count": torch.get_num_threads(), "processor": platform.processor(), "torch": torch.__version__, "python": sys.version.split()[0]},
        "model": str(args.model), "model_type": proc.model_type, "endpoint": args.endpoint, "clients": args.clients,
        "seconds": args.seconds, "batch_ms": args.batch_ms, "max_batch": args.max_batch, "results": results, "throughput_ratio": ratio,
    }
    if args.out:
        write_result(args.out, summary)


if __name__ == "__main__":
    main()
