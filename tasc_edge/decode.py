"""The decode loop: plain and speculative decoding in one function.

State kept between iterations: the target's KV cache holds every committed token except the
last one (`pending`). Each iteration drafts d tokens, evaluates [pending, x1..xd] in one target
forward, accepts the longest agreeing prefix plus the target's own next token, and rolls the
cache back over the rejected drafts. With d = 0 this *is* plain decoding, so plain and
speculative runs share every line that could make them differ.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Callable, Protocol, Sequence

import numpy as np

from tasc_edge.cost import CostCurve, best_draft_length
from tasc_edge.errors import TascError
from tasc_edge.verify import SamplingConfig, verify_greedy, verify_sampling


class Backend(Protocol):
    """A target model with a KV cache. Implementations: runtime.llama_backend, tests' numpy LM."""

    n_ctx: int

    def prefill(self, tokens: Sequence[int]) -> None:
        """Clear the cache and evaluate `tokens` (no logits needed)."""

    def forward(self, tokens: Sequence[int]) -> np.ndarray:
        """Append `tokens` to the cache; logits for every one of them, shape [len(tokens), vocab]."""

    def rollback(self, n: int) -> None:
        """Drop the last `n` tokens from the cache."""


def batch_invariant(backend: Backend, context: Sequence[int], probe: Sequence[int]) -> bool:
    """Does one forward over k tokens give bit-for-bit the logits of k one-token forwards?

    Greedy exactness rests on this: verification reads the logits of a batched forward, plain
    decoding those of one-token forwards. llama.cpp with flash attention and quantized weights
    passes; F32 weights take a different matmul kernel for batches and do not.
    """
    backend.prefill(context)
    batched = backend.forward(probe)
    backend.prefill(context)
    single = np.concatenate([backend.forward([t]) for t in probe])
    return bool(np.array_equal(batched, single))


@dataclass
class Draft:
    """Proposed continuation. confidence[i]: estimated P(token i accepted | tokens before it
    accepted). probs: the drafter's distribution per token for sampling (None = point mass)."""

    tokens: list[int] = field(default_factory=list)
    confidence: list[float] = field(default_factory=list)
    probs: np.ndarray | None = None

    def truncate(self, d: int) -> "Draft":
        probs = None if self.probs is None else self.probs[:d]
        return Draft(self.tokens[:d], self.confidence[:d], probs)


class Drafter(Protocol):
    def begin(self, prompt: Sequence[int]) -> None:
        """Start a new generation after `prompt`."""

    def draft(self, max_tokens: int) -> Draft:
        """Propose up to `max_tokens` tokens continuing the committed sequence."""

    def update(self, draft: Draft, n_accepted: int, committed: Sequence[int]) -> None:
        """`draft` was verified: its first `n_accepted` tokens held; `committed` was appended."""


# Drafts per forward at most; the cost curve usually picks fewer. 15 was 2-5% faster on Gemma 3
# bundles with export-calibrated tables but ~5% slower on the demo, whose uncalibrated (optimistic)
# estimates then draft longer losing runs: 12 stays the default, 15 a flag for calibrated bundles
# (docs/results/steep-curve, section 9).
DEFAULT_MAX_DRAFT = 12


@dataclass
class GenerateConfig:
    max_new_tokens: int = 128
    max_draft: int = DEFAULT_MAX_DRAFT  # upper bound on d
    sampling: SamplingConfig = field(default_factory=SamplingConfig)
    stop_tokens: frozenset[int] = frozenset()


@dataclass
class DecodeStats:
    target_forwards: int = 0
    drafted: int = 0  # the drafter's tokens sent to verification
    padded: int = 0  # filler rows verified because more rows cost less there (pad_draft)
    forward_tokens: int = 0  # tokens evaluated by verify forwards (pending + drafts), for MBSU
    curve_cost: float = 0.0  # the forwards' time in t(1) units as the loop's cost curve puts it
    accepted: int = 0  # of the drafter's tokens
    generated: int = 0
    prefill_s: float = 0.0
    draft_s: float = 0.0
    verify_s: float = 0.0
    other_s: float = 0.0
    total_s: float = 0.0

    @property
    def tau(self) -> float:
        """Tokens committed per target forward (1.0 for plain decoding)."""
        return self.generated / self.target_forwards if self.target_forwards else 0.0

    @property
    def acceptance(self) -> float:
        return self.accepted / self.drafted if self.drafted else 0.0

    @property
    def decode_s(self) -> float:
        return self.total_s - self.prefill_s


@dataclass
class Generation:
    tokens: list[int]
    finish_reason: str  # "stop" | "length" | "context"
    stats: DecodeStats


def common_prefix_length(a: Sequence[int], b: Sequence[int]) -> int:
    """Tokens two sequences share from the start: what a backend's KV cache can keep."""
    n = 0
    for x, y in zip(a, b):
        if x != y:
            break
        n += 1
    return n


