"""Soak: many consecutive generations through one loaded runtime, watching RSS and latency.

A device runs for days; a leak of a few KB per request or a cache that only grows shows up as
a trend here long before it shows up in the field. Each generation rotates through prompts,
methods (plain, TASC-spec) and greedy/sampled decoding, so every path of the loop - prefix
reuse, rollbacks, drafter state - is exercised. `tasc-edge` users get this as
`python -m tasc_edge.runtime.soak --model X.gguf --task T`.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from dataclasses import asdict, dataclass

import numpy as np

from tasc_edge.decode import GenerateConfig, generate
from tasc_edge.drafters import make_drafter
from tasc_edge.errors import require
from tasc_edge.verify import SamplingConfig


@dataclass
class SoakResult:
    generations: int
    rss_mb: list[float]  # after each generation
    latency_ms: list[float]
    tokens: int
    rss_growth: float  # last RSS / RSS after the warm-up, minus 1
    latency_trend: float  # median latency of the last fifth / of the first fifth after warm-up


def soak(backend, prompts: list[list[int]], table, n: int = 1000, max_new_tokens: int = 24,
         warmup: int = 50, seed: int = 0) -> SoakResult:
    psutil = require("psutil", "runtime")
    proc = psutil.Process()
    rng = np.random.default_rng(seed)
    rss, lat, tokens = [], [], 0
    for i in range(n):
        method = "tasc-spec" if i % 2 else "plain"
        sampled = i % 5 == 4
        cfg = GenerateConfig(max_new_tokens, 8, SamplingConfig(0.8 if sampled else 0.0, top_k=20),
                             backend.stop_tokens)
        t = time.perf_counter()
        g = generate(backend, prompts[i % len(prompts)], make_drafter(method, table), cfg,
                     rng=rng if sampled else None)
        lat.append((time.perf_counter() - t) * 1e3)
        tokens += len(g.tokens)
        rss.append(proc.memory_info().rss / 1e6)
    base = rss[min(warmup, n - 1)]
    steady = lat[warmup:] or lat
    fifth = max(1, len(steady) // 5)
    return SoakResult(n, rss, lat, tokens, rss[-1] / base - 1.0,
                      statistics.median(steady[-fifth:]) / statistics.median(steady[:fifth]))


def plot(result: SoakResult, path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (a, b) = plt.subplots(2, 1, figsize=(8, 5), sharex=True)
    a.plot(result.rss_mb)
    a.set_ylabel("RSS (MB)")
    a.set_title(f"soak: {result.generations} generations, RSS growth {result.rss_growth:+.2%}, "
                f"latency trend x{result.latency_trend:.2f}")
    b.plot(result.latency_ms, ".", markersize=2)
    b.set_ylabel("latency (ms)")
    b.set_xlabel("generation")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    from pathlib import Path

    from tasc_edge.runtime.bundle import open_target
    from tasc_edge.runtime.run import reference_table
    from tasc_edge.tasks import load_task

    ap = argparse.ArgumentParser(prog="python -m tasc_edge.runtime.soak", description=__doc__)
    ap.add_argument("--model", help="GGUF (default: packaged SmolLM2)")
    ap.add_argument("--quant", default="q4_0")
    ap.add_argument("--task", default="demo")
    ap.add_argument("-n", type=int, default=1000)
    ap.add_argument("--max-new-tokens", type=int, default=24)
    ap.add_argument("--out", default="soak-out")
    args = ap.parse_args(argv)
    backend, path, _ = open_target(args.model, args.quant, 2048, None, None)
    with backend:
        task = load_task(args.task)
        prompts = [backend.chat_prompt(r.prompt) for r in task.test[:20]]
        result = soak(backend, prompts, reference_table(backend, task), args.n, args.max_new_tokens)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "soak.json").write_text(json.dumps({"model": path.name, **asdict(result)}) + "\n")
    plot(result, out / "soak.png")
    print(f"{result.generations} generations, {result.tokens} tokens: RSS {result.rss_mb[0]:.0f} -> "
          f"{result.rss_mb[-1]:.0f} MB (growth after warm-up {result.rss_growth:+.2%}), latency trend "
          f"x{result.latency_trend:.2f}; {out}/soak.json, soak.png")
    return 0 if result.rss_growth < 0.05 else 1


if __name__ == "__main__":
    raise SystemExit(main())
