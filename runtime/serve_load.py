"""A loopback load test for `tasc-edge serve`: the server in a background thread, N requests
from C concurrent clients (stdlib HTTP only), requests/s and latency percentiles, errors."""

from __future__ import annotations

import json
import statistics
import threading
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass

from tasc_edge.errors import TascError, require


class ServerThread:
    """uvicorn serving `app` on 127.0.0.1 from a daemon thread; a context manager."""

    def __init__(self, app, port: int = 0):
        uvicorn = require("uvicorn", "serve")
        self.server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    def __enter__(self) -> "ServerThread":
        self.thread.start()
        deadline = time.time() + 30
        while not self.server.started:
            if time.time() > deadline or not self.thread.is_alive():
                raise TascError("the server did not start")
            time.sleep(0.02)
        return self

    @property
    def url(self) -> str:
        sock = self.server.servers[0].sockets[0]
        return f"http://127.0.0.1:{sock.getsockname()[1]}"

    def __exit__(self, *exc) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=30)


@dataclass
class LoadResult:
    requests: int
    concurrency: int
    errors: int
    seconds: float
    requests_per_s: float
    p50_ms: float
    p95_ms: float
    completion_tokens: int
    error_samples: list[str]


def post(url: str, payload: dict, timeout: float) -> tuple[int, dict]:
    req = urllib.request.Request(url, json.dumps(payload).encode(), {"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read() or b"{}")


def load_test(base_url: str, prompts: list[str], requests: int, concurrency: int, max_tokens: int = 32,
              timeout: float = 120.0) -> LoadResult:
    """`requests` chat completions, `concurrency` at a time, prompts cycled; bounded by `timeout`
    per request."""
    latencies: list[float] = []
    errors: list[str] = []
    tokens = [0]
    lock = threading.Lock()

    def one(i: int) -> None:
        t = time.perf_counter()
        try:
            status, body = post(f"{base_url}/v1/chat/completions", {
                "messages": [{"role": "user", "content": prompts[i % len(prompts)]}],
                "max_tokens": max_tokens}, timeout)
        except Exception as e:  # a refused or timed-out connection is an error, not a crash
            status, body = -1, {"error": {"message": f"{type(e).__name__}: {e}"}}
        dt = time.perf_counter() - t
        with lock:
            if status == 200:
                latencies.append(dt)
                tokens[0] += body["usage"]["completion_tokens"]
            else:
                errors.append(f"{status}: {body.get('error', {}).get('message', '')}"[:200])

    start = time.perf_counter()
    with ThreadPoolExecutor(concurrency) as pool:
        list(pool.map(one, range(requests)))
    secs = time.perf_counter() - start
    ok = sorted(latencies)
    p95 = ok[min(len(ok) - 1, int(round(0.95 * (len(ok) - 1))))] if ok else 0.0
    return LoadResult(requests, concurrency, len(errors), secs, len(ok) / secs,
                      (statistics.median(ok) if ok else 0.0) * 1e3, p95 * 1e3, tokens[0], errors[:5])


def format_load(r: LoadResult) -> str:
    return (f"{r.requests} requests, {r.concurrency} concurrent: {r.requests_per_s:.2f} req/s, "
            f"p50 {r.p50_ms:.0f} ms, p95 {r.p95_ms:.0f} ms, errors {r.errors}, "
            f"{r.completion_tokens} tokens in {r.seconds:.1f} s")


def as_dict(r: LoadResult) -> dict:
    return asdict(r)
