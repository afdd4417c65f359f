"""Soak: 1,000 consecutive generations through one loaded llama.cpp runtime (tiny GGUF), plain
and TASC-spec, greedy and sampled: RSS must not grow by 5% after warm-up, latency must not
trend upward (the curve for the real model is in docs/results/soak/)."""

import pytest

pytest.importorskip("llama_cpp")
pytest.importorskip("psutil")

from tasc_edge.runtime.llama_backend import LlamaCppBackend  # noqa: E402
from tasc_edge.runtime.run import reference_table  # noqa: E402
from tasc_edge.runtime.soak import soak  # noqa: E402
from tasc_edge.tasks import load_task  # noqa: E402
from tiny_gguf import write_tiny_gguf  # noqa: E402


def test_thousand_generations_hold_memory_and_speed(tmp_path):
    path = write_tiny_gguf(tmp_path / "tiny.gguf", seed=6)
    task = load_task("demo")
    with LlamaCppBackend(path, n_ctx=512, n_threads=1) as b:
        prompts = [b.chat_prompt(r.prompt) for r in task.test[:20]]
        r = soak(b, prompts, reference_table(b, task), n=1000, max_new_tokens=16)
    assert r.generations == 1000 and len(r.rss_mb) == 1000 and r.tokens > 1000
    assert r.rss_growth < 0.05, f"RSS grew {r.rss_growth:.1%} over 950 generations"
    assert r.latency_trend < 1.5, f"latency trend x{r.latency_trend:.2f}"
