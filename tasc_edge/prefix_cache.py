"""Prompt-prefix cache: KV snapshots of earlier prompts, reused by later prompts that start
the same way.

Task prompts repeat long templates - the chat template's system turn, the instruction, a
database schema per database (text2sql), a tool list per app (bfcl) - and evaluating them is
25-50% of a request here once speculation has made decoding cheap. llama.cpp's server keeps
the previous prompt per slot, vLLM and SGLang share prefix blocks between requests; this is
the small-device version: a byte-bounded LRU of whole-prompt snapshots, looked up by longest
common token prefix. A backend restores the best entry, cut to the shared length, and
evaluates only the rest. The snapshot itself is opaque here (numpy arrays for onnxruntime,
a llama.cpp sequence-state blob); the backend says how many bytes it holds.

Exactness: a backend may use this only if a row's logits do not depend on how the sequence
was split into forwards (the same property batched verification needs; both backends check
it), so cached and cold prompts give identical outputs.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass
from typing import Generic, Sequence, TypeVar

from tasc_edge.decode import common_prefix_length

Snapshot = TypeVar("Snapshot")


@dataclass
class PrefixHit(Generic[Snapshot]):
    tokens: int  # how many leading tokens of the prompt the snapshot covers
    snapshot: Snapshot


class PrefixCache(Generic[Snapshot]):
    def __init__(self, max_bytes: int, min_tokens: int = 16) -> None:
        """`min_tokens`: shorter matches are not worth a restore (the chat template's first
        tokens are shared by every prompt)."""
        self.max_bytes, self.min_tokens = max_bytes, min_tokens
        self._entries: OrderedDict[tuple[int, ...], tuple[Snapshot, int]] = OrderedDict()
        self.bytes = 0
        self.hits = self.misses = self.reused_tokens = 0
        # frozen: lookups only. The bench freezes the cache while it times a request, so every
        # method of a row sees the cache as the earlier rows left it, not its own prompt.
        self.frozen = False

    @classmethod
    def of_megabytes(cls, mb: float) -> "PrefixCache":
        return cls(int(mb * 2**20))

    def __len__(self) -> int:
        return len(self._entries)

    def lookup(self, tokens: Sequence[int]) -> PrefixHit[Snapshot] | None:
        """The entry sharing the longest prefix with `tokens` (at least `min_tokens`), or None."""
        best, best_n = None, 0
        for key in self._entries:
            n = common_prefix_length(key, tokens)
            if n > best_n:
                best, best_n = key, n
        if best is None or best_n < self.min_tokens:
            self.misses += 1
            return None
        self._entries.move_to_end(best)
        self.hits += 1
        self.reused_tokens += best_n
        return PrefixHit(best_n, self._entries[best][0])

    def store(self, tokens: Sequence[int], snapshot: Snapshot, nbytes: int) -> None:
        """Keep `snapshot` (the state after evaluating exactly `tokens`); evict least recently
        used entries past the budget. An entry that is a prefix of the new one is dropped:
        the new one serves every prompt the old one did."""
        key = tuple(int(t) for t in tokens)
        if self.frozen or len(key) < self.min_tokens or nbytes > self.max_bytes:
            return
        for old in [k for k in self._entries if len(k) <= len(key) and key[: len(k)] == k]:
            self.bytes -= self._entries.pop(old)[1]
        self._entries[key] = (snapshot, nbytes)
        self.bytes += nbytes
        while self.bytes > self.max_bytes:
            self.bytes -= self._entries.popitem(last=False)[1][1]

    def clear(self) -> None:
        self._entries.clear()
        self.bytes = 0

    def stats(self) -> dict:
        return {"entries": len(self._entries), "bytes": self.bytes, "max_bytes": self.max_bytes,
                "hits": self.hits, "misses": self.misses, "reused_tokens": self.reused_tokens}
