"""Prompt-prefix cache: the LRU itself, and exactness on the llama.cpp backend (a prompt
restored from an older prompt's snapshot decodes exactly as it does cold)."""

from __future__ import annotations

import pytest

from tasc_edge.decode import GenerateConfig, generate
from tasc_edge.drafters import NgramDrafter
from tasc_edge.ngram import NgramTable
from tasc_edge.prefix_cache import PrefixCache


def test_lookup_returns_the_longest_shared_prefix():
    c = PrefixCache(max_bytes=1000, min_tokens=3)
    c.store([1, 2, 3, 4, 5], "a", 10)
    c.store([1, 2, 9, 9, 9, 9], "b", 10)
    hit = c.lookup([1, 2, 3, 4, 7, 7])
    assert (hit.tokens, hit.snapshot) == (4, "a")
    assert c.lookup([1, 2, 9, 9, 0]).snapshot == "b"
    assert c.lookup([1, 2, 0]) is None  # 2 shared tokens < min_tokens: not worth a restore
    assert c.lookup([5, 5, 5]) is None
    assert (c.hits, c.misses, c.reused_tokens) == (2, 2, 8)


def test_budget_evicts_least_recently_used_and_prefixes_are_merged():
    c = PrefixCache(max_bytes=25, min_tokens=1)
    c.store([1, 1], "a", 10)
    c.store([2, 2], "b", 10)
    c.lookup([1, 1, 5])  # a is now the most recently used
    c.store([3, 3], "c", 10)  # 30 bytes > 25: b goes
    assert c.lookup([2, 2]) is None and c.lookup([1, 1]).snapshot == "a" and len(c) == 2
    c.store([1, 1, 4], "a2", 10)  # a is a prefix of a2: a2 serves whatever a did
    assert len(c) == 2 and c.bytes == 20 and c.lookup([1, 1]).snapshot == "a2"
    c.store([7] * 9, "huge", 26)  # larger than the whole budget: not kept, nothing evicted
    assert len(c) == 2 and c.lookup([7] * 9) is None


def test_frozen_cache_only_reads():
    c = PrefixCache(max_bytes=100, min_tokens=1)
    c.store([1, 2], "a", 1)
    c.frozen = True
    c.store([3, 4], "b", 1)
    assert c.lookup([1, 2]).snapshot == "a" and c.lookup([3, 4]) is None


def test_llama_backend_restores_an_older_prompt_exactly(tmp_path):
    """A, then B (another prefix), then C sharing A's long prefix: the live cache holds B, so
    C's prefix must come from A's snapshot - and C's tokens equal C decoded cold, for plain and
    speculative decoding."""
    llama_backend = pytest.importorskip("tasc_edge.runtime.llama_backend")
    from test_decode_llama import long_prompt
    from tiny_gguf import write_tiny_gguf

    path = write_tiny_gguf(tmp_path / "t.gguf", seed=5, n_ctx=2048)
    cfg = GenerateConfig(max_new_tokens=40, max_draft=8, stop_tokens=frozenset())
    with llama_backend.LlamaCppBackend(path, n_ctx=1024, n_threads=2, reuse_prefix=False) as cold:
        base = long_prompt(cold)
        a, c = base + cold.tokenize(" milk"), base + cold.tokenize(" json two")
        b = cold.chat_prompt("hello two size drink")
        want = generate(cold, c, None, cfg).tokens
    with llama_backend.LlamaCppBackend(path, n_ctx=1024, n_threads=2) as warm:
        warm.prefix_cache = PrefixCache.of_megabytes(64)
        generate(warm, a, None, cfg)
        generate(warm, b, None, cfg)
        assert len(warm.prefix_cache) == 2
        assert generate(warm, c, None, cfg).tokens == want
        assert warm.reused_tokens >= len(base)  # restored from A's snapshot, not re-decoded
        generate(warm, b, None, cfg)
        table = NgramTable.build([want + [2]], warm.tokenizer_hash)
        got = generate(warm, c, NgramDrafter(table), cfg)
        assert got.tokens == want and warm.reused_tokens >= len(base) and got.stats.accepted > 0
