"""N-gram tables over token ids: the drafter's memory.

Two kinds live here:

* `NgramTable` - built once from a task's output corpus (token ids from the *target's*
  tokenizer). Stored as flat numpy arrays so a corpus of thousands of outputs stays a few MB
  and loads without unpickling. For every context length k = 1..max_order-1 the table holds the
  sorted 64-bit hashes of all contexts seen, and for each context its continuations sorted by
  count. A lookup is one binary search (`np.searchsorted`) per context length.
* `ContextNgrams` - the live context (prompt + text accepted so far), updated incrementally as
  tokens are accepted. It is small, so it uses plain dicts keyed by the same hash.

Contexts are hashed, not stored: a 64-bit collision (probability ~n^2/2^65, about 1e-8 for a
million contexts) can only produce a wrong *draft*, which verification rejects, so exactness
never depends on the hash.
"""

from __future__ import annotations

import io
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable, Sequence

import numpy as np

from tasc_edge.errors import TascError
from tasc_edge.files import atomic_write_bytes

FORMAT_VERSION = 1
_MASK = (1 << 64) - 1
_MUL = 0x9E3779B97F4A7C15  # golden-ratio multiplier: spreads consecutive ids over 64 bits


def context_hash(tokens: Sequence[int]) -> int:
    """Stable 64-bit hash of a token tuple (same arithmetic as `_hash_windows`)."""
    h = 0
    for t in tokens:
        h = ((h ^ (int(t) + 1)) * _MUL) & _MASK
    return h


def _hash_windows(ids: np.ndarray, k: int) -> np.ndarray:
    """Hash every window ids[i:i+k] at once; uint64 arithmetic wraps like `& _MASK`."""
    n = len(ids) - k + 1
    h = np.zeros(n, dtype=np.uint64)
    mul = np.uint64(_MUL)
    with np.errstate(over="ignore"):
        for j in range(k):
            h = (h ^ (ids[j : j + n].astype(np.uint64) + np.uint64(1))) * mul
    return h


def longest_match(lookup_exact: Callable[[Sequence[int]], "Continuations | None"],
                  context: Sequence[int], max_len: int) -> tuple[int, "Continuations | None"]:
    """Longest-match backoff: (context length matched, continuations) or (0, None)."""
    for k in range(min(max_len, len(context)), 0, -1):
        found = lookup_exact(context[-k:])
        if found is not None:
            return k, found
    return 0, None


@dataclass
class Continuations:
    """What followed one context: token ids sorted by count (most frequent first)."""

    tokens: np.ndarray  # int32
    counts: np.ndarray  # uint32
    total: int