def valid_draft(draft: Draft, room: int, n_vocab: int | None) -> Draft:
    """A drafter's proposal cut to what the loop may verify: at most `room` tokens (never past
    the context or the token budget), ending before the first id the target does not have, one
    confidence per token. A buggy drafter costs speed, never a crash or a wrong token."""
    n = min(len(draft.tokens), max(room, 0))
    for i, t in enumerate(draft.tokens[:n]):
        if not 0 <= int(t) < (n_vocab if n_vocab is not None else 1 << 62):
            n = i
            break
    if draft.probs is not None and len(draft.probs) < n:
        n = len(draft.probs)
    conf = [float(c) for c in draft.confidence[:n]] + [0.0] * (n - len(draft.confidence[:n]))
    return Draft([int(t) for t in draft.tokens[:n]], conf, None if draft.probs is None else draft.probs[:n])


def pad_draft(draft: Draft, d: int, filler: int) -> Draft:
    """`draft` cut to d tokens, or filled up to d with `filler` at confidence 0. The loop fills
    only where its cost curve says d + 1 rows cost less than fewer (llama.cpp's 4-row tiles,
    see cost.py). The target judges a filler token like any draft token - greedy by argmax,
    sampling as a point-mass proposal - so output stays exact, and a filler the target happens
    to predict is a free token."""
    if d <= len(draft.tokens):
        return draft.truncate(d)
    extra = d - len(draft.tokens)
    probs = draft.probs
    if probs is not None:  # a model drafter's rows, then point masses on the filler
        fill = np.zeros((extra, probs.shape[1]), dtype=probs.dtype)
        fill[:, filler] = 1.0
        probs = np.concatenate([probs, fill])
    return Draft(draft.tokens + [filler] * extra, draft.confidence + [0.0] * extra, probs)


def generate(backend: Backend, prompt: Sequence[int], drafter: Drafter | None = None,
             config: GenerateConfig | None = None, cost: CostCurve | None = None,
             rng: np.random.Generator | None = None,
             on_tokens: Callable[[list[int]], bool] | None = None) -> Generation:
    """Greedy output is token-for-token that of plain greedy decoding, whatever the drafter;
    sampled output follows the target distribution exactly (see verify.py). `on_tokens` sees
    each batch of committed tokens as it lands (streaming); returning True stops there."""
    cfg = config or GenerateConfig()
    if not prompt:
        raise TascError("empty prompt: the chat template should give at least one token")
    if len(prompt) >= backend.n_ctx:
        raise TascError(f"prompt is {len(prompt)} tokens but the context holds {backend.n_ctx}: "
                        "shorten the prompt or raise --n-ctx")
    if not cfg.sampling.greedy and rng is None:
        raise TascError("sampling needs an rng (pass --seed)")
    # Never let the cache exceed n_ctx: the last generated token is never evaluated.
    limit = min(cfg.max_new_tokens, backend.n_ctx - len(prompt) + 1)
    stats = DecodeStats()
    start = time.perf_counter()
    backend.prefill(prompt[:-1])
    if drafter is not None:
        drafter.begin(prompt)
    stats.prefill_s = time.perf_counter() - start
    pending, out, finish = int(prompt[-1]), [], "length"

    while len(out) < limit:
        t0 = time.perf_counter()
        own = draft = Draft()  # own: the drafter's tokens in `draft`, which may add filler
        if drafter is not None:
            room = min(cfg.max_draft, limit - len(out) - 1)
            own = valid_draft(drafter.draft(room), room, getattr(backend, "n_vocab", None))
            d = best_draft_length(own.confidence, cost, room) if cost is not None else len(own.tokens)
            # a backend that computes at least `min_rows` rows per forward anyway (ONNX pads
            # one-token forwards to stay bit-exact) verifies that many drafts for free
            d = max(d, min(len(own.tokens), getattr(backend, "min_rows", 1) - 1))
            own = own.truncate(d)
            draft = pad_draft(own, d, own.tokens[-1] if own.tokens else pending)
        t1 = time.perf_counter()
        logits = backend.forward([pending, *draft.tokens])
        if cfg.sampling.greedy:
            n_acc, nxt = verify_greedy(draft.tokens, logits)
        else:
            n_acc, nxt = verify_sampling(draft.tokens, draft.probs, logits, cfg.sampling, rng)
        backend.rollback(len(draft.tokens) - n_acc)
        new = [*draft.tokens[:n_acc], nxt]
        t2 = time.perf_counter()

        stats.target_forwards += 1
        stats.drafted += len(own.tokens)
        stats.padded += len(draft.tokens) - len(own.tokens)
        stats.forward_tokens += 1 + len(draft.tokens)
        stats.curve_cost += cost.cost(1 + len(draft.tokens)) if cost is not None else 0.0
        stats.accepted += min(n_acc, len(own.tokens))
        stats.draft_s += t1 - t0
        stats.verify_s += t2 - t1  # target forward + acceptance test + cache rollback
        for i, tok in enumerate(new):
            if tok in cfg.stop_tokens:
                new, finish = new[:i], "stop"
                break
        out.extend(new)
        stats.generated += len(new)
        if on_tokens is not None and new and on_tokens(new):
            finish = "stop"
        if finish == "stop":
            break
        if drafter is not None:  # it learns from its own tokens, never from filler
            drafter.update(own, min(n_acc, len(own.tokens)), new)
        pending = new[-1]
        stats.other_s += time.perf_counter() - t2

    if finish == "length" and len(out) < cfg.max_new_tokens:
        finish = "context"
    stats.total_s = time.perf_counter() - start
    return Generation(out, finish, stats)