class NgramTable:
    """Counts of continuations for contexts of length 1..max_order-1 in a token corpus."""

    def __init__(self, max_order: int, keys: list[np.ndarray], offsets: list[np.ndarray],
                 tokens: list[np.ndarray], counts: list[np.ndarray], tokenizer_hash: str,
                 n_sequences: int, n_tokens: int) -> None:
        self.max_order = max_order
        self.keys, self.offsets, self.tokens, self.counts = keys, offsets, tokens, counts
        self.tokenizer_hash = tokenizer_hash
        self.n_sequences = n_sequences
        self.n_tokens = n_tokens
        # bucket -> (right, judged): how often a drafter using this table drafted the target's
        # own tokens, measured at export on held-out generations (drafters.replay_outcomes).
        # Optional arrays in the file: an older table has none, an older reader skips them.
        self.calibration: dict[tuple[int, ...], tuple[int, int]] | None = None

    # -- building ---------------------------------------------------------------------------
    @classmethod
    def build(cls, sequences: Iterable[Sequence[int]], tokenizer_hash: str,
              max_order: int = 4) -> "NgramTable":
        """Count every (context, next token) pair in `sequences` for context lengths 1..N-1."""
        if max_order < 2:
            raise TascError(f"max_order must be >= 2, got {max_order}")
        seqs = [np.asarray(s, dtype=np.int64) for s in sequences]
        seqs = [s for s in seqs if len(s) >= 2]
        if not seqs:
            raise TascError("empty corpus: no output with at least 2 tokens to build an n-gram "
                            "table from; check the task's `output` fields")
        keys, offsets, tokens, counts = [], [], [], []
        for k in range(1, max_order):
            ctx_keys, nexts = [], []
            for s in seqs:
                if len(s) <= k:
                    continue
                ctx_keys.append(_hash_windows(s[:-1], k))
                nexts.append(s[k:])
            if not ctx_keys:  # every sequence is shorter than this context length
                keys.append(np.zeros(0, np.uint64)); offsets.append(np.zeros(1, np.int64))
                tokens.append(np.zeros(0, np.int32)); counts.append(np.zeros(0, np.uint32))
                continue
            kk, nx = np.concatenate(ctx_keys), np.concatenate(nexts)
            # unique (context, next) pairs with counts, then sort by context asc / count desc
            pairs = np.stack([kk, nx.astype(np.uint64)], axis=1)
            uniq, cnt = np.unique(pairs, axis=0, return_counts=True)
            order = np.lexsort((uniq[:, 1], -cnt.astype(np.int64), uniq[:, 0]))
            uniq, cnt = uniq[order], cnt[order]
            ukeys, starts = np.unique(uniq[:, 0], return_index=True)
            keys.append(ukeys)
            offsets.append(np.append(starts, len(uniq)).astype(np.int64))
            tokens.append(uniq[:, 1].astype(np.int32))
            counts.append(cnt.astype(np.uint32))
        return cls(max_order, keys, offsets, tokens, counts, tokenizer_hash,
                   n_sequences=len(seqs), n_tokens=int(sum(len(s) for s in seqs)))

    # -- lookup ------------------------------------------------------------------------------
    def lookup(self, context: Sequence[int]) -> tuple[int, Continuations | None]:
        return longest_match(self.lookup_exact, context, self.max_order - 1)

    def lookup_exact(self, context: Sequence[int]) -> Continuations | None:
        k = len(context)
        if k == 0 or k >= self.max_order:
            return None
        keys = self.keys[k - 1]
        h = np.uint64(context_hash(context))
        i = int(np.searchsorted(keys, h))
        if i == len(keys) or keys[i] != h:
            return None
        a, b = int(self.offsets[k - 1][i]), int(self.offsets[k - 1][i + 1])
        c = self.counts[k - 1][a:b]
        return Continuations(self.tokens[k - 1][a:b], c, int(c.sum()))

    @property
    def nbytes(self) -> int:
        return int(sum(a.nbytes for group in (self.keys, self.offsets, self.tokens, self.counts)
                       for a in group))

    # -- persistence -------------------------------------------------------------------------
    def save(self, path: str | Path) -> None:
        """Write a versioned .npz atomically (temp file + rename): never a half-written table."""
        arrays: dict[str, np.ndarray] = {
            "format_version": np.array(FORMAT_VERSION),
            "max_order": np.array(self.max_order),
            "tokenizer_hash": np.array(self.tokenizer_hash),
            "n_sequences": np.array(self.n_sequences),
            "n_tokens": np.array(self.n_tokens),
        }
        for k in range(self.max_order - 1):
            arrays[f"keys_{k}"] = self.keys[k]
            arrays[f"offsets_{k}"] = self.offsets[k]
            arrays[f"tokens_{k}"] = self.tokens[k]
            arrays[f"counts_{k}"] = self.counts[k]
        if self.calibration:
            arrays["calibration_buckets"] = np.array(list(self.calibration), dtype=np.int64)
            arrays["calibration_counts"] = np.array(list(self.calibration.values()), dtype=np.int64)
        buf = io.BytesIO()
        np.savez_compressed(buf, **arrays)
        atomic_write_bytes(Path(path), buf.getvalue())

    @classmethod
    def load(cls, path: str | Path, expect_tokenizer_hash: str | None = None) -> "NgramTable":
        path = Path(path)
        try:
            with np.load(path, allow_pickle=False) as z:
                version = int(z["format_version"])
                if version != FORMAT_VERSION:
                    raise TascError(f"{path}: n-gram table format {version}, this tasc-edge reads "
                                    f"format {FORMAT_VERSION}; rebuild the table")
                n = int(z["max_order"])
                table = cls(n, [z[f"keys_{k}"] for k in range(n - 1)],
                            [z[f"offsets_{k}"] for k in range(n - 1)],
                            [z[f"tokens_{k}"] for k in range(n - 1)],
                            [z[f"counts_{k}"] for k in range(n - 1)],
                            str(z["tokenizer_hash"]), int(z["n_sequences"]), int(z["n_tokens"]))
                if "calibration_buckets" in z.files:
                    table.calibration = {tuple(int(x) for x in b): (int(c[0]), int(c[1])) for b, c in
                                         zip(z["calibration_buckets"], z["calibration_counts"])}
        except (OSError, KeyError, ValueError, zipfile.BadZipFile, EOFError) as e:
            raise TascError(f"{path}: not a readable tasc-edge n-gram table ({e}); rebuild it") from e
        if expect_tokenizer_hash is not None and table.tokenizer_hash != expect_tokenizer_hash:
            raise TascError(f"{path}: n-gram table was built with tokenizer {table.tokenizer_hash[:12]}, "
                            f"but the model's tokenizer is {expect_tokenizer_hash[:12]}; rebuild the "
                            "table with this model (token ids would not mean the same thing)")
        return table


class ContextNgrams:
    """Incremental n-gram counts over the live context (prompt + accepted tokens).

    For each context it keeps the continuation counts and the position each continuation was
    last seen at; ties in count go to the most recent, which is what copying from the prompt
    wants (the latest occurrence is the most relevant one).
    """

    def __init__(self, max_order: int = 4) -> None:
        self.max_order = max_order
        self.tokens: list[int] = []
        self._tables: list[dict[int, dict[int, list[int]]]] = [{} for _ in range(max_order - 1)]

    def extend(self, new_tokens: Iterable[int]) -> None:
        for t in new_tokens:
            t = int(t)
            pos = len(self.tokens)
            for k in range(1, min(self.max_order - 1, pos) + 1):
                h = context_hash(self.tokens[pos - k:])
                entry = self._tables[k - 1].setdefault(h, {})
                stat = entry.setdefault(t, [0, pos])
                stat[0] += 1
                stat[1] = pos
            self.tokens.append(t)

    def lookup(self, context: Sequence[int]) -> tuple[int, Continuations | None]:
        return longest_match(self.lookup_exact, context, self.max_order - 1)

    def lookup_exact(self, context: Sequence[int]) -> Continuations | None:
        k = len(context)
        if k == 0 or k >= self.max_order:
            return None
        entry = self._tables[k - 1].get(context_hash(context))
        if not entry:
            return None
        ranked = sorted(entry.items(), key=lambda kv: (-kv[1][0], -kv[1][1]))
        toks = np.fromiter((t for t, _ in ranked), dtype=np.int32, count=len(ranked))
        cnts = np.fromiter((s[0] for _, s in ranked), dtype=np.uint32, count=len(ranked))
        return Continuations(toks, cnts, int(cnts.sum()))
